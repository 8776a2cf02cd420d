"""Configuration: TOML file → ``HYPHA_*`` environment → command-line flags (later layers win)."""
