"""The scheduler's state: its records (one allocation, a placement per lease) and what it keeps.

``SchedulerState`` is a ``Host`` (records, timers, ids, counters, trace) plus the plan, the
order in which placements joined the job, where each job id belongs, and how every ended
placement ended (records are dropped when they end; the outcome is kept here).
"""

from __future__ import annotations

import math

import msgspec

from hypha_sm.core.engine import Engine
from hypha_sm.core.host import Host
from hypha_sm.core.record import Record
from hypha_sm.core.resources import Amounts
from hypha_sm.roles.scheduler.core.effects import (
    Effect,
    ReplyNoSlice,
    ReplyOffer,
    ReplyProgress,
    ReplySliceDone,
    ReplyStatus,
)
from hypha_sm.roles.scheduler.core.events import (
    OfferReceived,
    ProgressReceived,
    SliceDone,
    SliceRequested,
    StatusReceived,
)
from hypha_sm.roles.scheduler.core.plan import Plan
from hypha_sm.roles.scheduler.core.tracker import RoundTracker

KINDS = ("allocation", "placement", "slice", "training")
#: The groups of workers a job places: every job's ``train``; a DiLoCo job's ``ps`` too.
TRAIN, PS = "train", "ps"
#: The one allocation record's key.
JOB = "job"
#: How long a worker waits before asking again when no slice is free yet.
SLICE_RETRY = 1.0
#: Refusals of a slice request that a later request may not get.
RETRYABLE = frozenset({"no_slice_free", "dataset_unavailable"})
#: Placement phases in which the lease is ours (renewed on a deadline).
HELD = frozenset({"accepted", "dispatched", "running"})


class AllocationRec(Record):
    """The job's allocation: the current advertisement, its offers and the give-up time."""

    __slots__ = (
        "first_offer",
        "give_up_at",
        "group",
        "next_offer",
        "offers",
        "reason",
        "request_id",
    )
    kind = "allocation"

    def __init__(self, key: str = JOB) -> None:
        super().__init__(key)
        self.request_id = ""
        #: The group the current advertisement seeks.
        self.group = TRAIN
        #: Offers for the current advertisement, in arrival order; ranked when collecting ends.
        self.offers: list[OfferReceived] = []
        #: The index in ``offers`` of the next offer to try.
        self.next_offer = 0
        self.first_offer = False
        self.give_up_at = math.inf
        self.reason = ""


class PlacementRec(Record):
    """One worker's part of the job, keyed by its lease id."""

    __slots__ = (
        "address",
        "batch_size",
        "expires_mono",
        "group",
        "job_id",
        "price",
        "renew_at",
        "renew_every",
        "worker",
    )
    kind = "placement"

    def __init__(
        self,
        key: str,
        worker: str,
        address: str,
        price: float,
        group: str = TRAIN,
        batch_size: int = 0,
    ) -> None:
        super().__init__(key)
        self.worker = worker
        self.address = address
        self.price = price
        self.group = group
        #: A DiLoCo training worker's batch size (from its offer's gpu), 0 otherwise.
        self.batch_size = batch_size
        self.job_id = ""
        #: When the worker said the lease expires, on our monotonic clock (inf until accepted).
        self.expires_mono = math.inf
        #: How often to renew: renew_interval, or half the time the worker last gave us.
        self.renew_every = math.inf
        #: When the next renewal is due (kept across phase changes, which clear the deadline).
        self.renew_at = math.inf


class SliceRec(Record):
    """One slice of the dataset, keyed by its index (as text)."""

    __slots__ = ("assignee", "index", "job_id", "owner")
    kind = "slice"

    def __init__(self, index: int) -> None:
        super().__init__(str(index))
        self.index = index
        #: The worker it was last handed to, kept across epochs (affinity).
        self.owner = ""
        #: The worker holding it now ("" unless assigned).
        self.assignee = ""
        self.job_id = ""


class Dataset(msgspec.Struct, frozen=True):
    """The plan's dataset as found at the gateways."""

    name: str
    slices: int
    manifest_hash: str
    providers: tuple[str, ...]


