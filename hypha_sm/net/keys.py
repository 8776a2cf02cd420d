"""Node key files: one Ed25519 key per node, PKCS#8 PEM, readable by its owner only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hypha_sm.net.errors import NetworkError
from hypha_sm.wire.identity import Identity


class KeyFileError(NetworkError):
    """A key file that cannot be created or used; the message says what to do."""


def create_key_file(path: Path, *, force: bool = False) -> Identity:
    """Write a new node key to ``path`` with mode 0600; refuse to overwrite unless ``force``."""
    if path.exists() and not force:
        raise KeyFileError(f"{path} exists; refusing to overwrite a node key (use --force)")
    identity = Identity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # Create with 0600 from the start: the key is never readable by others, even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, identity.to_pem())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return identity


def load_key_file(path: Path) -> Identity:
    """Load a node key, refusing one that group or others can read (as ssh does)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(
            f"{path} does not exist; create it with `hypha-sm keygen {path}`"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} has mode {stat.S_IMODE(mode):04o}; a node key must be private: chmod 600 {path}"
        )
    return Identity.from_pem(path.read_bytes())
