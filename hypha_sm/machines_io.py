"""Finding and reading the machine definitions (``machines/<role>/*.toml``). The only spec I/O.

Each role's machines live in a directory of their own under one root: in a checkout (or an
editable install) ``<repo>/machines``; an installed wheel carries them as
``hypha_sm/_machines``. ``HYPHA_SM_MACHINES`` overrides both.

The hash recorded in event logs names each file as ``machines/<file>``, without the role's
directory, as it did before machines were grouped by role: logs recorded then keep matching.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hypha_sm.core.engine import Engine
from hypha_sm.core.role import Role
from hypha_sm.core.spec import MachineSpec, machines_hash, parse_machines

#: The role whose machines a command loads when it names none.
WORKER = "worker"


def default_machines_dir() -> Path:
    """The root of every role's machines: the env override, the wheel's copy, or the checkout's."""
    override = os.environ.get("HYPHA_SM_MACHINES")
    if override:
        return Path(override)
    packaged = Path(__file__).parent / "_machines"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "machines"


def roles(root: Path | None = None) -> list[str]:
    """Every role with machine files under the root, sorted."""
    root = root or default_machines_dir()
    return sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.toml")))


def read_sources(directory: Path | None = None, *, role: str = WORKER) -> dict[str, bytes]:
    """Every ``*.toml`` of a role (or in ``directory``), keyed ``machines/<role>/<file>``."""
    directory = directory or default_machines_dir() / role
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise FileNotFoundError(f"no machine definitions (*.toml) in {directory}")
    return {f"machines/{role}/{f.name}": f.read_bytes() for f in files}


def sources_hash(sources: dict[str, bytes]) -> str:
    """The hash event logs record: each file named ``machines/<file>``, as before roles."""
    return machines_hash(
        {f"machines/{key.rsplit('/', 1)[1]}": data for key, data in sources.items()}
    )


def load_specs(directory: Path | None = None, *, role: str = WORKER) -> dict[str, MachineSpec]:
    """Parse and validate a role's machine files."""
    return parse_machines(read_sources(directory, role=role))


def load_engine(role: Role[Any, Any, Any], directory: Path | None = None) -> tuple[Engine, str]:
    """A role's engine built from its machine files, and the files' hash for the event log."""
    sources = read_sources(directory, role=role.name)
    return role.build_engine(parse_machines(sources)), sources_hash(sources)
