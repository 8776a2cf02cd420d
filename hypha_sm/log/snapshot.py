"""Snapshots of the core state, for segments of a rotated log that must replay on their own.

``capture`` turns a ``WorkerState`` between two steps into a ``Snapshot`` (plain data, see
``codec.py``); ``restore`` rebuilds a state that behaves exactly as the captured one from there
on: same records with every slot, same ledger, same id counter, same deadline heap (stale
entries and layout included, so entries pop in the same order and compaction triggers at the
same size), same remembered advertisements, same counters, same ``now``.

What is not in a snapshot is rebuilt, not stored:

- the engine (the caller passes it, as for a replay from the initial state);
- the policy, the seed and the capacity, which come from the header like in a version 1 log;
- the per-step scratch (``effects``, ``trace``, ``queue``): ``step`` resets the first two, and
  the queue is empty between steps (``capture`` refuses a state in the middle of one).

Pure: no I/O.
"""

from __future__ import annotations

from collections import Counter
from operator import attrgetter
from typing import Any

import msgspec

from hypha_sm.core.engine import Engine
from hypha_sm.core.errors import InvariantViolation
from hypha_sm.core.record import Record
from hypha_sm.log.codec import (
    AnyRecordSnapshot,
    BatchSnapshot,
    JobSnapshot,
    LeaseSnapshot,
    LogFormatError,
    NodeSnapshot,
    RecordSnapshot,
    RequestSnapshot,
    Snapshot,
)
from hypha_sm.roles.worker.core.events import Now
from hypha_sm.roles.worker.core.policy import Policy
from hypha_sm.roles.worker.core.records import BatchRec, JobRec, LeaseRec, NodeRec, RequestRec
from hypha_sm.roles.worker.core.reducer import initial_state
from hypha_sm.roles.worker.core.state import KINDS, WorkerState

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
    )


def restore(snapshot: Snapshot, engine: Engine, policy: Policy, seed: bytes) -> WorkerState:
    """A state that continues exactly as the captured one; LogFormatError if it is inconsistent."""
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
            raise LogFormatError(f"snapshot: {kind} {snap.key!r} in unknown or final phase")
        table = state.records[kind]
        if snap.key in table:
            raise LogFormatError(f"snapshot: {kind} {snap.key!r} appears twice")
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
        raise LogFormatError("snapshot: reserved is not the sum of the reservations")
    if snapshot.ids_issued < 0 or any(t[1] > snapshot.timer_seq for t in snapshot.timers):
        raise LogFormatError("snapshot: id counter or timer sequence out of range")
    if not (_is_heap(snapshot.timers) and _is_heap(snapshot.seen_heap)):
        raise LogFormatError("snapshot: timers or seen_heap is not a heap")
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
