"""Tests generated from the machine definitions: every declared transition is exercised.

One test per transition in machines/<role>/*.toml (every role: the worker's walks in
``tests/explorer.py``, the scheduler's in ``tests/scheduler_world.py``), so adding a transition
the walks never reach fails the suite with that transition's name. The coverage table is
printed at the end of the run.
"""

from __future__ import annotations

from collections import Counter
from functools import cache

import pytest

from hypha_sm.core.spec import TransitionSpec
from hypha_sm.machines_io import load_specs, roles
from tests.data_world import explore_data
from tests.explorer import explore
from tests.ps_world import explore_ps
from tests.scheduler_world import explore_scheduler

#: Every role's machines, named ``<role>/<machine>`` (two roles may both have a ``node``).
SPECS = {
    f"{role}/{name}": spec for role in roles() for name, spec in load_specs(role=role).items()
}
ALL = [(name, t) for name, spec in sorted(SPECS.items()) for t in spec.transitions]
EXPLORERS = {
    "worker": explore,
    "scheduler": explore_scheduler,
    "data": explore_data,
    "ps": explore_ps,
}


@cache
def coverage() -> Counter[tuple[str, int]]:
    fired: Counter[tuple[str, int]] = Counter()
    for role, walk in EXPLORERS.items():
        for (machine, index), count in walk().items():
            fired[(f"{role}/{machine}", index)] += count
    return fired


@pytest.mark.parametrize(
    ("machine", "transition"),
    ALL,
    ids=[f"{m}#{t.index}:{t.src}--{t.label}-->{t.target}" for m, t in ALL],
)
def test_declared_transition_is_exercised(machine: str, transition: TransitionSpec) -> None:
    """The walks fire this transition at least once."""
    assert coverage()[(machine, transition.index)] > 0, (
        f"{machine} transition #{transition.index} ({transition.src} --{transition.label}--> "
        f"{transition.target}) was never exercised"
    )


def coverage_report() -> str:
    """Per machine: transitions exercised / declared."""
    fired = coverage()
    lines = ["transition coverage (declared transitions exercised by the walks):"]
    total = hit = 0
    for name, spec in sorted(SPECS.items()):
        n = len(spec.transitions)
        k = sum(1 for t in spec.transitions if fired[(name, t.index)] > 0)
        total += n
        hit += k
        lines.append(f"  {name:20} {k:3}/{n:<3} ({100 * k / n:5.1f}%)")
    lines.append(f"  {'all':20} {hit:3}/{total:<3} ({100 * hit / total:5.1f}%)")
    return "\n".join(lines)
