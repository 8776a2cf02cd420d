"""A seeded random walk over the pure core that plays a well-behaved shell and hostile peers.

Peers send anything (valid, malformed, stale, duplicated, from strangers). The shell side keeps
its contract: it reports on offers and jobs only after the core asked, once each, in an order a
real executor could produce. Used to measure transition coverage.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from hypha_sm.core.engine import Engine
from hypha_sm.core.resources import Amounts
from hypha_sm.roles.worker.core.effects import SendJobStatus, SendOffer, StartJob, StopJob
from hypha_sm.roles.worker.core.events import (
    Event,
    JobExited,
    JobOverLimit,
    JobStarted,
    JobStartFailed,
    OfferDelivered,
    OfferFailed,
    ShutdownRequested,
    StatusDelivered,
    StatusFailed,
    StorageLow,
    StorageRecovered,
    Tick,
)
from hypha_sm.roles.worker.core.policy import ExecutorRef, ExecutorSpec, Offer, Policy, Timings
from tests.helpers import OTHER, SCHED, TRAIN, Worker, ad, dispatch, renew

MISCONFIGURED = ExecutorRef(cls="train", name="misconfigured")
UNKNOWN = ExecutorRef(cls="train", name="nope")


def policies() -> list[Policy]:
    executors = (
        ExecutorSpec(cls="train", name="diloco-transformer", runtime="process"),
        ExecutorSpec(cls="aggregate", name="parameter-server", runtime="parameter-server"),
        ExecutorSpec(cls="train", name="misconfigured", runtime="parameter-server"),
    )
    capacity = Amounts(gpu=24, cpu=16, memory=64, storage=500)
    return [
        Policy(
            capacity=capacity,
            executors=executors,
            offer=Offer(price=120, floor=100, strategy="flexible"),
            timings=Timings(window_limit=3),
            max_leases=2,
            max_pending_offers=1,
        ),
        Policy(
            capacity=capacity,
            executors=executors,
            offer=Offer(price=100, floor=100, strategy="flexible"),
            timings=Timings(window_limit=1, start_timeout=5.0, report_timeout=3.0),
        ),
        Policy(capacity=capacity, executors=executors, offer=Offer(price=150, floor=120)),
    ]


@dataclass
class Walk:
    rng: random.Random
    worker: Worker
    offers: list[tuple[str, str]] = field(default_factory=list)  # live (lease id, owner)
    dead: list[str] = field(default_factory=list)  # leases that ended
    unanswered_offers: list[str] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> spawned|started|exited
    stopped: set[str] = field(default_factory=set)
    reports: list[tuple[str, str]] = field(default_factory=list)
    ad_ids: list[str] = field(default_factory=list)
    counter: int = 0
    #: ad, burst, renew, dispatch, offer answer, job result, report answer, shutdown, advance,
    #: disk monitor
    weights: tuple[float, ...] = (30, 2, 40, 24, 12, 40, 16, 1, 35, 2)
    big_jumps: float = 0.2
    invalid_share: float = 0.75
    small_steps: tuple[float, ...] = (0.05, 0.3, 1.0)
    deadline_jumps: float = 0.5

    def feed(self, event: Event, t: float | None = None) -> None:
        out = self.worker.feed(event, t)
        for machine, key, _src, _event, dst, _index in out.trace:
            if machine == "lease" and dst == "released":
                # The scheduler learns of it (a failed renewal); keep a few for late messages.
                self.offers = [o for o in self.offers if o[0] != key]
                self.dead.append(key)
        for effect in out.effects:
            if isinstance(effect, SendOffer):
                self.offers.append((effect.lease_id, effect.scheduler))
                self.unanswered_offers.append(effect.lease_id)
            elif isinstance(effect, StartJob):
                self.jobs[effect.job_id] = "spawned"
            elif isinstance(effect, StopJob):
                self.stopped.add(effect.job_id)
            elif isinstance(effect, SendJobStatus):
                self.reports.append((effect.job_id, effect.status))

    def random_ad(self) -> Event:
        rng = self.rng
        self.counter += 1
        if self.ad_ids and rng.random() < 0.1:
            return ad(rng.choice(self.ad_ids), t=self.worker.t)
        request_id = f"ad-{self.counter}"
        self.ad_ids.append(request_id)
        kind = rng.randrange(9) if rng.random() < self.invalid_share else 9
        t = self.worker.t
        if kind == 0:
            return ad(request_id, bid=math.nan, t=t)
        if kind == 1:
            return ad(request_id, cpu=-1.0, bid=200.0, t=t)
        if kind == 2:
            return ad(request_id, gpu=math.inf, bid=200.0, t=t)
        if kind == 3:
            return ad(request_id, expires_in=-1.0, bid=200.0, t=t)
        if kind == 4:
            return ad(request_id, executors=(UNKNOWN,), bid=200.0, t=t)
        if kind == 5:
            return ad(request_id, bid=50.0, t=t)
        if kind == 6:
            return ad(request_id, bid=110.0, t=t)
        if kind == 7:
            return ad(request_id, cpu=1000.0, bid=200.0, t=t)
        if kind == 8:
            return ad(request_id, cpu=0.0, memory=0.0, bid=200.0, t=t)
        scheduler = SCHED if rng.random() < 0.8 else OTHER
        return ad(
            request_id,
            gpu=rng.choice([0.0, 4.0, 12.0]),
            cpu=rng.choice([1.0, 4.0, 8.0]),
            memory=rng.choice([1.0, 16.0]),
            bid=rng.choice([120.0, 150.0, 200.0]),
            scheduler=scheduler,
            t=t,
        )

    def move(self) -> None:
        actions = (
            lambda: self.feed(self.random_ad()),
            self.burst,
            self.renew_some_lease,
            self.dispatch_on_some_lease,
            self.answer_an_offer,
            self.job_result,
            self.answer_a_report,
            lambda: self.feed(ShutdownRequested()),
            self.advance,
            self.disk_monitor,
        )
        self.rng.choices(actions, weights=self.weights)[0]()

    def disk_monitor(self) -> None:
        """The disk fills or frees up; or a running job is found over its storage."""
        rng = self.rng
        roll = rng.random()
        running = [job for job, phase in self.jobs.items() if phase == "started"]
        if roll < 0.4 and running:
            reason = rng.choice(["storage_exceeded", "disk_full"])
            self.feed(JobOverLimit(rng.choice(running), reason, "12 GB used of 10 GB"))
        elif roll < 0.7:
            self.feed(StorageLow(rng.choice([0, 4096]), "write failed"))
        else:
            self.feed(StorageRecovered(1 << 30))

    def burst(self) -> None:
        for _ in range(self.worker.policy.timings.window_limit):
            self.feed(self.random_ad())

    def pick_offer(self) -> tuple[str, str]:
        # Mostly the newest offer: a scheduler accepts within the 0.5 s offer window.
        if self.rng.random() < 0.7:
            return self.offers[-1]
        return self.rng.choice(self.offers)

    def renew_some_lease(self) -> None:
        rng = self.rng
        if not self.offers:
            return self.advance()
        lease, owner = self.pick_offer()
        peer = owner if rng.random() < 0.85 else OTHER
        if rng.random() < 0.1:
            lease = rng.choice(self.dead) if self.dead else "unknown-lease"
        self.feed(renew(lease, peer=peer))
        return None

    def dispatch_on_some_lease(self) -> None:
        rng = self.rng
        if not self.offers:
            return self.advance()
        lease, owner = self.pick_offer()
        peer = owner if rng.random() < 0.85 else OTHER
        executor = rng.choices([TRAIN, UNKNOWN, MISCONFIGURED], weights=[8, 1, 1])[0]
        if self.jobs and rng.random() < 0.1:
            job_id = rng.choice(list(self.jobs))
        else:
            self.counter += 1
            job_id = f"job-{self.counter}"
        self.feed(dispatch(lease, job_id=job_id, peer=peer, executor=executor))
        return None

    def answer_an_offer(self) -> None:
        rng = self.rng
        if not self.unanswered_offers:
            return self.advance()
        lease = self.unanswered_offers.pop(rng.randrange(len(self.unanswered_offers)))
        self.feed(OfferDelivered(lease) if rng.random() < 0.8 else OfferFailed(lease, "x"))
        return None

    def answer_a_report(self) -> None:
        rng = self.rng
        if not self.reports:
            return self.advance()
        # Mostly the newest report (the scheduler answers promptly), sometimes an old one late.
        index = len(self.reports) - 1 if rng.random() < 0.7 else rng.randrange(len(self.reports))
        job, status = self.reports.pop(index)
        if rng.random() < 0.7:
            self.feed(StatusDelivered(job, status))
        else:
            self.feed(StatusFailed(job, status, "unreachable"))
        return None

    def job_result(self) -> None:
        rng = self.rng
        pending = [job for job, phase in self.jobs.items() if phase != "exited"]
        if not pending:
            return self.advance()
        job = pending[-1] if rng.random() < 0.6 else rng.choice(pending)
        phase = self.jobs[job]
        if phase == "spawned":
            roll = rng.random()
            if roll < 0.7 and job not in self.stopped:
                self.jobs[job] = "started"
                self.feed(JobStarted(job))
            elif roll < 0.85:
                self.jobs[job] = "exited"
                self.feed(JobStartFailed(job, "spawn failed"))
            else:
                self.jobs[job] = "exited"
                self.feed(JobExited(job, rng.choice([0, 1])))
            return None
        self.jobs[job] = "exited"
        self.feed(JobExited(job, rng.choice([0, 0, 1, -9, -15])))
        return None

    def advance(self) -> None:
        rng = self.rng
        worker = self.worker
        roll = rng.random()
        deadline = worker.state.next_deadline()
        if roll < self.deadline_jumps and deadline < math.inf:
            self.feed(Tick(), deadline)
        elif roll < 1 - self.big_jumps:
            self.feed(Tick(), worker.t + rng.choice(self.small_steps))
        else:
            self.feed(Tick(), worker.t + rng.choice([11.0, 40.0, 70.0]))


def walk(n: int, steps: int, seed: int, eng: Engine | None = None) -> Worker:
    """Walk number ``n`` of a seeded family: the same arguments always give the same inputs."""
    rng = random.Random(f"{seed}-{n}")
    pols = policies()
    w = Walk(rng, Worker(pols[n % len(pols)], seed=rng.randbytes(16), eng=eng))
    if n % 2:  # a cooperative scheduler and a prompt shell: jobs get all the way through
        w.weights = (20, 0.5, 40, 30, 10, 60, 40, 0.5, 25, 1)
        w.big_jumps = 0.05
        w.invalid_share = 0.1
        w.small_steps = (0.01, 0.05, 0.1)
        w.deadline_jumps = 0.2
    for _ in range(steps):
        w.move()
    return w.worker


def explore(walks: int = 2000, steps: int = 100, seed: int = 1) -> Counter[tuple[str, int]]:
    """Fired declared transitions as (machine, index) -> count, over many seeded walks."""
    fired: Counter[tuple[str, int]] = Counter()
    for n in range(walks):
        worker = walk(n, steps, seed)
        for out in worker.outputs:
            for machine, _key, _src, _event, _dst, index in out.trace:
                if index >= 0:
                    fired[(machine, index)] += 1
    return fired
