"""The worker state: every live record, the resource ledger, timers, counters and the id source.

The state is owned by whoever calls ``step`` (one loop task in the shell, one fold in replay).
``step`` changes it in place and hands it back; nothing else writes to it. The primitives here
(create, arm, post, emit, reserve, release) are what actions use; none of them does I/O.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from typing import Any

from hypha_sm.core.effects import Effect, ReplyDispatchFailed, ReplyRenewFailed
from hypha_sm.core.engine import CREATED, REJECTED, Engine
from hypha_sm.core.errors import InvariantViolation
from hypha_sm.core.events import DispatchRequested, Now, RenewRequested
from hypha_sm.core.ids import IdGen
from hypha_sm.core.policy import Policy
from hypha_sm.core.records import BatchRec, NodeRec, Record
from hypha_sm.core.resources import ZERO, Resources, to_resources

#: A trace entry: (machine, key, from phase, event, to phase or None if ignored/rejected,
#: index of the declared transition that fired, or IGNORED / REJECTED / CREATED (< 0)).
TraceEntry = tuple[str, str, str, str, str | None, int]

KINDS = ("node", "batch", "request", "lease", "job")


class WorkerState:
    """Everything the core knows. Mutated only inside ``step``."""

    def __init__(self, engine: Engine, policy: Policy, seed: bytes) -> None:
        capacity = to_resources(policy.capacity)
        if capacity is None:
            raise ValueError(f"invalid capacity {policy.capacity!r}")
        self.engine = engine
        self.policy = policy
        self.capacity: Resources = capacity
        self.reserved: Resources = ZERO
        self.reservations: dict[str, Resources] = {}
        self.ids = IdGen(seed)
        self.records: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        self.timers: list[tuple[float, int, str, str]] = []
        self.timer_seq = 0
        #: Advertisement ids seen recently, with the mono time they may be forgotten.
        self.seen_ads: dict[str, float] = {}
        self.seen_heap: list[tuple[float, str]] = []
        self.accepting = True
        #: The work dir's disk is full: advertisements are declined until it has room again.
        self.storage_full = False
        #: Scheduler -> (offers in a row it let lapse, mono time its backoff ends or, without
        #: one, of its last lapse), the least recently changed first; bounded.
        self.lapses: dict[str, tuple[int, float]] = {}
        self.arrivals = 0
        self.counters: Counter[str] = Counter()
        # Per-step scratch, reset by ``step``.
        self.now = Now(0.0, 0.0)
        self.effects: list[Effect] = []
        self.trace: list[TraceEntry] = []
        self.queue: deque[tuple[str, str, str, object]] = deque()
        self.create(NodeRec("node"))
        self.create(BatchRec("batch"))

    # -- records ---------------------------------------------------------------------------

    def create(self, rec: Record) -> None:
        """Add a new record in its machine's initial phase."""
        table = self.records[rec.kind]
        if rec.key in table:
            raise InvariantViolation(f"{rec.kind} {rec.key!r} already exists")
        rec._phase = self.engine.specs[rec.kind].initial
        table[rec.key] = rec
        self.trace.append((rec.kind, rec.key, "", "created", rec._phase, CREATED))

    def drop(self, rec: Record) -> None:
        """Remove a record that reached a terminal phase (terminal phases absorb)."""
        if rec._phase not in self.engine.runtimes[rec.kind].terminal:
            raise InvariantViolation(
                f"{rec.kind} {rec.key!r} dropped in live phase {rec._phase!r}"
            )
        del self.records[rec.kind][rec.key]
        self.counters[f"{rec.kind}.{rec._phase}"] += 1

    def get(self, kind: str, key: str) -> Any:
        """The live record, or None."""
        return self.records[kind].get(key)

    # -- time ------------------------------------------------------------------------------

    def arm(self, rec: Record, at: float) -> None:
        """Set the record's deadline; its phase's deadline event fires at exactly ``at``."""
        rec.deadline = at
        self.timer_seq += 1
        timers = self.timers
        heapq.heappush(timers, (at, self.timer_seq, rec.kind, rec.key))
        if len(timers) > 2 * self.live_records() + 1024:
            self._compact_timers()

    def arm_after(self, rec: Record, delay: float) -> None:
        """Arm the record's deadline ``delay`` seconds from now."""
        self.arm(rec, self.now.mono + delay)

    def live_records(self) -> int:
        """How many records are live, of every kind."""
        return sum(len(table) for table in self.records.values())

    def _compact_timers(self) -> None:
        # Renewals leave the old entry behind until its time comes; a peer renewing fast could
        # pile them up. Keep one entry per live record: of those at its current deadline (a
        # record armed at t, then u, then t again has two), the first in (at, seq) order, the
        # one the heap would have fired. So deadlines fire in the same order as without this.
        kept: dict[tuple[str, str], tuple[float, int, str, str]] = {}
        for entry in self.timers:
            at, seq, kind, key = entry
            rec = self.records[kind].get(key)
            if rec is not None and rec.deadline == at:
                first = kept.get((kind, key))
                if first is None or seq < first[1]:
                    kept[(kind, key)] = entry
        self.timers = list(kept.values())
        heapq.heapify(self.timers)

    def next_deadline(self) -> float:
        """The earliest pending deadline (``inf`` if none). Discards stale timer entries."""
        timers = self.timers
        while timers:
            at, _, kind, key = timers[0]
            rec = self.records[kind].get(key)
            if rec is not None and rec.deadline == at:
                return at
            heapq.heappop(timers)
        return math.inf

    def forget_seen(self) -> None:
        """Forget advertisement ids whose validity has passed (memory hygiene, not a deadline)."""
        heap = self.seen_heap
        mono = self.now.mono
        while heap and heap[0][0] <= mono:
            forget_at, request_id = heapq.heappop(heap)
            if self.seen_ads.get(request_id) == forget_at:
                del self.seen_ads[request_id]

    def bound_seen(self, capacity: int) -> None:
        """Forget the soonest-to-expire advertisement ids until at most ``capacity`` remain."""
        heap = self.seen_heap
        while len(self.seen_ads) > capacity and heap:
            forget_at, request_id = heapq.heappop(heap)
            if self.seen_ads.get(request_id) == forget_at:
                del self.seen_ads[request_id]
                self.counters["dedupe.evicted"] += 1

    # -- schedulers that let offers lapse ---------------------------------------------------

    def backed_off(self, scheduler: str) -> bool:
        """Whether the scheduler's advertisements are declined now (it let offers lapse)."""
        standing = self.lapses.get(scheduler)
        return standing is not None and self.now.mono < standing[1]

    def pending_offers(self, scheduler: str) -> int:
        """How many offers the scheduler holds unaccepted now."""
        return sum(
            1
            for lease in self.records["lease"].values()
            if lease.owner == scheduler and lease._phase == "offered"
        )

    def note_lapse(self, scheduler: str) -> float:
        """Count an offer the scheduler let lapse; the backoff it starts now (0 if none)."""
        lapses, until = self.lapses.pop(scheduler, (0, self.now.mono))
        if self.now.mono - until > self.policy.timings.backoff_max:
            lapses = 0  # long quiet since its last lapse or backoff: a fresh start
        lapses += 1
        backoff = 0.0
        over = lapses - self.policy.lapses_before_backoff
        if over >= 0:
            timings = self.policy.timings
            backoff = min(timings.backoff_base * 2.0 ** min(over, 30), timings.backoff_max)
        self.lapses[scheduler] = (lapses, self.now.mono + backoff)  # newest last
        while len(self.lapses) > self.policy.scheduler_memory:
            del self.lapses[next(iter(self.lapses))]
        return backoff

    def note_accepted(self, scheduler: str) -> None:
        """The scheduler accepted (renewed) a lease: its lapses are forgiven."""
        self.lapses.pop(scheduler, None)

    # -- events and effects ----------------------------------------------------------------

    def fire(self, kind: str, key: str, event: str, payload: object = None) -> None:
        """Fire an event on a live record now (only from outside an action of the same kind)."""
        rec = self.records[kind].get(key)
        if rec is None:
            raise InvariantViolation(f"event {event!r} for {kind} {key!r}, which is not live")
        self.engine.runtimes[kind].fire(self, rec, event, payload)

    def post(self, kind: str, key: str, event: str, payload: object = None) -> None:
        """Queue an internal event; it runs after the current transition completes."""
        self.queue.append((kind, key, event, payload))

    def drain(self) -> None:
        """Run queued internal events until none is left (run to completion)."""
        queue = self.queue
        while queue:
            kind, key, event, payload = queue.popleft()
            self.fire(kind, key, event, payload)

    def emit(self, effect: Effect) -> None:
        """Ask the shell to do something."""
        self.effects.append(effect)

    def count(self, name: str) -> None:
        """Bump a counter (declines, rejections, late results)."""
        self.counters[name] += 1

    def reject(
        self, kind: str, key: str, phase: str, event: str, payload: object, reason: str
    ) -> None:
        """Refuse a remote event: reply with the reason when the peer waits for one, and count it."""
        self.counters[f"rejected.{kind}.{reason}"] += 1
        self.trace.append((kind, key, phase, event, None, REJECTED))
        if isinstance(payload, RenewRequested):
            self.emit(ReplyRenewFailed(payload.reply_to, payload.lease_id, reason))
        elif isinstance(payload, DispatchRequested):
            self.emit(ReplyDispatchFailed(payload.reply_to, payload.job_id, reason))

    # -- the resource ledger ---------------------------------------------------------------

    def available(self) -> Resources:
        """Capacity not held by any reservation."""
        return self.capacity.minus(self.reserved)

    def reserve(self, lease_id: str, amount: Resources) -> None:
        """Hold ``amount`` for a lease. The caller has checked that it fits."""
        if lease_id in self.reservations:
            raise InvariantViolation(f"lease {lease_id!r} already holds a reservation")
        reserved = self.reserved.plus(amount)
        if not reserved.fits_within(self.capacity):
            raise InvariantViolation(f"reserving {amount} for {lease_id!r} would double book")
        self.reservations[lease_id] = amount
        self.reserved = reserved

    def release(self, lease_id: str) -> None:
        """Return a lease's reservation. Exactly once: a second release is a bug."""
        amount = self.reservations.pop(lease_id, None)
        if amount is None:
            raise InvariantViolation(f"lease {lease_id!r} released twice or never reserved")
        self.reserved = self.reserved.minus(amount)

    # -- introspection ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """Everything that determines future behaviour, as plain data (replay compares these)."""
        return {
            "now": {"mono": self.now.mono, "wall": self.now.wall},
            "accepting": self.accepting,
            "capacity": self.capacity.to_amounts(),
            "reserved": self.reserved.to_amounts(),
            "reservations": {k: v.to_amounts() for k, v in sorted(self.reservations.items())},
            "ids_issued": self.ids.counter,
            "next_deadline": self.next_deadline(),
            "records": {
                kind: {key: table[key].fields() for key in sorted(table)}
                for kind, table in self.records.items()
            },
            "counters": dict(sorted(self.counters.items())),
            "remembered_ads": len(self.seen_ads),
            "storage_full": self.storage_full,
            "lapses": dict(self.lapses),
        }
