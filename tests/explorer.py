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

from hypha_sm.core.effects import SendJobStatus, SendOffer, StartJob, StopJob
from hypha_sm.core.events import (
    Event,
    JobExited,
    JobStarted,
    JobStartFailed,
    OfferDelivered,
    OfferFailed,
    ShutdownRequested,
    StatusDelivered,
    StatusFailed,
)
from hypha_sm.core.policy import ExecutorRef, ExecutorSpec, Offer, Policy, Timings
from hypha_sm.core.resources import Amounts
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
    offers: list[tuple[str, str]] = field(default_factory=list)  # (lease id, owner)
    unanswered_offers: list[str] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> spawned|started|exited
    stopped: set[str] = field(default_factory=set)
    reports: list[tuple[str, str]] = field(default_factory=list)
    ad_ids: list[str] = field(default_factory=list)
    counter: int = 0

    def feed(self, event: Event, t: float | None = None) -> None:
        out = self.worker.feed(event, t)
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
        kind = rng.randrange(12)
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
        rng = self.rng
        choice = rng.randrange(200)
        if choice < 30:
            self.feed(self.random_ad())
        elif choice < 32:
            for _ in range(self.worker.policy.timings.window_limit):
                self.feed(self.random_ad())
        elif choice < 72:
            self.renew_some_lease()
        elif choice < 96:
            self.dispatch_on_some_lease()
        elif choice < 108:
            self.answer_an_offer()
        elif choice < 148:
            self.job_result()
        elif choice < 164:
            self.answer_a_report()
        elif choice < 165:
            self.feed(ShutdownRequested())
        else:
            self.advance()

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
        if rng.random() < 0.05:
            lease = "unknown-lease"
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
        job, status = self.reports.pop(rng.randrange(len(self.reports)))
        if rng.random() < 0.8:
            self.feed(StatusDelivered(job, status))
        else:
            self.feed(StatusFailed(job, status, "unreachable"))
        return None

    def job_result(self) -> None:
        rng = self.rng
        if not self.jobs:
            return self.advance()
        job = rng.choice(list(self.jobs))
        phase = self.jobs[job]
        if phase == "exited":
            return None
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
        if roll < 0.5 and deadline < math.inf:
            worker.tick(deadline)
        elif roll < 0.8:
            worker.advance(rng.choice([0.05, 0.3, 1.0]))
        else:
            worker.advance(rng.choice([11.0, 40.0, 70.0]))


def explore(walks: int = 2000, steps: int = 100, seed: int = 1) -> Counter[tuple[str, int]]:
    """Fired declared transitions as (machine, index) -> count, over many seeded walks."""
    fired: Counter[tuple[str, int]] = Counter()
    rng = random.Random(seed)
    pols = policies()
    for n in range(walks):
        walk = Walk(rng, Worker(pols[n % len(pols)], seed=rng.randbytes(16)))
        for _ in range(steps):
            walk.move()
        for out in walk.worker.outputs:
            for machine, _key, _src, _event, _dst, index in out.trace:
                if index >= 0:
                    fired[(machine, index)] += 1
    return fired
