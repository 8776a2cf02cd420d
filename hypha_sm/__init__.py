"""hypha-sm: a worker node for the Hypha compute market, built as a declarative state-machine engine."""

__version__ = "0.1.0"
