"""Finding and reading the machine definitions (``machines/*.toml``). The only file I/O for specs.

In a checkout (or an editable install) the files are read from ``<repo>/machines``; an installed
wheel carries them as ``hypha_sm/_machines``. ``HYPHA_SM_MACHINES`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypha_sm.core.engine import Engine
from hypha_sm.core.reducer import build_engine
from hypha_sm.core.spec import MachineSpec, machines_hash, parse_machines


def default_machines_dir() -> Path:
    """Where the machine files are: the env override, the wheel's copy, or the checkout's."""
    override = os.environ.get("HYPHA_SM_MACHINES")
    if override:
        return Path(override)
    packaged = Path(__file__).parent / "_machines"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "machines"


def read_sources(directory: Path | None = None) -> dict[str, bytes]:
    """Every ``*.toml`` in the directory, keyed by file name as ``machines/<name>``."""
    directory = directory or default_machines_dir()
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise FileNotFoundError(f"no machine definitions (*.toml) in {directory}")
    return {f"machines/{f.name}": f.read_bytes() for f in files}


def load_specs(directory: Path | None = None) -> dict[str, MachineSpec]:
    """Parse and validate the machine files."""
    return parse_machines(read_sources(directory))


def load_engine(directory: Path | None = None) -> tuple[Engine, str]:
    """The engine built from the machine files, and the files' hash for the event log."""
    sources = read_sources(directory)
    return build_engine(parse_machines(sources)), machines_hash(sources)
