"""``step``: the one door through which the scheduler's state changes.

Theory of operation. The shell calls ``step(state, event, now)`` for every input, in order, and
carries out the effects it returns. A step fires every deadline due at ``now`` first (a renewal
is sent at its exact time, however busy the inbox), then routes the event to the record it
concerns, then runs queued internal events to completion. Remote inputs for records that do not
exist are refused with a reason; results for records that ended meanwhile are counted. The same
inputs from the same seed always give the same state and effects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from hypha_sm.core.engine import Engine
from hypha_sm.core.spec import MachineSpec
from hypha_sm.core.trace import Now, TraceEntry
from hypha_sm.roles.scheduler.core.effects import Effect, Finished, LocateDataset
from hypha_sm.roles.scheduler.core.events import (
    AcceptFailed,
    Begin,
    DatasetFound,
    DatasetMissing,
    Dispatched,
    DispatchFailed,
    Event,
    GatewaysLocated,
    GatewaysUnreachable,
    LeaseAccepted,
    OfferReceived,
    ProgressReceived,
    Published,
    PublishFailed,
    Renewed,
    RenewFailed,
    RenewRefused,
    SliceDone,
    SliceRequested,
    StatusReceived,
    StopRequested,
    Tick,
)
from hypha_sm.roles.scheduler.core.machines import REGISTRIES
from hypha_sm.roles.scheduler.core.plan import Plan
from hypha_sm.roles.scheduler.core.slices import choose
from hypha_sm.roles.scheduler.core.state import (
    JOB,
    AllocationRec,
    Dataset,
    SchedulerState,
    SliceRec,
)


class Step(NamedTuple):
    """What one input did: the state (changed in place), the effects, the transitions fired."""

    state: SchedulerState
    effects: tuple[Effect, ...]
    trace: tuple[TraceEntry, ...]


def build_engine(specs: dict[str, MachineSpec]) -> Engine:
    """Bind the scheduler's machine definitions to its guards and actions."""
    return Engine(specs, REGISTRIES)


def initial_state(engine: Engine, plan: Plan, seed: bytes) -> SchedulerState:
    """A scheduler that has not started: its allocation waits for ``Begin``."""
    state = SchedulerState(engine, plan, seed)
    state.create(AllocationRec())
    state.trace.clear()
    return state


def step(state: SchedulerState, event: Event, now: Now) -> Step:
    """Apply one input at ``now``. Deterministic; mutates and returns ``state``."""
    state.begin(now)
    state.fire_due()
    _ROUTES[type(event)](state, event)
    state.drain()
    return Step(state, tuple(state.effects), tuple(state.trace))


def next_deadline(state: SchedulerState) -> float:
    """The monotonic time of the next deadline (``inf`` if none)."""
    return state.next_deadline()


def stopped(effects: Any) -> bool:
    """The run is over."""
    return any(isinstance(e, Finished) for e in effects)


def _allocation(state: SchedulerState, name: str, event: object) -> None:
    if JOB in state.records["allocation"]:
        state.fire("allocation", JOB, name, event)
    else:
        state.count(f"late.{name}")  # the run ended before the shell's report came back


def _on_begin(state: SchedulerState, event: Begin) -> None:
    rec = state.records["allocation"].get(JOB)
    if rec is not None and rec._phase == "idle":
        state.fire("allocation", JOB, "begin", event)
    else:
        state.count("late.begin")


def _on_stop(state: SchedulerState, event: StopRequested) -> None:
    _allocation(state, "stop_requested", event)


def _on_gateways(state: SchedulerState, event: GatewaysLocated | GatewaysUnreachable) -> None:
    name = "gateways_located" if isinstance(event, GatewaysLocated) else "gateways_unreachable"
    _allocation(state, name, event)


def _on_published(state: SchedulerState, event: Published | PublishFailed) -> None:
    name = "published" if isinstance(event, Published) else "publish_failed"
    rec = state.records["allocation"].get(JOB)
    if rec is None or rec.request_id != event.request_id:
        state.count(f"late.{name}")  # an older advertisement's report
    else:
        state.fire("allocation", JOB, name, event)


def _on_offer(state: SchedulerState, event: OfferReceived) -> None:
    if JOB in state.records["allocation"]:
        state.fire("allocation", JOB, "offer_received", event)
    else:
        state.reject("allocation", JOB, "", "offer_received", event, "unknown_request")


_RESULT_NAMES: dict[type, str] = {
    LeaseAccepted: "accept_answered",
    AcceptFailed: "accept_failed",
    Renewed: "renewed",
    RenewFailed: "renew_failed",
    RenewRefused: "renew_refused",
    Dispatched: "dispatched",
    DispatchFailed: "dispatch_failed",
}


