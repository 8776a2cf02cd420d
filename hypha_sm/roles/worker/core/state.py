"""The worker state: the host's records and timers, plus the resource ledger and market memory.

The state is owned by whoever calls ``step`` (one loop task in the shell, one fold in replay).
``step`` changes it in place and hands it back; nothing else writes to it. Besides the host's
primitives (create, arm, post, emit), actions reserve and release resources here; none of them
does I/O.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from hypha_sm.core.engine import Engine
from hypha_sm.core.errors import InvariantViolation
from hypha_sm.core.host import Host
from hypha_sm.core.resources import ZERO, Resources, to_resources
from hypha_sm.roles.worker.core.effects import Effect, ReplyDispatchFailed, ReplyRenewFailed
from hypha_sm.roles.worker.core.events import DispatchRequested, RenewRequested
from hypha_sm.roles.worker.core.policy import Policy
from hypha_sm.roles.worker.core.records import BatchRec, NodeRec

KINDS = ("node", "batch", "request", "lease", "job")


#: A released lease's end reason -> what its owner is told when a message about it comes late.
ENDED_LEASE_REPLIES = {
    "not_accepted": "offer_expired",
    "offer_failed": "offer_expired",
    "job_ended": "job_ended",
    "expired": "lease_expired",
    "shutdown": "shutting_down",
}


class WorkerState(Host[Effect]):
    """Everything the worker's core knows. Mutated only inside ``step``."""

    def __init__(self, engine: Engine, policy: Policy, seed: bytes) -> None:
        capacity = to_resources(policy.capacity)
        if capacity is None:
            raise ValueError(f"invalid capacity {policy.capacity!r}")
        super().__init__(engine, KINDS, seed)
        self.policy = policy
        self.capacity: Resources = capacity
        self.reserved: Resources = ZERO
        self.reservations: dict[str, Resources] = {}
        #: Advertisement ids seen recently, with the mono time they may be forgotten.
        self.seen_ads: dict[str, float] = {}
        self.seen_heap: list[tuple[float, str]] = []
        self.accepting = True
        #: The work dir's disk is full: advertisements are declined until it has room again.
        self.storage_full = False
        #: Scheduler -> (offers in a row it let lapse, mono time its backoff ends or, without
        #: one, of its last lapse), the least recently changed first; bounded.
        self.lapses: dict[str, tuple[int, float]] = {}
        #: Lease id -> (owner, why it ended), the most recent last; bounded. A renewal or a
        #: dispatch from the owner that arrives after the end is told why.
        self.ended_leases: dict[str, tuple[str, str]] = {}
        self.arrivals = 0
        #: While a flush reserves: each scheduler's pending offers, counted once per flush
        #: rather than by a scan of every lease per advertisement. Derived from the records,
        #: so not part of the state: None between flushes.
        self.pending_index: Counter[str] | None = None
        self.create(NodeRec("node"))
        self.create(BatchRec("batch"))

    # -- advertisement ids seen recently ------------------------------------------------

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
        if self.pending_index is not None:
            return self.pending_index[scheduler]
        return sum(
            1
            for lease in self.records["lease"].values()
            if lease.owner == scheduler and lease._phase == "offered"
        )

    @contextmanager
    def pending_offers_indexed(self) -> Iterator[None]:
        """Within: every scheduler's pending offers counted once (for a flush's reservations)."""
        self.pending_index = Counter(
            lease.owner for lease in self.records["lease"].values() if lease._phase == "offered"
        )
        try:
            yield
        finally:
            self.pending_index = None

    def note_offer(self, scheduler: str) -> None:
        """An offer was just made: the flush's count of the scheduler's pending offers grows."""
        if self.pending_index is not None:
            self.pending_index[scheduler] += 1

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

    def note_ended(self, lease_id: str, owner: str, reason: str) -> None:
        """A lease ended: remember why, for its owner's messages still in flight."""
        self.ended_leases[lease_id] = (owner, ENDED_LEASE_REPLIES.get(reason, "lease_ended"))
        while len(self.ended_leases) > self.policy.ended_lease_memory:
            del self.ended_leases[next(iter(self.ended_leases))]

    def why_unknown(self, lease_id: str, peer: str) -> str:
        """The refusal for a message about a lease this node does not hold.

        Its owner learns why it ended; anyone else learns nothing (``unknown_lease``).
        """
        ended = self.ended_leases.get(lease_id)
        return ended[1] if ended is not None and ended[0] == peer else "unknown_lease"

    def note_accepted(self, scheduler: str) -> None:
        """The scheduler accepted (renewed) a lease: its lapses are forgiven."""
        self.lapses.pop(scheduler, None)

    # -- replies to refused remote events ----------------------------------------------------

    def refuse(self, payload: object, reason: str) -> None:
        """Answer a refused renewal or dispatch with the reason: the scheduler waits for one."""
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
            "ended_leases": dict(self.ended_leases),
        }
