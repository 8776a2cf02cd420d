"""A worker fed random, partly hostile inputs, checked against a reference model after every step.

The model is built only from the inputs we feed and the effects the core returns (plus the trace,
to learn *when* the core released something, which is then checked for legality). It predicts the
answer to every renewal and dispatch, the filter verdict of every advertisement, the rank order
and reservation outcome of every flush, and cross-checks leases and jobs with the core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import msgspec.structs
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from hypha_sm.core.resources import Amounts, Resources
from hypha_sm.log.store import write_inputs
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.worker.core.effects import (
    NodeStopped,
    Notice,
    ReplyDispatched,
    ReplyDispatchFailed,
    ReplyRenewed,
    ReplyRenewFailed,
    SendJobStatus,
    SendOffer,
    StartJob,
    StopJob,
)
from hypha_sm.roles.worker.core.events import (
    AdvertisementReceived,
    DispatchRequested,
    Event,
    JobExited,
    JobStarted,
    JobStartFailed,
    Now,
    OfferDelivered,
    OfferFailed,
    RenewRequested,
    ShutdownRequested,
    StatusDelivered,
    StatusFailed,
    Tick,
)
from hypha_sm.roles.worker.core.policy import (
    ExecutorRef,
    ExecutorSpec,
    Offer,
    Policy,
    Timings,
)
from hypha_sm.roles.worker.core.reducer import initial_state, next_deadline, step
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.roles.worker.core.state import WorkerState
from tests.helpers import AGGREGATE, CAPACITY, OTHER, SCHED, TRAIN, at, engine, library_engine

THIRD = "12D3KooWThird"
PEERS = (SCHED, OTHER, THIRD)
MISCONFIGURED = ExecutorRef(cls="train", name="misconfigured")
UNKNOWN_NAME = ExecutorRef(cls="train", name="not-configured")
FOREIGN_CLASS = ExecutorRef(cls="inference", name="llm")
WRONG_CLASS = ExecutorRef(cls="aggregate", name="diloco-transformer")
EXECUTORS = (
    ExecutorSpec(cls="train", name="diloco-transformer", runtime="process"),
    ExecutorSpec(cls="aggregate", name="parameter-server", runtime="parameter-server"),
    ExecutorSpec(cls="train", name="misconfigured", runtime="parameter-server"),
)
RUNTIME = {"train": "process", "aggregate": "parameter-server"}
REUSE = "<the id of a live job>"
UNKNOWN_LEASE = "00000000-0000-4000-8000-000000000000"
MICRO = 1_000_000
FINAL = ("finished", "failed", "cancelled")

CAPACITIES = (
    CAPACITY,
    Amounts(cpu=4, memory=8),
    Amounts(gpu=8, cpu=2, memory=4, storage=10),
    Amounts(cpu=0.5, memory=0.25),
)
PRICES = ((100.0, 100.0), (150.0, 120.0), (100.0, 120.0), (0.0, 0.0), (200.0, 50.0))
#: The defaults, and short dyadic timings under which many deadlines coincide exactly.
TIMINGS = (
    Timings(),
    Timings(
        window_wait=0.25,
        offer_timeout=0.5,
        lease_timeout=2.0,
        start_timeout=4.0,
        kill_grace=0.5,
        kill_retry=1.0,
        report_timeout=2.0,
        shutdown_timeout=4.0,
    ),
)

GOOD_AMOUNT = st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0]) | st.floats(0, 32)
BAD_AMOUNT = st.sampled_from([-1.0, -1e-9, math.nan, math.inf, -math.inf, 2e9])
AMOUNTS = st.builds(
    Amounts,
    gpu=st.sampled_from([0.0, 0.0, 0.0, 1.0, 8.0, 24.0]),
    cpu=GOOD_AMOUNT,
    memory=GOOD_AMOUNT,
    storage=st.sampled_from([0.0, 0.0, 10.0, 500.0]),
)
HOSTILE_AMOUNTS = st.tuples(
    AMOUNTS, st.sampled_from(["gpu", "cpu", "memory", "storage"]), BAD_AMOUNT
).map(lambda t: msgspec.structs.replace(t[0], **{t[1]: t[2]}))
BIDS = st.one_of(
    st.sampled_from([0.0, 50.0, 99.99, 100.0, 119.99, 120.0, 130.0, 150.0, 200.0, 1e6]),
    st.floats(0, 500),
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0]),
)
EXPIRES_IN = st.sampled_from([5.0, 5.0, 60.0, 0.1, 0.2, 0.0, -1.0, math.inf, math.nan, 1e12])
EXECUTOR_LISTS = st.lists(
    st.sampled_from(
        [TRAIN, TRAIN, AGGREGATE, UNKNOWN_NAME, FOREIGN_CLASS, MISCONFIGURED, WRONG_CLASS]
    ),
    max_size=2,
).map(tuple)
#: What can happen to a job after its dispatch, in stories drawn as short lists.
JOB_STORY = (
    "start",
    "start",
    "start",
    "exit_0",
    "start_failed",
    "exit_0",
    "exit_1",
    "ack_running",
    "ack_final",
    "ack_failed",
    "renew",
    "lease_expires",
    "next_deadline",
    "shutdown",
)
SMALL_DT = st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0, 2.0])
DT = st.one_of(
    SMALL_DT, SMALL_DT, SMALL_DT, st.sampled_from([5.0, 9.99, 10.0, 15.0, 30.0]), st.floats(0, 30)
)


def micro(amounts: Amounts) -> Resources | None:
    """The model's own conversion to micro-units (rounded up), None when invalid."""
    out = []
    for value in (amounts.gpu, amounts.cpu, amounts.memory, amounts.storage):
        if not (0.0 <= value <= 1e9):
            return None
        out.append(math.ceil(value * MICRO))
    return Resources(*out)


def configured(ref: ExecutorRef) -> ExecutorSpec | None:
    """The model's own executor lookup: class and name must both match."""
    return next((e for e in EXECUTORS if (e.cls, e.name) == (ref.cls, ref.name)), None)


def fits(a: Resources, b: Resources) -> bool:
    """Every dimension of a is <= b's."""
    return all(x <= y for x, y in zip(a, b, strict=True))


def amounts_of(r: Resources) -> Amounts:
    """Micro-units back to float units, as the wire carries them."""
    return Amounts(*(x / MICRO for x in r))


def add(a: Resources, b: Resources, sign: int = 1) -> Resources:
    """a + sign * b, per dimension."""
    return Resources(*(x + sign * y for x, y in zip(a, b, strict=True)))


ZERO = Resources(0, 0, 0, 0)


