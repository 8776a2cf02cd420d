"""The host: what every role's state has in common. Records, timers, the queue, trace, counters.

A role's state subclasses ``Host`` and adds its own data (the worker's resource ledger, a
scheduler's wanted leases) and its own replies to refused remote events (``refuse``). The
primitives here (create, drop, arm, fire, post, drain, emit, count) are what actions use; none
of them does I/O, reads a clock or draws randomness: time arrives as ``now``, ids come from a
seeded generator.

The state is owned by whoever calls the role's ``step`` (the runtime loop, or a fold in
replay). ``begin`` starts a step, ``fire_due`` fires every deadline due, ``drain`` runs
internal events to completion; nothing else writes to it.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from typing import Any, Generic, TypeVar

from hypha_sm.core.engine import Engine
from hypha_sm.core.errors import InvariantViolation
from hypha_sm.core.ids import IdGen
from hypha_sm.core.record import Record
from hypha_sm.core.trace import CREATED, REJECTED, Now, TraceEntry

#: The role's effect type: what its actions ask the shell to do.
E = TypeVar("E")


class Host(Generic[E]):
    """Every live record of one role, its timers and its per-step scratch."""

    def __init__(self, engine: Engine, kinds: tuple[str, ...], seed: bytes) -> None:
        if set(kinds) != set(engine.specs):
            raise InvariantViolation(
                f"kinds {kinds} do not match the machines {sorted(engine.specs)}"
            )
        self.engine = engine
        self.ids = IdGen(seed)
        #: Live records by kind, in the role's order of kinds (snapshots list them so).
        self.records: dict[str, dict[str, Any]] = {kind: {} for kind in kinds}
        self.timers: list[tuple[float, int, str, str]] = []
        self.timer_seq = 0
        self.counters: Counter[str] = Counter()
        # Per-step scratch, reset by ``begin``.
        self.now = Now(0.0, 0.0)
        self.effects: list[E] = []
        self.trace: list[TraceEntry] = []
        self.queue: deque[tuple[str, str, str, object]] = deque()

    # -- steps -----------------------------------------------------------------------------

    def begin(self, now: Now) -> None:
        """Start a step at ``now``: clear the scratch. Monotonic time never goes back."""
        if now.mono < self.now.mono:
            raise InvariantViolation(
                f"monotonic time went backwards: {now.mono} < {self.now.mono}"
            )
        self.now = now
        self.effects = []
        self.trace = []

    def fire_due(self) -> None:
        """Fire every deadline due at ``now``, earliest first, each run to completion."""
        timers = self.timers
        records = self.records
        runtimes = self.engine.runtimes
        mono = self.now.mono
        while timers and timers[0][0] <= mono:
            at, _, kind, key = heapq.heappop(timers)
            rec = records[kind].get(key)
            if rec is None or rec.deadline != at:
                continue  # stale: the record moved on or was re-armed since
            runtime = runtimes[kind]
            event = runtime.deadline_event.get(rec._phase)
            if event is None:
                continue
            runtime.fire(self, rec, event, None)
            self.drain()

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

    def describe(self) -> dict[str, Any]:
        """The state as plain data for people (``replay --until``): time, ids, records, counters.

        A role adds what its state holds besides (its ``Role.describe``).
        """
        return {
            "now": {"mono": self.now.mono, "wall": self.now.wall},
            "ids_issued": self.ids.counter,
            "records": {
                kind: {key: table[key].fields() for key in table}
                for kind, table in self.records.items()
            },
            "counters": dict(sorted(self.counters.items())),
        }

    def live_records(self) -> int:
        """How many records are live, of every kind."""
        return sum(len(table) for table in self.records.values())

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

    def _compact_timers(self) -> None:
        # Re-arming leaves the old entry behind until its time comes; a peer renewing fast
        # could pile them up. Keep one entry per live record: of those at its current deadline
        # (a record armed at t, then u, then t again has two), the first in (at, seq) order,
        # the one the heap would have fired. So deadlines fire in the same order as without this.
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

    def emit(self, effect: E) -> None:
        """Ask the shell to do something."""
        self.effects.append(effect)

    def count(self, name: str) -> None:
        """Bump a counter (declines, rejections, late results)."""
        self.counters[name] += 1

    def reject(
        self, kind: str, key: str, phase: str, event: str, payload: object, reason: str
    ) -> None:
        """Refuse a remote event its record's phase rejects: count, trace, ``refuse``."""
        self.counters[f"rejected.{kind}.{reason}"] += 1
        self.trace.append((kind, key, phase, event, None, REJECTED))
        self.refuse(payload, reason)

    def refuse(self, payload: object, reason: str) -> None:
        """The role's reply to a refused remote event (none by default)."""
        del payload, reason
