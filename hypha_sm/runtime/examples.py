"""Recording scripted runs of a role as example logs (what ``specs/logs/`` holds).

Each role's ``examples`` module has its scenarios (functions that feed a ``Script``); this
renders them to log bytes and writes them where the tests compare them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from hypha_sm.core.engine import Engine
from hypha_sm.core.role import Role
from hypha_sm.machines_io import load_engine

#: The repository's specs/logs (where the example logs are committed).
LOGS = Path(__file__).resolve().parents[2] / "specs" / "logs"


class Script(Protocol):
    """What a scenario feeds: a role's core recording to ``sink``."""

    sink: io.BytesIO


def render(
    scenarios: Mapping[str, Callable[[Any], None]],
    script: Callable[[Engine, str], Script],
    engine: Engine,
    machines_hash: str,
) -> dict[str, bytes]:
    """Every scenario's log bytes, by file name (``<scenario>.jsonl``)."""
    out = {}
    for name, scenario in scenarios.items():
        recording = script(engine, machines_hash)
        scenario(recording)
        out[f"{name}.jsonl"] = recording.sink.getvalue()
    return out


def write(
    role: Role[Any, Any, Any],
    render_all: Callable[[Engine, str], dict[str, bytes]],
    out_dir: Path,
) -> int:
    """Render the role's scenarios with its machines and write them to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    engine, machines_hash = load_engine(role)
    for name, data in render_all(engine, machines_hash).items():
        (out_dir / name).write_bytes(data)
        print(f"wrote {out_dir / name}")
    return 0