def snapshot(state: WorkerState) -> str:
    """Everything replay must reproduce, as a NaN-safe text (repr round-trips floats)."""
    records = {
        kind: {key: sorted(rec.fields().items()) for key, rec in sorted(table.items())}
        for kind, table in sorted(state.records.items())
    }
    return repr(
        (
            records,
            state.reserved,
            sorted(state.reservations.items()),
            sorted(state.counters.items()),
            state.ids.counter,
            next_deadline(state),
        )
    )


@dataclass
class MRequest:
    """An admitted advertisement as the model saw it."""

    ad: AdvertisementReceived
    admitted: Now
    arrival: int
    price: float = 0.0
    resources: Resources | None = None
    score: float = 0.0


@dataclass
class MLease:
    """A lease as the model saw it: from the offer, renewals and job results."""

    owner: str
    resources: Resources
    expiry: float
    accepted: bool = False
    draining: bool = False
    job: str | None = None
    #: What the owner is told about the lease once it has ended (why draining began, if it did).
    ended_reply: str = ""


@dataclass
class MJob:
    """A job the core asked to start, with what the (simulated) executor has reported."""

    lease: str
    owner: str
    reply_to: int
    created: float
    proc: str = "pending"  # pending -> alive -> gone, from the shell's side
    answered: bool = False
    started: bool = False
    stopped: bool = False
    stopped_for_start: bool = False
    report_deadline: float = math.inf


