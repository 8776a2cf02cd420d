"""The worker's state as plain data, for segments of a rotated log that must replay on their own.

``capture`` turns a ``WorkerState`` between two steps into a ``Snapshot``; ``restore`` rebuilds a
state that behaves exactly as the captured one from there on: same records with every slot, same
ledger, same id counter, same deadline heap (stale entries and layout included, so entries pop in
the same order and compaction triggers at the same size), same remembered advertisements, same
counters, same ``now``.

What is not in a snapshot is rebuilt, not stored:

- the engine (the caller passes it, as for a replay from the initial state);
- the policy, the seed and the capacity, which come from the log header;
- the per-step scratch (``effects``, ``trace``, ``queue``): ``step`` resets the first two, and
  the queue is empty between steps (``capture`` refuses a state in the middle of one).

JSON has no NaN or infinity and deadlines are often ``inf``: ``spell_snapshot`` makes the copy
the event log writes, non-finite floats spelled as words (the log's codec reads them back).
Pure: no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from operator import attrgetter
from typing import Any

import msgspec

from hypha_sm.core.engine import Engine
from hypha_sm.core.errors import InvariantViolation, SnapshotError
from hypha_sm.core.record import Record
from hypha_sm.core.resources import Amounts, Resources
from hypha_sm.core.trace import Now
from hypha_sm.roles.worker.core.policy import ExecutorRef, ExecutorSpec, Policy
from hypha_sm.roles.worker.core.records import BatchRec, JobRec, LeaseRec, NodeRec, RequestRec
from hypha_sm.roles.worker.core.reducer import initial_state
from hypha_sm.roles.worker.core.state import KINDS, WorkerState


class RecordSnapshot(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    """One live record in a snapshot: every slot of its class, tagged by machine kind."""

    key: str
    phase: str
    #: Monotonic time of the record's deadline; ``inf`` when it has none.
    deadline: float


class NodeSnapshot(RecordSnapshot, tag="node", frozen=True):
    """A ``NodeRec``."""

    stop_reason: str


class BatchSnapshot(RecordSnapshot, tag="batch", frozen=True):
    """A ``BatchRec``: the request ids held in the window, in arrival order."""

    pending: list[str]


class RequestSnapshot(RecordSnapshot, tag="request", frozen=True):
    """A ``RequestRec`` (held in the window; its floats may be non-finite if it was hostile)."""

    scheduler: str
    reply_address: str
    amounts: Amounts
    executors: tuple[ExecutorRef, ...]
    bid: float
    expires_mono: float
    arrival: int
    requested: Resources | None
    offer_price: float
    offer_resources: Resources | None
    score: float
    offer_lifetime: float = 0.0


class LeaseSnapshot(RecordSnapshot, tag="lease", frozen=True):
    """A ``LeaseRec``."""

    owner: str
    request_id: str
    resources: Resources
    price: float
    job_id: str | None
    end_reason: str


class JobSnapshot(RecordSnapshot, tag="job", frozen=True):
    """A ``JobRec``."""

    lease_id: str
    scheduler: str
    executor: ExecutorSpec
    spec: str
    reply_to: int | None
    started: bool
    outcome: str
    reason: str
    exit_code: int | None


AnyRecordSnapshot = NodeSnapshot | BatchSnapshot | RequestSnapshot | LeaseSnapshot | JobSnapshot


class Snapshot(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The core state between two steps, exactly.

    It is what ``WorkerState`` holds besides the engine, the policy and the seed (which the
    header carries) and the per-step scratch (empty between steps). Dicts and lists keep their
    order; ``timers`` and ``seen_heap`` are the heaps as laid out in memory, stale entries
    included, so a restored state pops them in the same order.
    """

    #: ``state.now``: the time of the last step (the next input may not go back before it).
    mono: float
    wall: float
    #: How many ids the seeded generator has issued (its counter).
    ids_issued: int
    accepting: bool
    arrivals: int
    reserved: Resources
    reservations: dict[str, Resources]
    #: Every live record, kind by kind (node, batch, request, lease, job), in insertion order.
    records: list[AnyRecordSnapshot]
    timer_seq: int
    #: The deadline heap: (at, seq, kind, key).
    timers: list[tuple[float, int, str, str]]
    seen_ads: dict[str, float]
    #: The forget-by heap of remembered advertisement ids: (forget_at, request_id).
    seen_heap: list[tuple[float, str]]
    counters: dict[str, int]
    storage_full: bool = False
    #: Scheduler -> (offers in a row it let lapse, mono time its backoff ends); finite.
    lapses: dict[str, tuple[int, float]] = {}
    #: Lease id -> (owner, what a late message about it is told); finite.
    ended_leases: dict[str, tuple[str, str]] = {}


