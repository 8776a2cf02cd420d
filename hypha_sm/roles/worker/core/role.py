"""The worker as a ``Role``: what the event log, replay and the runtime loop need of it."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import msgspec

from hypha_sm.core.role import Role
from hypha_sm.core.trace import CREATED
from hypha_sm.roles.worker.core.effects import Effect, NodeStopped
from hypha_sm.roles.worker.core.events import AdvertisementReceived, DispatchRequested, Event
from hypha_sm.roles.worker.core.policy import Policy, PolicyError, policy_from_config
from hypha_sm.roles.worker.core.reducer import (
    Step,
    build_engine,
    initial_state,
    next_deadline,
    step,
)
from hypha_sm.roles.worker.core.snapshot import (
    Snapshot,
    capture,
    effective,
    restore,
    spell_snapshot,
)
from hypha_sm.roles.worker.core.state import WorkerState


def spec_digest(spec: str) -> str:
    """What a refused dispatch's spec is logged as: its size and SHA-256, not its text."""
    data = spec.encode("utf-8", "surrogatepass")
    return f"<refused spec: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}>"


def logged(event: Event, result: Step) -> Event:
    """The event as it is written to the log.

    A dispatch that created no job was refused (unknown lease, not the owner, ...): a stranger
    can send those by the thousand, so its spec (up to 512 KiB) is logged as a digest. Replay
    is unchanged: no refusal depends on the spec's text, and a refused spec goes nowhere.
    """
    if isinstance(event, DispatchRequested) and not any(
        kind == "job" and key == event.job_id and index == CREATED
        for kind, key, _, _, _, index in result.trace
    ):
        return msgspec.structs.replace(event, spec=spec_digest(event.spec))
    return event


def stopped(effects: Sequence[Any]) -> bool:
    """The node has stopped: every lease and job is gone after a shutdown."""
    return any(isinstance(e, NodeStopped) for e in effects)


def nonfinite(event: Event) -> bool:
    """A hostile advertisement's NaN or infinite price or resources (logged as it came)."""
    if isinstance(event, AdvertisementReceived):
        r = event.resources
        values = (event.bid, event.expires_wall, r.gpu, r.cpu, r.memory, r.storage)
        return not all(math.isfinite(v) for v in values)
    return False


def policy_problem(policy: Policy) -> str | None:
    """Why a policy read from a log cannot run: the same checks as a node's own config."""
    try:
        policy_from_config(msgspec.to_builtins(policy))
    except PolicyError as exc:
        return str(exc)
    return None


WORKER: Role[WorkerState, Policy, Snapshot] = Role(
    name="worker",
    config_type=Policy,
    snapshot_type=Snapshot,
    event_type=Event,
    effect_type=Effect,
    build_engine=build_engine,
    initial=initial_state,
    step=step,
    next_deadline=next_deadline,
    capture=capture,
    restore=restore,
    stopped=stopped,
    effective=effective,
    logged=logged,
    nonfinite_event=nonfinite,
    spell_snapshot=spell_snapshot,
    config_problem=policy_problem,
    describe=WorkerState.snapshot,
)
