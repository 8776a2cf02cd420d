"""The network layer's error root: every error it raises on purpose derives from ``NetworkError``.

The CLI turns one into a one-line message; code that handles a kind (a failed request, bad TLS
material) catches the subclass.
"""

from __future__ import annotations


class NetworkError(Exception):
    """A transport, TLS, key file, address or bulk transfer problem; the message says which."""
