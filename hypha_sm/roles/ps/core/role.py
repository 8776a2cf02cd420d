"""The parameter server as a ``Role``: its log, replay and the runtime loop need this of it."""

from __future__ import annotations

from hypha_sm.core.role import Role
from hypha_sm.roles.ps.core.model import Effect, Event, PSPlan, plan_problem
from hypha_sm.roles.ps.core.rounds import (
    PSState,
    build_engine,
    initial_state,
    next_deadline,
    step,
    stopped,
)

PS: Role[PSState, PSPlan, None] = Role(
    name="ps",
    config_type=PSPlan,
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
    describe=PSState.describe,
)
