"""The engine's table path fires exactly what `transitions.Machine.trigger` fires.

Production steps run the transition table read from each kind's `transitions.Machine`; the
library's own `trigger` is the reference. Over many seeded walks of hostile and well-behaved
inputs, both must give the same trace, effects and final state at every step.
"""

from __future__ import annotations

import pytest

from hypha_sm.machines_io import load_engine
from hypha_sm.roles.worker.core.role import WORKER
from tests.explorer import walk
from tests.helpers import engine, library_engine


@pytest.mark.parametrize("n", range(60))
def test_table_path_and_library_trigger_agree_on_every_step(n: int) -> None:
    """Same inputs, same seed: identical traces, effects and snapshots."""
    table = walk(n, 120, seed=7, eng=engine())
    library = walk(n, 120, seed=7, eng=library_engine())
    assert table.inputs == library.inputs
    for seq, (a, b) in enumerate(zip(table.outputs, library.outputs, strict=True), start=1):
        assert a.trace == b.trace, f"step {seq}"
        assert a.effects == b.effects, f"step {seq}"
    assert table.state.snapshot() == library.state.snapshot()


def test_the_engines_really_take_different_paths() -> None:
    """Guard against a vacuous comparison: one engine triggers through the library. What the
    node and replay load runs the table path (the fast one)."""
    assert not any(r.via_library for r in load_engine(WORKER)[0].runtimes.values())
    assert not any(r.via_library for r in engine().runtimes.values())
    assert all(r.via_library for r in library_engine().runtimes.values())