_PAIRS: tuple[tuple[type[Record], type[RecordSnapshot]], ...] = (
    (NodeRec, NodeSnapshot),
    (BatchRec, BatchSnapshot),
    (RequestRec, RequestSnapshot),
    (LeaseRec, LeaseSnapshot),
    (JobRec, JobSnapshot),
)
_SNAPSHOT_OF = dict(_PAIRS)
_RECORD_OF = {snap: rec for rec, snap in _PAIRS}
_BASE = ("key", "phase", "deadline")


def _slots(cls: type[Record]) -> set[str]:
    names = {name for c in cls.__mro__ for name in getattr(c, "__slots__", ())}
    return {"phase" if name == "_phase" else name for name in names}


def _check_pairs() -> dict[type[RecordSnapshot], tuple[str, ...]]:
    """Every slot of every record class has a snapshot field, and no more (checked at import)."""
    fields = {}
    for rec_cls, snap_cls in _PAIRS:
        declared = set(snap_cls.__struct_fields__)
        if _slots(rec_cls) != declared or rec_cls.kind != snap_cls.__struct_config__.tag:
            raise InvariantViolation(
                f"{snap_cls.__name__} does not mirror {rec_cls.__name__}: fields "
                f"{sorted(declared)} vs slots {sorted(_slots(rec_cls))}; a record slot missing "
                "from its snapshot would make rotated logs diverge on replay"
            )
        fields[snap_cls] = tuple(f for f in snap_cls.__struct_fields__ if f not in _BASE)
    return fields


#: The fields of each snapshot class beyond key, phase and deadline.
_FIELDS = _check_pairs()


def _copy(value: Any) -> Any:
    # Only BatchRec.pending is mutable (a list of str); everything else is immutable.
    return list(value) if isinstance(value, list) else value


#: Reads a record's slots in its snapshot's field order (positional construction is fastest).
_GETTERS = {
    snap_cls: attrgetter("key", "_phase", "deadline", *_FIELDS[snap_cls]) for _, snap_cls in _PAIRS
}


def capture(state: WorkerState) -> Snapshot:
    """The state as plain data. Only between steps (the internal queue must be empty)."""
    if state.queue:
        raise InvariantViolation("snapshot taken in the middle of a step (queue not empty)")
    records: list[AnyRecordSnapshot] = []
    append = records.append
    for kind in KINDS:
        for rec in state.records[kind].values():
            snap_cls = _SNAPSHOT_OF[type(rec)]
            if snap_cls is BatchSnapshot:
                append(BatchSnapshot(rec.key, rec._phase, rec.deadline, list(rec.pending)))
            else:
                append(snap_cls(*_GETTERS[snap_cls](rec)))  # type: ignore[arg-type]
    return Snapshot(
        mono=state.now.mono,
        wall=state.now.wall,
        ids_issued=state.ids.counter,
        accepting=state.accepting,
        arrivals=state.arrivals,
        reserved=state.reserved,
        reservations=dict(state.reservations),
        records=records,
        timer_seq=state.timer_seq,
        timers=list(state.timers),
        seen_ads=dict(state.seen_ads),
        seen_heap=list(state.seen_heap),
        counters=dict(state.counters),
        storage_full=state.storage_full,
        lapses=dict(state.lapses),
        ended_leases=dict(state.ended_leases),
    )


def restore(snapshot: Snapshot, engine: Engine, policy: Policy, seed: bytes) -> WorkerState:
    """A state that continues exactly as the captured one; SnapshotError if it is inconsistent."""
    state = initial_state(engine, policy, seed)
    state.records = {kind: {} for kind in KINDS}
    live_phases = {
        kind: {s.name for s in engine.specs[kind].states} - set(engine.runtimes[kind].terminal)
        for kind in KINDS
    }
    for snap in snapshot.records:
        rec_cls = _RECORD_OF[type(snap)]
        kind = rec_cls.kind
        if snap.phase not in live_phases[kind]:
            raise SnapshotError(f"snapshot: {kind} {snap.key!r} in unknown or final phase")
        table = state.records[kind]
        if snap.key in table:
            raise SnapshotError(f"snapshot: {kind} {snap.key!r} appears twice")
        rec = rec_cls.__new__(rec_cls)
        rec.key = snap.key
        rec._phase = snap.phase
        rec.deadline = snap.deadline
        for name in _FIELDS[type(snap)]:
            setattr(rec, name, _copy(getattr(snap, name)))
        table[snap.key] = rec
    total = [0, 0, 0, 0]
    for amount in snapshot.reservations.values():
        total = [a + b for a, b in zip(total, amount, strict=True)]
    if tuple(total) != tuple(snapshot.reserved):
        raise SnapshotError("snapshot: reserved is not the sum of the reservations")
    if snapshot.ids_issued < 0 or any(t[1] > snapshot.timer_seq for t in snapshot.timers):
        raise SnapshotError("snapshot: id counter or timer sequence out of range")
    if not (_is_heap(snapshot.timers) and _is_heap(snapshot.seen_heap)):
        raise SnapshotError("snapshot: timers or seen_heap is not a heap")
    state.now = Now(snapshot.mono, snapshot.wall)
    state.ids.counter = snapshot.ids_issued
    state.accepting = snapshot.accepting
    state.arrivals = snapshot.arrivals
    state.reserved = snapshot.reserved
    state.reservations = dict(snapshot.reservations)
    state.timer_seq = snapshot.timer_seq
    state.timers = list(snapshot.timers)
    state.seen_ads = dict(snapshot.seen_ads)
    state.seen_heap = list(snapshot.seen_heap)
    state.counters = Counter(snapshot.counters)
    state.storage_full = snapshot.storage_full
    state.lapses = dict(snapshot.lapses)
    state.ended_leases = dict(snapshot.ended_leases)
    state.effects = []
    state.trace = []
    return state


