"""Node key files: created private, never overwritten by accident, refused when exposed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hypha_sm.cli import main
from hypha_sm.net.keys import KeyFileError, create_key_file, load_key_file


def test_keygen_writes_a_private_key_and_prints_the_peer_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hypha-sm keygen` creates a mode-0600 PEM key whose peer id it prints."""
    path = tmp_path / "keys" / "node-key.pem"
    assert main(["keygen", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    peer = capsys.readouterr().out.split("peer id ")[1].strip()
    assert str(load_key_file(path).peer_id) == peer
    assert peer.startswith("12D3KooW")


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    """An existing key is kept unless --force is given (losing a key loses the identity)."""
    path = tmp_path / "node-key.pem"
    first = create_key_file(path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        create_key_file(path)
    assert main(["keygen", str(path)]) == 2
    assert load_key_file(path).peer_id == first.peer_id
    second = create_key_file(path, force=True)
    assert second.peer_id != first.peer_id


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    """Like ssh: a node key with group or other permissions is not used."""
    path = tmp_path / "node-key.pem"
    create_key_file(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key_file(path)


def test_a_missing_key_says_how_to_create_one(tmp_path: Path) -> None:
    """The error names the command that creates the key."""
    with pytest.raises(KeyFileError, match="hypha-sm keygen"):
        load_key_file(tmp_path / "absent.pem")