class Ended(msgspec.Struct, frozen=True):
    """How a placement that left its machine ended."""

    worker: str
    address: str
    lease_id: str
    price: float
    job_id: str
    phase: str
    exit_code: int | None = None
    reason: str = ""
    group: str = TRAIN


class SchedulerState(Host[Effect]):
    """Every live record of the scheduler, and what it remembers of the ended ones."""

    def __init__(self, engine: Engine, plan: Plan, seed: bytes) -> None:
        super().__init__(engine, KINDS, seed)
        self.plan = plan
        #: Lease ids of the placements that are part of the job, in the job's worker order.
        self.placed: list[str] = []
        #: Job id -> lease id, for statuses and progress.
        self.jobs: dict[str, str] = {}
        #: Ended placements by lease id (only those that were part of the job, or refused).
        self.ended: dict[str, Ended] = {}
        #: Set when the run is over.
        self.finished: tuple[bool, str] | None = None
        #: The dataset once found, the epoch being handed out (1 once slices exist), and
        #: whether a lookup is in flight.
        self.dataset: Dataset | None = None
        self.epoch = 0
        self.looking_up = False
        #: A DiLoCo job's rounds (the original's ProgressTracker and WorkerTracker).
        self.tracker = RoundTracker(plan.diloco) if plan.diloco is not None else None

    def drain(self) -> None:
        """Run queued internal events until none is left.

        Those queued for an allocation that ended meanwhile (a DiLoCo failure and the last
        placement's end in one step) are counted, not run.
        """
        queue = self.queue
        while queue:
            kind, key, event, payload = queue.popleft()
            if kind == "allocation" and key not in self.records[kind]:
                self.count(f"late.{event}")
                continue
            self.fire(kind, key, event, payload)

    def groups(self) -> tuple[str, ...]:
        """The job's groups, in the order they are advertised for."""
        return (PS, TRAIN) if self.plan.diloco is not None else (TRAIN,)

    def wanted(self, group: str) -> int:
        """How many leases a group needs."""
        return 1 if group == PS else self.plan.workers

    def held_in(self, group: str) -> list[PlacementRec]:
        """The group's held placements, in acceptance order."""
        return [p for p in self.held() if p.group == group]

    def short_group(self) -> str | None:
        """The first group with fewer leases held than it needs (None: every one is full)."""
        for group in self.groups():
            if len(self.held_in(group)) < self.wanted(group):
                return group
        return None

    def needs(self, group: str) -> tuple[Amounts, float]:
        """What a group's worker must offer, and the highest price it may ask."""
        diloco = self.plan.diloco
        if group == PS and diloco is not None:
            return diloco.ps_resources, diloco.ps_bid
        return self.plan.resources, self.plan.price_limit

    def held(self) -> list[PlacementRec]:
        """The placements whose lease is ours, in acceptance order."""
        return [p for p in self.records["placement"].values() if p._phase in HELD]

    def pending(self) -> int:
        """Acceptances in flight."""
        return sum(1 for p in self.records["placement"].values() if p._phase == "accepting")

    def wall_to_mono(self, wall: float) -> float:
        """A wall-clock time from a peer as a time on our monotonic clock."""
        return self.now.mono + (wall - self.now.wall)

    def refuse(self, payload: object, reason: str) -> None:
        """Answer a refused offer, status or progress report with the reason."""
        if isinstance(payload, OfferReceived):
            self.emit(ReplyOffer(payload.reply_to, payload.lease_id, reason))
        elif isinstance(payload, StatusReceived):
            self.emit(ReplyStatus(payload.reply_to, payload.job_id, reason))
        elif isinstance(payload, ProgressReceived):
            self.emit(ReplyProgress(payload.reply_to, payload.job_id, reason=reason))
        elif isinstance(payload, SliceRequested):
            retry = SLICE_RETRY if reason in RETRYABLE else 0.0
            self.emit(ReplyNoSlice(payload.reply_to, reason, retry))
        elif isinstance(payload, SliceDone):
            self.emit(ReplySliceDone(payload.reply_to, payload.index, reason))
