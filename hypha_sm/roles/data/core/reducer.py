"""``step``: the one door through which the data node's state changes.

A fetch is checked here before a record exists for it: the grant must be sealed by a trusted
scheduler for this peer, unexpired, for a dataset this node serves with the same manifest, and
an index inside it (``0 <= index < slices``: the original's check was off by one); the node
must be serving, with a free place (``max_concurrent``). Anything else is refused with a
counted reason and costs no record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from hypha_sm.core.engine import Engine
from hypha_sm.core.spec import MachineSpec
from hypha_sm.core.trace import Now, TraceEntry
from hypha_sm.roles.data.core.effects import Effect, NodeStopped, SendManifest, SendSlice
from hypha_sm.roles.data.core.events import (
    Announced,
    AnnounceFailed,
    Event,
    FetchRequested,
    SendFailed,
    ShutdownRequested,
    SliceSent,
    Tick,
)
from hypha_sm.roles.data.core.machines import REGISTRIES
from hypha_sm.roles.data.core.plan import DataPlan
from hypha_sm.roles.data.core.state import NODE, DataState, FetchRec, NodeRec


class Step(NamedTuple):
    """What one input did: the state (changed in place), the effects, the transitions fired."""

    state: DataState
    effects: tuple[Effect, ...]
    trace: tuple[TraceEntry, ...]


def build_engine(specs: dict[str, MachineSpec]) -> Engine:
    """Bind the data node's machine definitions to its guards and actions."""
    return Engine(specs, REGISTRIES)


def initial_state(engine: Engine, plan: DataPlan, seed: bytes) -> DataState:
    """A node about to serve: its first announcement is due at once."""
    state = DataState(engine, plan, seed)
    node = NodeRec(NODE)
    state.create(node)
    state.arm(node, 0.0)
    state.trace.clear()
    return state


def step(state: DataState, event: Event, now: Now) -> Step:
    """Apply one input at ``now``. Deterministic; mutates and returns ``state``."""
    state.begin(now)
    state.fire_due()
    _ROUTES[type(event)](state, event)
    state.drain()
    node = state.records["node"].get(NODE)
    if node is not None and node._phase == "draining" and not state.records["fetch"]:
        state.fire("node", NODE, "drained")
        state.drain()
    return Step(state, tuple(state.effects), tuple(state.trace))


def next_deadline(state: DataState) -> float:
    """The monotonic time of the next deadline (``inf`` if none)."""
    return state.next_deadline()


def stopped(effects: Any) -> bool:
    """The node has stopped."""
    return any(isinstance(e, NodeStopped) for e in effects)


def grant_problem(state: DataState, request: FetchRequested) -> str:
    """Why the request's grant does not let ``peer`` have the slice ("" if it does).

    A manifest request needs a grant too (any slice of the dataset): a stranger must not be
    able to occupy the node's sending places with pushes to addresses that never answer.
    """
    plan = state.plan
    if not request.granter:
        return "bad_grant"
    if plan.grant_from and request.granter not in plan.grant_from:
        return "grant_not_trusted"
    if request.grant_worker != request.peer:
        return "grant_for_another_peer"
    if not request.grant_expires > state.now.wall:
        return "grant_expired"
    served = state.served.get(request.grant_dataset)
    if served is None:
        return "unknown_dataset"
    if request.grant_hash != served.manifest_hash:
        return "manifest_mismatch"
    if not request.manifest and not 0 <= request.grant_index < served.slices:
        return "index_out_of_range"
    return ""


def _on_fetch(state: DataState, request: FetchRequested) -> None:
    key = f"{request.peer}/{request.transfer_id}"
    node = state.records["node"].get(NODE)
    reason = (
        "draining" if node is None or node._phase != "serving" else grant_problem(state, request)
    )
    if not reason and key in state.records["fetch"]:
        reason = "duplicate_transfer"
    if not reason and len(state.records["fetch"]) >= state.plan.max_concurrent:
        reason = "busy"
    if reason:
        state.reject("fetch", key, "", "fetch_requested", request, reason)
        return
    fetch = FetchRec(key, request.reply_to, request.transfer_id)
    state.create(fetch)
    state.arm_after(fetch, state.plan.send_timeout)
    dataset, peer, transfer, bulk = (
        request.grant_dataset,
        request.peer,
        request.transfer_id,
        request.bulk_address,
    )
    if request.manifest:
        state.emit(SendManifest(key, peer, dataset, transfer, bulk))
    else:
        state.emit(SendSlice(key, peer, dataset, request.grant_index, transfer, bulk))


def _on_node(name: str) -> Callable[[DataState, Any], None]:
    def route(state: DataState, event: Any) -> None:
        if NODE in state.records["node"]:
            state.fire("node", NODE, name, event)
        else:
            state.count(f"late.{name}")

    return route


def _on_fetch_result(state: DataState, event: SliceSent | SendFailed) -> None:
    name = "slice_sent" if isinstance(event, SliceSent) else "send_failed"
    if event.key in state.records["fetch"]:
        state.fire("fetch", event.key, name, event)
    else:
        state.count(f"late.{name}")  # it was overdue and failed already


def _on_tick(state: DataState, event: Tick) -> None:
    """Deadlines already fired at the start of the step."""


_ROUTES: dict[type, Callable[[DataState, Any], None]] = {
    Tick: _on_tick,
    ShutdownRequested: _on_node("shutdown_requested"),
    Announced: _on_node("announced"),
    AnnounceFailed: _on_node("announce_failed"),
    FetchRequested: _on_fetch,
    SliceSent: _on_fetch_result,
    SendFailed: _on_fetch_result,
}