class WorkerMachine(RuleBasedStateMachine):
    """Random inputs to the pure core; a reference model predicts and checks every step."""

    leases = Bundle("leases")
    job_ids = Bundle("job_ids")
    last: WorkerMachine | None = None

    # -- setup ----------------------------------------------------------------------------

    @initialize(
        strategy=st.sampled_from(["whole", "flexible"]),
        capacity=st.sampled_from(CAPACITIES),
        prices=st.sampled_from(PRICES),
        timings=st.sampled_from(TIMINGS),
        window_limit=st.sampled_from([100, 100, 3, 1]),
        max_leases=st.sampled_from([1024, 1024, 2]),
        max_pending=st.sampled_from([8, 8, 1]),
        seed=st.binary(min_size=16, max_size=16),
        via_library=st.booleans(),
    )
    def start(
        self,
        strategy,
        capacity,
        prices,
        timings,
        window_limit,
        max_leases,
        max_pending,
        seed,
        via_library,
    ):
        """A fresh worker under a random policy (strategy, capacity, price/floor) and seed."""
        price, floor = prices
        self.policy = Policy(
            capacity=capacity,
            executors=EXECUTORS,
            offer=Offer(price=price, floor=floor, strategy=strategy),
            timings=msgspec.structs.replace(timings, window_limit=window_limit),
            max_leases=max_leases,
            max_pending_offers=max_pending,
        )
        self.seed = seed
        WorkerMachine.last = self  # the example Hypothesis ran last: saved as a log on failure
        self.timings = self.policy.timings
        self.capacity = micro(capacity)
        # Either engine path (table or `transitions` library); replay uses both.
        self.engines = (
            (library_engine(), engine()) if via_library else (engine(), library_engine())
        )
        self.state = initial_state(self.engines[0], self.policy, seed)
        self.t = 0.0
        self.now = at(0.0)
        self.last_mono = -math.inf
        self.inputs: list[tuple[Now, Event]] = []
        self.outputs: list[str] = []
        self.reply_seq = 0
        self.fresh = 0
        self.job_names = 0
        # the reference model
        self.requests: dict[str, MRequest] = {}
        self.seen: dict[str, float] = {}
        self.arrivals = 0
        self.window_closes = math.inf
        self.m_leases: dict[str, MLease] = {}
        #: The offer lifetime each offered request was granted (what it asked, bounded).
        self.lifetimes: dict[str, float] = {}
        #: Ended leases, oldest first: (owner, what a late renewal or dispatch of it is told).
        self.m_ended: dict[str, tuple[str, str]] = {}
        self.m_jobs: dict[str, MJob] = {}
        self.released: set[str] = set()
        self.ids: set[str] = set()
        self.offers_pending: list[str] = []
        self.acks_pending: list[tuple[str, str]] = []
        self.accepting = True
        self.shutdown_at = math.inf
        self.announced = False
        self.offers = 0
        # scheduler -> (offers in a row it let lapse, its backoff's end or its last lapse)
        self.lapses: dict[str, tuple[int, float]] = {}
        self.notices_due = 0

    # -- the driver -----------------------------------------------------------------------

    def _reply_to(self) -> int:
        """A fresh reply token."""
        self.reply_seq += 1
        return self.reply_seq

    def _lease_status(self, lease_id: str) -> str:
        """What the model says the lease is at self.now, before the step runs."""
        lease = self.m_leases.get(lease_id)
        if lease is None:
            return "gone"
        if lease.draining:
            return "draining"
        if self.now.mono >= lease.expiry:
            return "draining" if lease.job is not None else "gone"
        return "active" if lease.accepted else "offered"

    def _job_live(self, job_id: str) -> bool:
        """The job is still live at self.now (its report deadline has not passed)."""
        job = self.m_jobs.get(job_id)
        return job is not None and self.now.mono < job.report_deadline

    def _lifetime(self, asked: float) -> float:
        """How long an offer stays open: the ad's ask up to the maximum; else the default."""
        if math.isfinite(asked) and asked > 0:
            return min(asked, self.timings.max_offer_timeout)
        return self.timings.offer_timeout

    def _gone(self, lease_id: str, peer: str) -> str:
        """The answer about a lease the worker no longer holds: its owner is told why it ended
        (it may end in this very step, at its expiry); anyone else, ``unknown_lease``."""
        lease = self.m_leases.get(lease_id)
        if lease is not None:  # past its expiry: the step releases it before the request
            ended = (lease.owner, "lease_expired" if lease.accepted else "offer_expired")
        else:
            ended = self.m_ended.get(lease_id, ("", ""))
        return ended[1] if ended[0] == peer and ended[1] else "unknown_lease"

    def _predict(self, event: Event) -> str | None:
        """The expected answer to a renewal or dispatch ("renewed"/"start" or a reason)."""
        if isinstance(event, RenewRequested):
            status = self._lease_status(event.lease_id)
            if status == "gone":
                return self._gone(event.lease_id, event.peer)
            if status == "draining":
                return "lease_ending"
            if event.peer != self.m_leases[event.lease_id].owner:
                return "not_owner"
            return "renewed"
        if isinstance(event, DispatchRequested):
            status = self._lease_status(event.lease_id)
            if status == "gone":
                return self._gone(event.lease_id, event.peer)
            if status == "draining":
                return "lease_ending"
            if status == "offered":
                return "lease_not_accepted"
            lease = self.m_leases[event.lease_id]
            if event.peer != lease.owner:
                return "not_owner"
            if lease.job is not None:
                return "lease_busy"
            if self._job_live(event.job_id):
                return "duplicate_job"
            spec = configured(event.executor)
            if spec is None:
                return "executor_not_configured"
            if RUNTIME[spec.cls] != spec.runtime:
                return "executor_runtime_mismatch"
            return "start"
        return None

    def _expect_admitted(self, event: AdvertisementReceived) -> bool:
        """The advertisement will create a request (not a duplicate, node accepting)."""
        rid = event.request_id
        if rid in self.requests and self.now.mono < self.window_closes:
            return False  # held in a window that stays open at this instant
        if rid in self.seen and self.seen[rid] > self.last_mono:
            return False
        return self.accepting

    def _feed(self, event: Event) -> list[str]:
        """Step the core at self.t, check the step against the model; return new lease ids."""
        self.now = now = at(self.t)
        expected = self._predict(event)
        admitted = (
            self._expect_admitted(event) if isinstance(event, AdvertisementReceived) else None
        )
        self.inputs.append((now, event))
        out = step(self.state, event, now)  # any exception is a failure
        self.outputs.append(repr(out.effects))
        self.last_mono = now.mono
        offers = {e.lease_id: e for e in out.effects if isinstance(e, SendOffer)}
        self._check_trace(event, out.trace, offers, admitted)
        new = self._check_effects(event, out.effects, expected)
        self._apply_input(event)
        return new

    # -- checking the trace ---------------------------------------------------------------

    def _filter(self, req: MRequest) -> str | None:
        """The model's filter chain, in the order machines/request.toml declares it."""
        ad, offer = req.ad, self.policy.offer
        if not (0.0 <= ad.bid < math.inf):
            return "invalid_bid"
        requested = micro(ad.resources)
        if requested is None:
            return "invalid_resources"
        expires = req.admitted.mono + (ad.expires_wall - req.admitted.wall)
        if not (expires > self.now.mono):
            return "expired"
        if any(configured(ref) is None for ref in ad.executors):
            return "unsupported_executor"
        standing = self.lapses.get(ad.scheduler)
        if standing is not None and self.now.mono < standing[1]:
            return "scheduler_backoff"
        if ad.bid < offer.floor:
            return "below_floor"
        if offer.strategy == "flexible" and ad.bid < offer.price:
            return "below_price"
        if not fits(requested, self.capacity):
            return "exceeds_capacity"
        if offer.strategy == "flexible" and requested == ZERO:
            return "empty_request"
        if offer.strategy == "whole":
            req.resources, req.price = self.capacity, max(ad.bid, offer.price)
        else:
            req.resources, req.price = requested, ad.bid
        g, c, m, s = req.resources
        weighted = (25.0 * g + 1.0 * c + 0.1 * m + 0.01 * s) / MICRO
        req.score = req.price / weighted if weighted > 0 else 0.0
        return None

    def _pending_offers(self, scheduler: str) -> int:
        """Offers the model's scheduler holds unaccepted (expired ones are gone already)."""
        return sum(
            1
            for lease in self.m_leases.values()
            if lease.owner == scheduler and not lease.accepted and not lease.draining
        )

    def _lapse(self, scheduler: str) -> None:
        """The model's count of offers a scheduler let lapse, and its backoff."""
        now = self.now.mono
        lapses, until = self.lapses.pop(scheduler, (0, now))
        if now - until > self.timings.backoff_max:
            lapses = 0
        lapses += 1
        backoff = 0.0
        over = lapses - self.policy.lapses_before_backoff
        if over >= 0:
            backoff = min(self.timings.backoff_base * 2.0**over, self.timings.backoff_max)
            self.notices_due += 1
        self.lapses[scheduler] = (lapses, now + backoff)

    def _reserved(self) -> Resources:
        """What the model's live leases hold."""
        total = ZERO
        for lease in self.m_leases.values():
            total = add(total, lease.resources)
        return total

    def _check_trace(self, event, trace, offers, admitted) -> None:
        """Walk the step's transitions in order: check each for legality, update the model."""
        specs = engine().specs
        now = self.now.mono
        created = False
        last_rank: tuple[float, int] | None = None
        before_create: tuple[Resources, int] | None = None
        self.drained_now: set[str] = set()
        for kind, key, src, ev, dst, idx in trace:
            assert src not in specs[kind].terminal, f"{kind} {key} left terminal {src}"
            if kind == "request":
                if ev == "created":
                    assert isinstance(event, AdvertisementReceived)
                    assert key == event.request_id
                    created = True
                    self.arrivals += 1
                    self.requests[key] = MRequest(event, self.now, self.arrivals)
                    window = self.policy.dedupe_window
                    forget = now + window
                    expires = now + (event.expires_wall - self.now.wall)
                    if expires == expires:
                        forget = max(now, min(expires, forget))
                    self.seen[key] = forget
                elif ev == "batch_closed":
                    last_rank = None
                    effect = specs[kind].transitions[idx].effects[0]
                    reason = self._filter(self.requests[key])
                    if reason is None:
                        assert dst == "ranked", (key, effect)
                    else:
                        assert str(effect) == f"decline({reason})", (key, str(effect), reason)
                elif ev == "reserve":
                    req = self.requests[key]
                    rank = (-req.score, req.arrival)
                    assert last_rank is None or last_rank <= rank, "flush out of rank order"
                    last_rank = rank
                    pending = self._pending_offers(req.ad.scheduler)
                    if dst == "offered":
                        assert before_create is not None
                        free, count = before_create
                        assert fits(req.resources, free)
                        assert count < self.policy.max_leases
                        assert pending - 1 < self.policy.max_pending_offers
                        before_create = None
                    else:
                        free = add(self.capacity, self._reserved(), -1)
                        full = len(self.m_leases) >= self.policy.max_leases
                        reason = str(specs[kind].transitions[idx].effects[0])
                        if full:
                            assert reason == "decline(too_many_leases)"
                        elif pending >= self.policy.max_pending_offers:
                            assert reason == "decline(too_many_pending_offers)"
                        else:
                            assert reason == "decline(insufficient_resources)"
                            assert not fits(req.resources, free)
                elif ev == "window_discarded":
                    assert isinstance(event, ShutdownRequested)
                if dst in specs[kind].terminal:
                    del self.requests[key]
            elif kind == "lease":
                self._check_lease_entry(event, key, src, ev, dst, offers)
                if ev == "created":
                    before_create = self._before_create
            elif kind == "job":
                self._check_job_entry(event, key, src, ev, dst)
            elif kind == "batch" and dst is not None and dst != src:
                self.window_closes = now + self.timings.window_wait if dst == "open" else math.inf
        if admitted is not None:
            assert created == admitted, f"admission of {event.request_id}: {created}"

    def _check_lease_entry(self, event, key, src, ev, dst, offers) -> None:
        """A lease is created from an offer, drains or is released only for a legal reason."""
        now = self.now.mono
        if src == "":
            if ev == "created":
                assert key not in self.ids, f"id {key} reused"
                assert key not in self.released, f"released id {key} reused"
                self.ids.add(key)
                offer = offers[key]
                req = self.requests[offer.request_id]
                assert req.resources is not None
                assert offer.resources == amounts_of(req.resources)
                assert offer.price == req.price
                assert offer.scheduler == req.ad.scheduler
                self._before_create = (
                    add(self.capacity, self._reserved(), -1),
                    len(self.m_leases),
                )
                self.m_leases[key] = MLease(
                    offer.scheduler, req.resources, now + self._lifetime(req.ad.offer_lifetime)
                )
                self.lifetimes[offer.request_id] = self._lifetime(req.ad.offer_lifetime)
            return  # a rejection of an unknown or released lease
        assert key not in self.released, f"released lease {key} moved again"
        lease = self.m_leases[key]
        if dst is None or ev == "renew_requested" or (dst == src and ev != "job_detached"):
            return  # ignored, refused, or renewed (checked against the reply)
        if ev == "job_detached" and dst == "active":
            assert self._ended_job(event) == lease.job
            lease.job = None
            return
        if dst == "draining":
            if ev == "lease_expired":
                assert lease.accepted
                assert now >= lease.expiry
                assert lease.job is not None
            else:
                assert ev == "shutdown"
                assert isinstance(event, ShutdownRequested)
            lease.draining = True
            lease.ended_reply = "lease_expired" if ev == "lease_expired" else "shutting_down"
            self.drained_now.add(key)
            return
        assert dst == "released", (src, ev, dst)
        if ev == "offer_expired":
            assert not lease.accepted
            assert now >= lease.expiry
            self._lapse(lease.owner)
        elif ev == "lease_expired":
            assert lease.accepted
            assert now >= lease.expiry
            assert lease.job is None
        elif ev == "offer_failed":
            assert isinstance(event, OfferFailed)
            assert event.lease_id == key
            self._lapse(lease.owner)
        elif ev == "shutdown":
            assert isinstance(event, ShutdownRequested)
            assert lease.job is None
        else:
            assert ev in ("job_ended", "job_detached"), ev
            assert lease.job is not None
            assert self._ended_job(event) == lease.job
        if lease.draining:
            reply = lease.ended_reply
        else:
            reply = {
                "offer_expired": "offer_expired",
                "offer_failed": "offer_expired",
                "lease_expired": "lease_expired",
                "shutdown": "shutting_down",
            }.get(ev, "job_ended")
        self.m_ended[key] = (lease.owner, reply)
        while len(self.m_ended) > self.policy.ended_lease_memory:
            del self.m_ended[next(iter(self.m_ended))]
        del self.m_leases[key]
        self.released.add(key)

    @staticmethod
    def _ended_job(event: Event) -> str | None:
        """The job whose processes this input reports gone, if any."""
        if isinstance(event, JobExited | JobStartFailed):
            return event.job_id
        return None

    def _check_job_entry(self, event, key, src, ev, dst) -> None:
        """A job moves only on its own results or a due deadline, and drops only when gone."""
        now = self.now.mono
        if ev == "created":
            assert isinstance(event, DispatchRequested)
            assert event.job_id == key
            return
        job = self.m_jobs[key]
        if ev == "job_started":
            assert isinstance(event, JobStarted)
            assert event.job_id == key
        elif ev in ("job_exited", "job_start_failed"):
            assert self._ended_job(event) == key
        elif ev in ("status_delivered", "status_failed"):
            assert isinstance(event, StatusDelivered | StatusFailed)
            assert event.job_id == key
        elif ev == "start_overdue":
            assert now >= job.created + self.timings.start_timeout
        elif ev == "report_overdue":
            assert now >= job.report_deadline
        elif ev == "lease_expired" and dst is not None:
            assert job.lease in self.drained_now, "job cancelled without losing its lease"
        elif ev == "shutdown":
            assert isinstance(event, ShutdownRequested)
        if dst in engine().specs["job"].terminal:
            gone = job.proc == "gone" or self._ended_job(event) == key
            assert gone, f"job {key} dropped while its processes may live"
            del self.m_jobs[key]

    # -- checking the effects -------------------------------------------------------------

    def _check_effects(self, event, effects, expected) -> list[str]:
        """Check every effect against the model and the input; return the new lease ids."""
        now = self.now
        new: list[str] = []
        answered = 0
        started = False
        for effect in effects:
            if isinstance(effect, SendOffer):
                assert self.accepting, "offer while shutting down"
                assert effect.request_id not in self.requests  # offered, so dropped
                lifetime = self.lifetimes[effect.request_id]
                assert effect.expires_wall == now.wall + lifetime
                if effect.lease_id not in self.m_leases:
                    # A window due at the very instant of a shutdown flushes first; the
                    # shutdown then releases the fresh lease in the same step.
                    assert isinstance(event, ShutdownRequested)
                    assert effect.lease_id in self.released
                self.offers += 1
                self.offers_pending.append(effect.lease_id)
                new.append(effect.lease_id)
            elif isinstance(effect, ReplyRenewed | ReplyRenewFailed):
                assert isinstance(event, RenewRequested), effect
                assert effect.reply_to == event.reply_to
                assert effect.lease_id == event.lease_id
                answered += 1
                if isinstance(effect, ReplyRenewed):
                    assert expected == "renewed"
                    lease = self.m_leases[event.lease_id]
                    assert event.peer == lease.owner, "renewed for a non-owner"
                    self.lapses.pop(lease.owner, None)  # forgiven
                    lease.accepted = True
                    lease.expiry = now.mono + self.timings.lease_timeout
                    assert math.isclose(
                        effect.expires_wall, now.wall + self.timings.lease_timeout, abs_tol=1e-6
                    )
                else:
                    assert effect.reason == expected, (effect.reason, expected)
            elif isinstance(effect, StartJob):
                assert isinstance(event, DispatchRequested)
                assert expected == "start", expected
                assert effect.job_id == event.job_id
                assert effect.lease_id == event.lease_id
                lease = self.m_leases[event.lease_id]
                assert lease.accepted, "job on an unaccepted lease"
                assert event.peer == lease.owner, "job for a non-owner"
                assert effect.executor == configured(event.executor)
                assert effect.spec == event.spec
                assert effect.resources == amounts_of(lease.resources)
                assert effect.work_dir_id not in self.ids, "work dir id reused"
                self.ids.add(effect.work_dir_id)
                previous = self.m_jobs.get(effect.job_id)
                assert previous is None, "a second job with a live job's id"
                self.m_jobs[effect.job_id] = MJob(
                    event.lease_id, lease.owner, event.reply_to, now.mono
                )
                lease.job = effect.job_id
                started = True
            elif isinstance(effect, ReplyDispatchFailed):
                if isinstance(event, DispatchRequested) and effect.reply_to == event.reply_to:
                    assert effect.reason == expected, (effect.reason, expected)
                    answered += 1
                else:
                    self._check_deferred_failure(event, effect)
            elif isinstance(effect, ReplyDispatched):
                job = self.m_jobs[effect.job_id]
                assert isinstance(event, JobStarted)
                assert event.job_id == effect.job_id
                assert not job.answered
                assert effect.reply_to == job.reply_to
                assert job.lease == effect.lease_id
                job.answered = job.started = True
                expiry = self.m_leases[job.lease].expiry
                wall = now.wall + (expiry - now.mono)
                assert math.isclose(effect.expires_wall, wall, abs_tol=1e-6)
            elif isinstance(effect, StopJob):
                job = self.m_jobs[effect.job_id]
                assert job.proc != "gone", "stop sent for a job that is gone"
                if effect.force:
                    assert job.stopped, "forced stop without a first stop"
                else:
                    assert not job.stopped, "a second graceful stop"
                    start_overdue = now.mono >= job.created + self.timings.start_timeout
                    assert job.lease in self.drained_now or start_overdue, "needless stop"
                job.stopped = True
            elif isinstance(effect, SendJobStatus):
                self._check_status(event, effect)
            elif isinstance(effect, Notice):
                assert effect.kind == "scheduler_backoff", effect
                assert self.notices_due > 0, "a backoff notice without a lapse past the limit"
                self.notices_due -= 1
            elif isinstance(effect, NodeStopped):
                shutting_down = isinstance(event, ShutdownRequested) or not self.accepting
                assert shutting_down
                assert not self.announced, "NodeStopped twice"
                self.announced = True
                if effect.reason == "drained":
                    assert not self.state.records["lease"]
                    assert not self.state.records["job"]
                else:
                    assert now.mono >= self.shutdown_at + self.timings.shutdown_timeout
            else:  # pragma: no cover - a new effect type needs a check here
                raise AssertionError(f"unchecked effect {effect!r}")
        assert self.notices_due == 0, "a backoff without its notice"
        if isinstance(event, RenewRequested):
            assert answered == 1, "a renewal must be answered exactly once, at once"
        if isinstance(event, DispatchRequested):
            assert answered + started == 1, "a dispatch is refused at once or starts a job"
            if not started:
                assert expected != "start", "a valid dispatch was refused"
        return new

    def _check_deferred_failure(self, event: Event, effect: ReplyDispatchFailed) -> None:
        """A deferred dispatch refusal answers a started job's pending reply, for a real cause."""
        job = self.m_jobs.get(effect.job_id)
        if job is None:  # a job that failed to start is dropped in the same step
            assert isinstance(event, JobStartFailed)
            assert effect.reason == "start_failed"
            return
        assert not job.answered
        assert effect.reply_to == job.reply_to
        job.answered = True
        reason = effect.reason
        if reason == "exited_during_start":
            assert isinstance(event, JobExited)
            assert event.job_id == effect.job_id
        elif reason == "start_timeout":
            assert self.now.mono >= job.created + self.timings.start_timeout
            job.stopped_for_start = True
        elif reason == "shutting_down":
            assert isinstance(event, ShutdownRequested)
        else:
            assert reason == "lease_expired", reason
            assert job.lease in self.drained_now

    def _check_status(self, event: Event, effect: SendJobStatus) -> None:
        """Status goes to the dispatcher; the final one follows the exit and names the outcome."""
        job = self.m_jobs[effect.job_id]
        assert effect.scheduler == job.owner, "status sent to someone else"
        self.acks_pending.append((effect.job_id, effect.status))
        if effect.status == "running":
            assert isinstance(event, JobStarted)
            assert event.job_id == effect.job_id
            return
        assert self._ended_job(event) == effect.job_id, "final status before the job ended"
        job.report_deadline = self.now.mono + self.timings.report_timeout
        if isinstance(event, JobExited):
            assert effect.exit_code == event.exit_code
        clean = isinstance(event, JobExited) and event.exit_code == 0
        if job.stopped:
            expected = "failed" if job.stopped_for_start else "cancelled"
        else:
            expected = "finished" if clean and job.started else "failed"
        assert effect.status == expected, (effect.status, expected)

    def _apply_input(self, event: Event) -> None:
        """What the shell now knows about job processes."""
        if isinstance(event, JobStarted):
            job = self.m_jobs.get(event.job_id)
            if job is not None and job.proc == "pending":
                job.proc = "alive"
        elif isinstance(event, JobStartFailed | JobExited):
            job = self.m_jobs.get(event.job_id)
            if job is not None:
                job.proc = "gone"
        elif isinstance(event, ShutdownRequested) and self.accepting:
            self.accepting = False
            self.shutdown_at = self.now.mono

    # -- rules: remote inputs -------------------------------------------------------------

    @rule(
        target=leases,
        rid=st.sampled_from([f"ad-{i}" for i in range(6)]) | st.none(),
        scheduler=st.sampled_from(PEERS),
        resources=st.one_of(AMOUNTS, AMOUNTS, HOSTILE_AMOUNTS, st.just(Amounts())),
        executors=EXECUTOR_LISTS,
        bid=BIDS,
        expires_in=EXPIRES_IN,
        lifetime=st.sampled_from([0.0, 0.0, 0.0, 1.0, 2.0, 60.0, -1.0, math.nan, math.inf]),
    )
    def advertise(self, rid, scheduler, resources, executors, bid, expires_in, lifetime):
        """A scheduler advertises (valid, malformed, stale or duplicate); offers are checked."""
        if rid is None:
            self.fresh += 1
            rid = f"fresh-{self.fresh}"
        ad = AdvertisementReceived(
            request_id=rid,
            scheduler=scheduler,
            reply_address="tcp://127.0.0.1:7000",
            resources=resources,
            executors=executors,
            bid=bid,
            expires_wall=at(self.t).wall + expires_in,
            offer_lifetime=lifetime,  # asked for: 0 is the default, the rest bounded
        )
        return multiple(*self._feed(ad))

    @rule(
        target=leases,
        scheduler=st.sampled_from(PEERS),
        cpu=st.sampled_from([0.25, 0.5, 1.0, 2.0]),
        premium=st.sampled_from([0.0, 0.0, 0.01, 30.0]),
    )
    def advertise_acceptable(self, scheduler, cpu, premium):
        """A well-formed advertisement at or above the ask, likely to get an offer."""
        self.fresh += 1
        offer = self.policy.offer
        ad = AdvertisementReceived(
            request_id=f"good-{self.fresh}",
            scheduler=scheduler,
            reply_address="tcp://127.0.0.1:7000",
            resources=Amounts(cpu=cpu, memory=cpu / 2),
            executors=(TRAIN,),
            bid=max(offer.price, offer.floor) + premium,
            expires_wall=at(self.t).wall + 5.0,
        )
        return multiple(*self._feed(ad))

    @rule(target=leases, n=st.integers(2, 8), bid=BIDS, cpu=GOOD_AMOUNT)
    def advertise_burst(self, n, bid, cpu):
        """A burst of fresh advertisements at one instant (fills small windows)."""
        new: list[str] = []
        for _ in range(n):
            self.fresh += 1
            ad = AdvertisementReceived(
                request_id=f"burst-{self.fresh}",
                scheduler=PEERS[self.fresh % 3],
                reply_address="tcp://127.0.0.1:7000",
                resources=Amounts(cpu=cpu, memory=0.25),
                executors=(TRAIN,),
                bid=bid,
                expires_wall=at(self.t).wall + 5.0,
            )
            new += self._feed(ad)
        return multiple(*new)

    @rule(
        target=leases,
        lease=leases | st.just(UNKNOWN_LEASE),
        peer=st.sampled_from(["owner", "owner", *PEERS]),
    )
    def renew(self, lease, peer):
        """A peer renews a lease (owner, stranger, or an unknown id); the reply is predicted."""
        if peer == "owner":
            peer = self.m_leases[lease].owner if lease in self.m_leases else SCHED
        event = RenewRequested(lease_id=lease, peer=peer, reply_to=self._reply_to())
        return multiple(*self._feed(event))

    @precondition(lambda self: bool(self.m_leases))
    @rule(target=leases)
    def owners_renew_everything(self):
        """Every scheduler renews every lease it holds, at one instant."""
        new: list[str] = []
        holders = sorted((key, lease.owner) for key, lease in self.m_leases.items())
        for lease_id, owner in holders:
            new += self._feed(RenewRequested(lease_id, owner, self._reply_to()))
        return multiple(*new)

    @precondition(lambda self: self.accepting)
    @rule(
        target=leases,
        cpu=st.sampled_from([0.25, 1.0, 2.0]),
        wait=st.sampled_from([True, True, True, False]),
        stranger=st.sampled_from([False, False, False, True]),
    )
    def acquire_lease(self, cpu, wait, stranger=False):
        """A scheduler advertises, the window closes (or not yet), and it accepts what it got."""
        new = list(self.advertise_acceptable(SCHED, cpu, 0.0).values)
        if wait and self.state.records["batch"]["batch"].phase == "open":
            self.t = max(self.t, next_deadline(self.state))
            new += self._feed(Tick())
        for lease_id in new:
            if lease_id in self.m_leases:
                owner = self.m_leases[lease_id].owner
                if stranger:  # someone else tries to grab the offer first
                    self._feed(RenewRequested(lease_id, OTHER, self._reply_to()))
                self._feed(RenewRequested(lease_id, owner, self._reply_to()))
        return multiple(*new)

    @precondition(lambda self: any(not m.accepted for m in self.m_leases.values()))
    @rule(target=leases)
    def schedulers_accept_offers(self):
        """Each scheduler accepts the offers it holds (its first renewal), at one instant."""
        new: list[str] = []
        offered = sorted((k, m.owner) for k, m in self.m_leases.items() if not m.accepted)
        for lease_id, owner in offered:
            new += self._feed(RenewRequested(lease_id, owner, self._reply_to()))
        return multiple(*new)

    @precondition(lambda self: self.job_names < 4)
    @rule(target=job_ids)
    def new_job_id(self):
        """A scheduler picks a job id (a few, reused on purpose by later dispatches)."""
        self.job_names += 1
        self.fresh += 1
        return f"job-{self.fresh}"

    @rule(
        target=leases,
        lease=leases | st.just(UNKNOWN_LEASE),
        job_id=job_ids,
        peer=st.sampled_from(["owner", "owner", "owner", *PEERS]),
        executor=st.sampled_from(
            [TRAIN, TRAIN, AGGREGATE, MISCONFIGURED, UNKNOWN_NAME, WRONG_CLASS]
        ),
    )
    def dispatch(self, lease, job_id, peer, executor):
        """A peer dispatches a job under a lease; refusals and starts are predicted."""
        if peer == "owner":
            peer = self.m_leases[lease].owner if lease in self.m_leases else SCHED
        event = DispatchRequested(
            job_id=job_id,
            lease_id=lease,
            peer=peer,
            executor=executor,
            spec='{"model": "x"}',
            reply_to=self._reply_to(),
        )
        return multiple(*self._feed(event))

    @precondition(lambda self: bool(self.m_leases) or self.accepting)
    @rule(
        target=leases,
        data=st.data(),
        job_id=st.one_of(job_ids, st.none(), st.just(REUSE)),
        executor=st.sampled_from([TRAIN, TRAIN, TRAIN, AGGREGATE, MISCONFIGURED, UNKNOWN_NAME]),
        then=st.lists(st.sampled_from(JOB_STORY), max_size=6),
    )
    def owner_dispatches(self, data, job_id, executor, then):
        """The owner of a lease (acquired first if need be) dispatches a job; its story follows."""
        new: list[str] = []
        free_lease = any(m.accepted and m.job is None for m in self.m_leases.values())
        if not free_lease and self.accepting:
            new += self.acquire_lease(1.0, wait=True).values
        if not self.m_leases:
            return multiple(*new)
        free = sorted(k for k, m in self.m_leases.items() if m.accepted and m.job is None)
        lease_id = data.draw(st.sampled_from(free or sorted(self.m_leases)))
        if job_id == REUSE and self.m_jobs:
            job_id = data.draw(st.sampled_from(sorted(self.m_jobs)))  # a live job's id
        elif job_id in (None, REUSE):
            self.fresh += 1
            job_id = f"job-{self.fresh}"
        event = DispatchRequested(
            job_id=job_id,
            lease_id=lease_id,
            peer=self.m_leases[lease_id].owner,
            executor=executor,
            spec="{}",
            reply_to=self._reply_to(),
        )
        new += self._feed(event)
        for action in then:
            new += self._job_story_step(job_id, lease_id, action)
        return multiple(*new)

    def _job_story_step(self, job_id: str, lease_id: str, action: str) -> list[str]:
        """One step of a job's story, when it applies to where the job now is (else nothing)."""
        job = self.m_jobs.get(job_id)
        proc = job.proc if job is not None else "gone"
        event: Event | None = None
        if action == "start" and proc == "pending":
            event = JobStarted(job_id)
        elif action == "start_failed" and proc == "pending":
            event = JobStartFailed(job_id, "no such file")
        elif action in ("exit_0", "exit_1") and proc != "gone":
            event = JobExited(job_id, int(action[-1]))
        elif action in ("ack_running", "ack_final", "ack_failed"):
            wanted = [a for a in self.acks_pending if a[0] == job_id]
            if action == "ack_running":
                wanted = [a for a in wanted if a[1] == "running"]
            else:
                wanted = [a for a in wanted if a[1] in FINAL]
            if wanted:
                self.acks_pending.remove(wanted[0])
                if action == "ack_failed":
                    event = StatusFailed(job_id, wanted[0][1], "unreachable")
                else:
                    event = StatusDelivered(job_id, wanted[0][1])
        elif action == "renew" and lease_id in self.m_leases:
            event = RenewRequested(lease_id, self.m_leases[lease_id].owner, self._reply_to())
        elif action == "lease_expires" and lease_id in self.m_leases:
            self.t = max(self.t, self.m_leases[lease_id].expiry)
            event = Tick()
        elif action == "next_deadline" and next_deadline(self.state) < math.inf:
            self.t = max(self.t, next_deadline(self.state))
            event = Tick()
        elif action == "shutdown":
            event = ShutdownRequested()
        return [] if event is None else self._feed(event)

    # -- rules: results of effects --------------------------------------------------------

    @precondition(lambda self: bool(self.offers_pending))
    @rule(target=leases, data=st.data(), delivered=st.booleans())
    def offer_result(self, data, delivered):
        """The shell reports how one offer's delivery went (possibly after the lease ended)."""
        lease_id = self.offers_pending.pop(data.draw(st.integers(0, len(self.offers_pending) - 1)))
        event = OfferDelivered(lease_id) if delivered else OfferFailed(lease_id, "unreachable")
        return multiple(*self._feed(event))

    def _jobs_where(self, *procs: str) -> list[str]:
        """Live jobs whose processes are in one of these shell-side states."""
        return sorted(j for j, m in self.m_jobs.items() if m.proc in procs)

    @precondition(lambda self: bool(self._jobs_where("pending")))
    @rule(target=leases, data=st.data(), ok=st.sampled_from([True, True, False]))
    def job_start_result(self, data, ok):
        """The executor reports that a job it was asked to start started, or failed to."""
        job_id = data.draw(st.sampled_from(self._jobs_where("pending")))
        event = JobStarted(job_id) if ok else JobStartFailed(job_id, "spawn failed")
        return multiple(*self._feed(event))

    @precondition(lambda self: bool(self._jobs_where("pending")))
    @rule(target=leases)
    def executor_starts_everything(self):
        """The executor reports every pending job as started, one report at a time."""
        new: list[str] = []
        for job_id in self._jobs_where("pending"):
            new += self._feed(JobStarted(job_id))
        return multiple(*new)

    @precondition(lambda self: bool(self._jobs_where("pending", "alive")))
    @rule(
        target=leases,
        data=st.data(),
        code=st.sampled_from([0, 0, 1, 137, -9, -15]),
        ack=st.sampled_from([None, "delivered", "failed"]),
    )
    def job_exits(self, data, code, ack):
        """A started (or starting) job's processes are all gone; the report may be answered."""
        job_id = data.draw(st.sampled_from(self._jobs_where("pending", "alive")))
        new = self._feed(JobExited(job_id, code))
        final = [a for a in self.acks_pending if a[0] == job_id and a[1] in FINAL]
        if ack is not None and final:
            self.acks_pending.remove(final[0])
            status = final[0][1]
            result = (
                StatusDelivered(job_id, status)
                if ack == "delivered"
                else StatusFailed(job_id, status, "unreachable")
            )
            new += self._feed(result)
        return multiple(*new)

    @precondition(lambda self: any(m.stopped and m.proc != "gone" for m in self.m_jobs.values()))
    @rule(target=leases, data=st.data())
    def stopped_job_exits(self, data):
        """A job the core asked to stop is finally gone (signal exit)."""
        stopped = sorted(j for j, m in self.m_jobs.items() if m.stopped and m.proc != "gone")
        job_id = data.draw(st.sampled_from(stopped))
        return multiple(*self._feed(JobExited(job_id, -15)))

    @precondition(lambda self: bool(self.acks_pending))
    @rule(target=leases, data=st.data(), delivered=st.booleans())
    def status_result(self, data, delivered):
        """The scheduler acknowledges a status report, or its delivery fails."""
        job_id, status = self.acks_pending.pop(
            data.draw(st.integers(0, len(self.acks_pending) - 1))
        )
        event = (
            StatusDelivered(job_id, status)
            if delivered
            else StatusFailed(job_id, status, "unreachable")
        )
        return multiple(*self._feed(event))

    # -- rules: time and commands ---------------------------------------------------------

    @rule(target=leases, dt=DT)
    def advance(self, dt):
        """Time passes by dt; the shell ticks."""
        self.t += dt
        return multiple(*self._feed(Tick()))

    @rule(target=leases, dt=st.sampled_from([1.0, 5.0, 9.5, 20.0, 60.0, 120.0]))
    def time_passes_while_owners_renew(self, dt):
        """Time passes in steps of under lease_timeout; owners renew accepted leases before each."""
        new: list[str] = []
        end = self.t + dt
        while self.t < end:
            holders = sorted((k, m.owner) for k, m in self.m_leases.items() if m.accepted)
            for lease_id, owner in holders:
                new += self._feed(RenewRequested(lease_id, owner, self._reply_to()))
            self.t = min(end, self.t + 0.95 * self.timings.lease_timeout)
            new += self._feed(Tick())
        return multiple(*new)

    @precondition(lambda self: next_deadline(self.state) < math.inf)
    @rule(offset=st.sampled_from([0.0, 0.0, -1e-6]))
    def clock_to_next_deadline(self, offset):
        """The clock moves to exactly the next deadline (or just before); the next input lands there."""
        self.t = max(self.t, next_deadline(self.state) + offset)

    @precondition(lambda self: next_deadline(self.state) < math.inf)
    @rule(target=leases)
    def tick_at_next_deadline(self):
        """The shell wakes at exactly the next deadline."""
        self.t = max(self.t, next_deadline(self.state))
        return multiple(*self._feed(Tick()))

    @rule(target=leases, coin=st.integers(0, 31))
    def shutdown(self, coin):
        """The operator asks the node to stop (possibly again); most draws just tick instead."""
        busy = any(m.proc != "gone" for m in self.m_jobs.values())
        go = coin == 0 or (busy and coin < 4)
        return multiple(*self._feed(ShutdownRequested() if go else Tick()))

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def ledger_balances(self):
        """Reserved fits capacity, equals the reservations and the live leases' resources."""
        state = self.state
        assert fits(state.reserved, state.capacity), "double booked"
        assert all(x >= 0 for x in state.reserved)
        total = ZERO
        for amount in state.reservations.values():
            total = add(total, amount)
        assert total == state.reserved
        leases = state.records["lease"]
        assert set(state.reservations) == set(leases)
        total = ZERO
        for lease in leases.values():
            total = add(total, lease.resources)
            assert state.reservations[lease.key] == lease.resources
        assert total == state.reserved

    @invariant()
    def released_leases_stay_gone(self):
        """A released lease id never comes back as a record or a reservation."""
        assert not self.released & set(self.state.records["lease"])
        assert not self.released & set(self.state.reservations)

    @invariant()
    def jobs_run_only_under_live_leases(self):
        """Starting/running jobs sit on an active lease that names them; cancelling ones too."""
        leases = self.state.records["lease"]
        for job in self.state.records["job"].values():
            if job.phase in ("starting", "running", "cancelling"):
                lease = leases.get(job.lease_id)
                assert lease is not None, f"{job.phase} job {job.key} without a lease"
                assert lease.job_id == job.key
                if job.phase != "cancelling":
                    assert lease.phase == "active", (job.phase, lease.phase)

    @invariant()
    def processes_hold_their_reservation(self):
        """While a job's processes may be alive, its lease's reservation is held."""
        for job in self.m_jobs.values():
            if job.proc != "gone":
                assert job.lease in self.state.reservations, "reservation freed under a job"

    @invariant()
    def deadlines_are_in_the_future(self):
        """Nothing due is left unfired, and next_deadline is the earliest live deadline."""
        live = [rec.deadline for table in self.state.records.values() for rec in table.values()]
        assert all(d > self.now.mono for d in live), "a due deadline did not fire"
        assert next_deadline(self.state) == min(live, default=math.inf)

    @invariant()
    def shutdown_completes(self):
        """Once shutdown was asked and nothing is left, NodeStopped has been announced."""
        records = self.state.records
        idle = not (records["lease"] or records["job"] or records["request"])
        if not self.accepting and idle:
            assert self.announced, "drained but no NodeStopped"

    @invariant()
    def terminal_phases_absorb(self):
        """No live record sits in a terminal phase of its machine."""
        specs = engine().specs
        for kind, table in self.state.records.items():
            for rec in table.values():
                assert rec.phase not in specs[kind].terminal, (kind, rec.key, rec.phase)

    @invariant()
    def model_agrees_with_core(self):
        """The model's leases and jobs are exactly the core's, with the same owners and phases."""
        leases = self.state.records["lease"]
        assert set(leases) == set(self.m_leases)
        for key, model in self.m_leases.items():
            lease = leases[key]
            phase = "draining" if model.draining else "active" if model.accepted else "offered"
            assert lease.phase == phase, (lease.phase, phase)
            assert lease.owner == model.owner
            assert lease.resources == model.resources
            assert lease.job_id == model.job
            if not model.draining:
                assert lease.deadline == model.expiry
        assert set(self.state.records["job"]) == set(self.m_jobs)
        assert set(self.state.records["request"]) == set(self.requests)
        assert self.state.counters["offers"] == self.offers

    # -- replay ---------------------------------------------------------------------------

    def teardown(self):
        """Replaying the inputs from the same seed, on either engine path, reproduces everything."""
        if not getattr(self, "inputs", None) or len(self.inputs) != len(self.outputs):
            return  # nothing ran, or a step raised (that failure is reported already)
        for eng in self.engines:
            state = initial_state(eng, self.policy, self.seed)
            for (now, event), effects in zip(self.inputs, self.outputs, strict=True):
                assert repr(step(state, event, now).effects) == effects, "replay diverged"
            assert snapshot(state) == snapshot(self.state)


