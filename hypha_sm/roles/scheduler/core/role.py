"""The scheduler as a ``Role``: what the event log, replay and the runtime loop need of it.

A scheduler's log is one file per run (a run places one job); it does not rotate, so the role
has no snapshot functions and ``Recorder.open_rotating`` refuses it.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from hypha_sm.core.resources import Amounts
from hypha_sm.core.role import Role
from hypha_sm.roles.scheduler.core.effects import Effect
from hypha_sm.roles.scheduler.core.events import Event
from hypha_sm.roles.scheduler.core.plan import Plan, plan_problem
from hypha_sm.roles.scheduler.core.reducer import (
    build_engine,
    initial_state,
    next_deadline,
    step,
    stopped,
)
from hypha_sm.roles.scheduler.core.state import SchedulerState


def describe(state: SchedulerState) -> dict[str, Any]:
    """The state as plain data for people (``replay --until``)."""
    return {
        **state.describe(),
        "placed": list(state.placed),
        "jobs": dict(state.jobs),
        "ended": dict(state.ended),
        "finished": state.finished,
        "epoch": state.epoch,
    }


def nonfinite(event: Event) -> bool:
    """A peer's NaN or infinite price, resources or expiry (the log spells them as words)."""
    for value in msgspec.structs.astuple(event):
        if isinstance(value, float) and not math.isfinite(value):
            return True
        if isinstance(value, Amounts) and not all(
            math.isfinite(v) for v in msgspec.structs.astuple(value)
        ):
            return True
    return False


SCHEDULER: Role[SchedulerState, Plan, None] = Role(
    name="scheduler",
    config_type=Plan,
    snapshot_type=type(None),
    event_type=Event,
    effect_type=Effect,
    build_engine=build_engine,
    initial=initial_state,
    step=step,
    next_deadline=next_deadline,
    capture=None,
    restore=None,
    stopped=stopped,
    config_problem=plan_problem,
    describe=describe,
    nonfinite_event=nonfinite,
)
