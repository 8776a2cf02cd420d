"""The gateway: a directory of peers and datasets, and a relay for schedulers' advertisements."""
