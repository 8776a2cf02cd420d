"""The parameter server's pure core: its round machine (``machines/ps/round.toml``)."""
