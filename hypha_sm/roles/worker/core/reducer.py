"""``step``: the one door through which the worker state changes.

Theory of operation. The shell calls ``step(state, event, now)`` for every input, in order, and
carries out the effects it returns. A step first fires every deadline due at ``now`` (so a lease
expires at its exact deadline even if a renewal arrives in the same instant, and there is no
polling), then routes the event to the record it concerns, then runs queued internal events to
completion, then applies the coupling rules. The same inputs from the same seed always give the
same state and effects; that is what the event log and replay rely on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from hypha_sm.core.engine import Engine
from hypha_sm.core.spec import MachineSpec
from hypha_sm.core.trace import TraceEntry
from hypha_sm.roles.worker.core.effects import Effect
from hypha_sm.roles.worker.core.events import (
    AdvertisementReceived,
    DispatchRequested,
    Event,
    JobExited,
    JobOverLimit,
    JobStarted,
    JobStartFailed,
    Now,
    OfferDelivered,
    OfferFailed,
    RenewRequested,
    ShutdownRequested,
    StatusDelivered,
    StatusFailed,
    StorageLow,
    StorageRecovered,
    Tick,
)
from hypha_sm.roles.worker.core.machines import REGISTRIES
from hypha_sm.roles.worker.core.policy import Policy
from hypha_sm.roles.worker.core.state import WorkerState


class Step(NamedTuple):
    """What one input did: the state (changed in place), the effects, and the transitions fired."""

    state: WorkerState
    effects: tuple[Effect, ...]
    trace: tuple[TraceEntry, ...]


def build_engine(specs: dict[str, MachineSpec], *, via_library: bool = False) -> Engine:
    """Bind the machine definitions to the guards and actions in code (validates every name).

    ``via_library`` fires every event through ``transitions.Machine.trigger`` instead of the
    engine's table path; both give the same results (tests check it), the table path is faster.
    """
    return Engine(specs, REGISTRIES, via_library=via_library)


def initial_state(engine: Engine, policy: Policy, seed: bytes) -> WorkerState:
    """A fresh worker: node running, window idle, nothing reserved."""
    state = WorkerState(engine, policy, seed)
    state.trace.clear()
    return state


def step(state: WorkerState, event: Event, now: Now) -> Step:
    """Apply one input at ``now``. Deterministic; mutates and returns ``state``."""
    state.begin(now)
    state.fire_due()
    _ROUTES[type(event)](state, event)
    state.drain()
    _settle(state)
    state.forget_seen()
    return Step(state, tuple(state.effects), tuple(state.trace))


def next_deadline(state: WorkerState) -> float:
    """The monotonic time of the next deadline (``inf`` if none): sleep until then, then Tick."""
    return state.next_deadline()


def _settle(state: WorkerState) -> None:
    """Coupling rules: state-triggered transitions across machines, settled to a fixed point."""
    node = state.records["node"].get("node")
    if (
        node is not None
        and node._phase == "draining"
        and not state.records["lease"]
        and not state.records["job"]
        and not state.records["request"]
    ):
        state.fire("node", "node", "drained")
        state.drain()


def _on_advertisement(state: WorkerState, event: AdvertisementReceived) -> None:
    request_id = event.request_id
    if request_id in state.records["request"]:
        state.fire("request", request_id, "advertisement_received", event)
    elif request_id in state.seen_ads:
        state.reject("request", request_id, "", "advertisement_received", event, "duplicate")
    else:
        state.fire("batch", "batch", "advertisement_received", event)


def _on_lease_request(state: WorkerState, event: RenewRequested | DispatchRequested) -> None:
    name = "renew_requested" if isinstance(event, RenewRequested) else "dispatch_requested"
    if event.lease_id in state.records["lease"]:
        state.fire("lease", event.lease_id, name, event)
    else:
        why = state.why_unknown(event.lease_id, event.peer)
        state.reject("lease", event.lease_id, "", name, event, why)


def _on_offer_result(state: WorkerState, event: OfferDelivered | OfferFailed) -> None:
    name = "offer_delivered" if isinstance(event, OfferDelivered) else "offer_failed"
    if event.lease_id in state.records["lease"]:
        state.fire("lease", event.lease_id, name, event)
    else:
        state.count(f"late.{name}")  # the lease ended before the shell's report came back


def _on_job_result(state: WorkerState, event: JobStarted | JobStartFailed | JobExited) -> None:
    # The shell reports on jobs the core started; a report for an unknown job is a shell bug.
    state.fire("job", event.job_id, _EVENT_NAMES[type(event)], event)


def _on_status_result(state: WorkerState, event: StatusDelivered | StatusFailed) -> None:
    name = _EVENT_NAMES[type(event)]
    if event.job_id in state.records["job"]:
        state.fire("job", event.job_id, name, event)
    else:
        state.count(f"late.{name}")  # e.g. the answer to a running report after the job ended


def _on_shutdown(state: WorkerState, event: ShutdownRequested) -> None:
    # No payload: no action reads one, and every phase handles or ignores the event.
    if "node" in state.records["node"]:
        state.fire("node", "node", "shutdown_requested")
    else:
        state.count("late.shutdown_requested")  # already stopped; the shell is exiting


def _on_storage(state: WorkerState, event: StorageLow | StorageRecovered) -> None:
    name = "storage_low" if isinstance(event, StorageLow) else "storage_recovered"
    if "node" in state.records["node"]:
        state.fire("node", "node", name, event)
    else:
        state.count(f"late.{name}")


def _on_job_over_limit(state: WorkerState, event: JobOverLimit) -> None:
    # The monitor measures jobs it knows run; the job may have ended since.
    if event.job_id in state.records["job"]:
        state.fire("job", event.job_id, "job_over_limit", event)
    else:
        state.count("late.job_over_limit")


def _on_tick(state: WorkerState, event: Tick) -> None:
    """Deadlines already fired at the start of the step."""


_EVENT_NAMES: dict[type, str] = {
    JobStarted: "job_started",
    JobStartFailed: "job_start_failed",
    JobExited: "job_exited",
    StatusDelivered: "status_delivered",
    StatusFailed: "status_failed",
}

_ROUTES: dict[type, Callable[[WorkerState, Any], None]] = {
    AdvertisementReceived: _on_advertisement,
    RenewRequested: _on_lease_request,
    DispatchRequested: _on_lease_request,
    OfferDelivered: _on_offer_result,
    OfferFailed: _on_offer_result,
    JobStarted: _on_job_result,
    JobStartFailed: _on_job_result,
    JobExited: _on_job_result,
    StatusDelivered: _on_status_result,
    StatusFailed: _on_status_result,
    ShutdownRequested: _on_shutdown,
    StorageLow: _on_storage,
    StorageRecovered: _on_storage,
    JobOverLimit: _on_job_over_limit,
    Tick: _on_tick,
}
