"""The data node as a ``Role``: what the event log, replay and the runtime loop need of it.

Its log is one file per run (``event_log_dir``, off by default): the role has no snapshot
functions yet, so it does not rotate.
"""

from __future__ import annotations

from hypha_sm.core.role import Role
from hypha_sm.roles.data.core.effects import Effect
from hypha_sm.roles.data.core.events import Event
from hypha_sm.roles.data.core.plan import DataPlan, plan_problem
from hypha_sm.roles.data.core.reducer import (
    build_engine,
    initial_state,
    next_deadline,
    step,
    stopped,
)
from hypha_sm.roles.data.core.state import DataState

DATA: Role[DataState, DataPlan, None] = Role(
    name="data",
    config_type=DataPlan,
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
    describe=DataState.describe,
)
