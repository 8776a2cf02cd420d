"""The wire layer's error root: every error it raises on purpose derives from ``WireError``."""

from __future__ import annotations


class WireError(ValueError):
    """Bytes, ids or keys the wire layer cannot use; the message says why."""