class JobLifecycleMachine(WorkerMachine):
    """The same model and checks, without the advertisement noise: most steps drive jobs."""

    def advertise(self, *args: object, **kwargs: object) -> None:
        """Not a rule here."""

    def advertise_burst(self, *args: object, **kwargs: object) -> None:
        """Not a rule here."""

    def advance(self, *args: object, **kwargs: object) -> None:
        """Not a rule here (time moves by deadlines and renewing owners)."""


def save_last_example(path: Path) -> Path | None:
    """Write the inputs of the last example run as an event log; replaying it shows the failure."""
    machine = WorkerMachine.last
    if machine is None or not machine.inputs:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_inputs(
        path,
        WORKER,
        machine.engines[0],
        load_engine(WORKER)[1],
        machine.policy,
        machine.seed,
        machine.inputs,
    )
    return path


TestWorkerMachine = WorkerMachine.TestCase
TestJobLifecycleMachine = JobLifecycleMachine.TestCase


def test_a_failing_example_is_saved_as_a_log_that_replays_to_the_failure(tmp_path: Path) -> None:
    """The saved inputs of a stateful example replay; a crashing input reproduces at its seq."""
    from hypha_sm.log.replay import replay

    machine = WorkerMachine()
    machine.start("flexible", CAPACITIES[0], PRICES[0], TIMINGS[0], 100, 1024, 8, bytes(16), False)
    machine.inputs.append((at(0.0), Tick()))
    machine.inputs.append((at(1.0), JobExited("never-started", 0)))  # a shell bug: core raises
    path = save_last_example(tmp_path / "example.jsonl")
    assert path is not None
    eng, machines_hash = load_engine(WORKER)
    report = replay(path.read_bytes().splitlines(keepends=True), eng, machines_hash, role=WORKER)
    assert report.error is not None
    assert report.error[0] == 2
    assert "never-started" in repr(report.error[1])