def _on_lease_result(state: SchedulerState, event: Any) -> None:
    name = _RESULT_NAMES[type(event)]
    if event.lease_id in state.records["placement"]:
        state.fire("placement", event.lease_id, name, event)
    else:
        state.count(f"late.{name}")  # the placement ended before the answer came back


def _on_report(state: SchedulerState, event: StatusReceived | ProgressReceived) -> None:
    name = "status_received" if isinstance(event, StatusReceived) else "progress_received"
    lease_id = state.jobs.get(event.job_id)
    if lease_id is not None and lease_id in state.records["placement"]:
        state.fire("placement", lease_id, name, event)
    else:
        state.reject("placement", event.job_id, "", name, event, "unknown_job")


#: The most slices a dataset may have (a gateway's record is a stranger's word).
MAX_SLICES = 100_000


def _on_dataset(state: SchedulerState, event: DatasetFound | DatasetMissing) -> None:
    state.looking_up = False
    if isinstance(event, DatasetMissing) or event.name != state.plan.dataset:
        state.count("dataset.missing")
        return
    known = state.dataset
    if known is not None:
        if (event.slices, event.manifest_hash) != (known.slices, known.manifest_hash):
            state.count("dataset.changed")  # another dataset under that name: keep serving ours
        else:
            state.dataset = Dataset(known.name, known.slices, known.manifest_hash, event.providers)
        return
    if not 0 < event.slices <= MAX_SLICES or state.finished is not None:
        state.count("dataset.refused")
        return
    state.dataset = Dataset(event.name, event.slices, event.manifest_hash, event.providers)
    state.epoch = 1
    for index in range(event.slices):
        state.create(SliceRec(index))


def _worker_of(state: SchedulerState, job_id: str, peer: str) -> bool:
    """``peer`` runs job ``job_id`` for us now."""
    lease_id = state.jobs.get(job_id)
    rec = None if lease_id is None else state.records["placement"].get(lease_id)
    return rec is not None and rec.worker == peer and rec._phase in ("dispatched", "running")


def _on_slice_request(state: SchedulerState, event: SliceRequested) -> None:
    def refuse(reason: str) -> None:
        state.reject("slice", "", "", "slice_requested", event, reason)

    if not _worker_of(state, event.job_id, event.peer):
        return refuse("unknown_job")
    if not state.plan.dataset or event.dataset != state.plan.dataset:
        return refuse("unknown_dataset")
    if state.dataset is None:
        if not state.looking_up:
            state.looking_up = True
            state.emit(LocateDataset(state.plan.dataset))
        return refuse("dataset_unavailable")
    slices: list[SliceRec] = list(state.records["slice"].values())
    chosen = choose(slices, event.peer)
    if chosen is None and slices and all(s._phase == "done" for s in slices):
        if state.plan.epochs and state.epoch >= state.plan.epochs:
            return refuse("epochs_done")
        state.epoch += 1
        for rec in slices:
            state.fire("slice", rec.key, "epoch_started")
        chosen = choose(slices, event.peer)
    if chosen is None:
        return refuse("no_slice_free")
    state.fire("slice", chosen.key, "slice_requested", event)
    return None


def _on_slice_done(state: SchedulerState, event: SliceDone) -> None:
    key = str(event.index)
    if not _worker_of(state, event.job_id, event.peer):
        state.reject("slice", key, "", "slice_done", event, "unknown_job")
    elif event.dataset != state.plan.dataset or key not in state.records["slice"]:
        state.reject("slice", key, "", "slice_done", event, "unknown_slice")
    else:
        state.fire("slice", key, "slice_done", event)


def _on_tick(state: SchedulerState, event: Tick) -> None:
    """Deadlines already fired at the start of the step."""


_ROUTES: dict[type, Callable[[SchedulerState, Any], None]] = {
    Begin: _on_begin,
    StopRequested: _on_stop,
    Tick: _on_tick,
    GatewaysLocated: _on_gateways,
    GatewaysUnreachable: _on_gateways,
    Published: _on_published,
    PublishFailed: _on_published,
    OfferReceived: _on_offer,
    StatusReceived: _on_report,
    ProgressReceived: _on_report,
    DatasetFound: _on_dataset,
    DatasetMissing: _on_dataset,
    SliceRequested: _on_slice_request,
    SliceDone: _on_slice_done,
    **dict.fromkeys(_RESULT_NAMES, _on_lease_result),
}