def _is_heap(items: list[Any]) -> bool:
    return all(items[(i - 1) // 2] <= items[i] for i in range(1, len(items)))


def effective(snapshot: Snapshot) -> Snapshot:
    """The snapshot with the deadline heap reduced to the entries that can still fire, sorted.

    The shell calls ``next_deadline`` between steps, which pops stale entries off the top of
    the heap; a replay does not. Both states behave the same; this is the form in which they
    compare equal.
    """
    deadlines = {
        (_RECORD_OF[type(snap)].kind, snap.key): snap.deadline for snap in snapshot.records
    }
    timers = sorted(t for t in snapshot.timers if deadlines.get((t[2], t[3])) == t[0])
    return msgspec.structs.replace(snapshot, timers=timers)


def _word(value: float) -> str:
    return "nan" if value != value else ("inf" if value > 0 else "-inf")


def _float_fields(cls: type[msgspec.Struct]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(float fields, Amounts fields) of a snapshot struct; no float may hide anywhere else."""
    floats, nested = [], []
    for info in msgspec.structs.fields(cls):
        if info.type is float:
            floats.append(info.name)
        elif info.type is Amounts:
            nested.append(info.name)
        elif "float" in repr(info.type) and info.name not in _SNAPSHOT_CONTAINERS:
            raise TypeError(f"{cls.__name__}.{info.name}: teach spell_snapshot this float")
    return tuple(floats), tuple(nested)


#: Snapshot fields holding floats inside containers, spelled one by one in spell_snapshot.
_SNAPSHOT_CONTAINERS = ("timers", "seen_ads", "seen_heap", "lapses")
_AMOUNT_FLOATS = _float_fields(Amounts)[0]
_RECORD_FLOATS = {
    cls: _float_fields(cls)
    for cls in (NodeSnapshot, BatchSnapshot, RequestSnapshot, LeaseSnapshot, JobSnapshot)
}
_SNAPSHOT_FLOATS = _float_fields(Snapshot)[0]


def _spelled(value: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: _word(v) for n in names if not math.isfinite(v := getattr(value, n))}


def spell_snapshot(snapshot: Snapshot) -> tuple[Snapshot, bool]:
    """A copy for encoding only, non-finite floats replaced by their words; and whether any were.

    Checks just the float-typed fields (a full ``to_builtins`` walk is 5x slower on a large
    state); the copy's float fields may hold strings, so it is never handed to anyone else.
    """
    isfinite = math.isfinite
    changes: dict[str, Any] = _spelled(snapshot, _SNAPSHOT_FLOATS)
    records: list[Any] | None = None
    for i, rec in enumerate(snapshot.records):
        floats, nested = _RECORD_FLOATS[type(rec)]
        fixes = _spelled(rec, floats)
        for name in nested:
            inner = _spelled(getattr(rec, name), _AMOUNT_FLOATS)
            if inner:
                fixes[name] = msgspec.structs.replace(getattr(rec, name), **inner)
        if fixes:
            records = list(snapshot.records) if records is None else records
            records[i] = msgspec.structs.replace(rec, **fixes)
    if records is not None:
        changes["records"] = records
    if not all(isfinite(t[0]) for t in snapshot.timers):
        changes["timers"] = [
            (t if isfinite(t[0]) else (_word(t[0]), *t[1:])) for t in snapshot.timers
        ]
    if not all(isfinite(t[0]) for t in snapshot.seen_heap):
        changes["seen_heap"] = [
            (t if isfinite(t[0]) else (_word(t[0]), t[1])) for t in snapshot.seen_heap
        ]
    if not all(isfinite(v) for v in snapshot.seen_ads.values()):
        changes["seen_ads"] = {
            k: v if isfinite(v) else _word(v) for k, v in snapshot.seen_ads.items()
        }
    if not changes:
        return snapshot, False
    return msgspec.structs.replace(snapshot, **changes), True
