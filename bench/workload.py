"""Workloads for bench_core.py: a clock, a policy, and event builders.

Copied in spirit from tests/helpers.py so the benchmark does not depend on the test suite.
Nothing here does I/O; the machine definitions are read once, before any timing, by
``load_engine``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from hypha_sm.core.engine import Engine
from hypha_sm.core.resources import Amounts
from hypha_sm.roles.worker.core.effects import SendOffer
from hypha_sm.roles.worker.core.events import (
    AdvertisementReceived,
    DispatchRequested,
    JobExited,
    JobStarted,
    Now,
    RenewRequested,
    StatusDelivered,
    Tick,
)
from hypha_sm.roles.worker.core.policy import ExecutorRef, ExecutorSpec, Offer, Policy, Timings
from hypha_sm.roles.worker.core.reducer import Step, initial_state, step
from hypha_sm.roles.worker.core.state import WorkerState

SEED = bytes(range(16))
WALL0 = 1_700_000_000.0
TRAIN = ExecutorRef(cls="train", name="diloco-transformer")
AGGREGATE = ExecutorRef(cls="aggregate", name="parameter-server")
UNKNOWN_EXECUTOR = ExecutorRef(cls="train", name="no-such-executor")
EXECUTORS = (
    ExecutorSpec(cls="train", name="diloco-transformer", runtime="process"),
    ExecutorSpec(cls="aggregate", name="parameter-server", runtime="parameter-server"),
)
REPLY_ADDRESS = "tcp://127.0.0.1:7000"
#: 64 distinct schedulers (peer ids), shared by every advertisement they send.
SCHEDULERS = tuple(f"12D3KooWScheduler{i:04d}" for i in range(64))


class Clock:
    """Monotonic simulated time; ``now()`` pairs it with a wall clock."""

    __slots__ = ("t",)

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def now(self) -> Now:
        return Now(self.t, WALL0 + self.t)

    def advance(self, dt: float) -> Now:
        self.t += dt
        return Now(self.t, WALL0 + self.t)


def ad_policy() -> Policy:
    """Benchmark 1: flexible pricing, floor 50 / ask 100, a mid-size node (offers run out).

    The schedulers of the workload never accept: the backoff for lapsed offers and the cap on
    pending offers are set out of reach, so every advertisement is evaluated (the plain
    baseline models the evaluation, not the market's memory of lapses).
    """
    return Policy(
        capacity=Amounts(gpu=8, cpu=64, memory=256, storage=2000),
        executors=EXECUTORS,
        offer=Offer(price=100.0, floor=50.0, strategy="flexible"),
        lapses_before_backoff=1 << 30,
        max_pending_offers=1 << 30,
    )


def big_policy(max_leases: int) -> Policy:
    """Benchmarks 2 and 3: capacity and max_leases large enough for ``max_leases`` leases.

    Timings are the defaults (offer_timeout 0.5 s, lease_timeout 10 s); the benchmark keeps the
    simulated clock moving by 1 microsecond per input so nothing expires while it is timed. One
    scheduler holds every lease, so its cap on pending offers is lifted to ``max_leases``.
    """
    return Policy(
        capacity=Amounts(gpu=0, cpu=1e9, memory=1e9, storage=1e9),
        executors=EXECUTORS,
        offer=Offer(price=100.0, floor=50.0, strategy="flexible"),
        timings=Timings(),
        max_leases=max_leases,
        max_pending_offers=max_leases,
    )


def advertisement(
    request_id: str,
    t: float,
    *,
    bid: float = 150.0,
    gpu: float = 0.0,
    cpu: float = 1.0,
    memory: float = 1.0,
    storage: float = 0.0,
    executors: tuple[ExecutorRef, ...] = (TRAIN,),
    scheduler: str = SCHEDULERS[0],
    expires_in: float = 5.0,
) -> AdvertisementReceived:
    return AdvertisementReceived(
        request_id=request_id,
        scheduler=scheduler,
        reply_address=REPLY_ADDRESS,
        resources=Amounts(gpu=gpu, cpu=cpu, memory=memory, storage=storage),
        executors=executors,
        bid=bid,
        expires_wall=WALL0 + t + expires_in,
    )


#: The mix of one batch of 100 advertisements, in the order the request machine's filters run.
AD_MIX: tuple[tuple[str, int], ...] = (
    ("invalid_bid", 3),
    ("invalid_resources", 2),
    ("expired", 10),
    ("unsupported_executor", 10),
    ("below_floor", 25),
    ("below_price", 15),
    ("exceeds_capacity", 5),
    ("empty_request", 5),
    ("passes_filters", 25),  # ranked; about 2/3 get an offer, the rest run out of capacity
)


def ad_batch(rng: random.Random, prefix: str, t: float) -> list[AdvertisementReceived]:
    """100 advertisements in the AD_MIX proportions, shuffled, all valid until t + 5 s."""
    kinds = [kind for kind, n in AD_MIX for _ in range(n)]
    assert len(kinds) == 100
    rng.shuffle(kinds)
    out = []
    for i, kind in enumerate(kinds):
        rid = f"{prefix}-{i:03d}"
        sched = SCHEDULERS[rng.randrange(len(SCHEDULERS))]
        kw: dict[str, object] = {
            "bid": round(rng.uniform(100.0, 400.0), 2),
            "gpu": float(rng.random() < 0.2),
            "cpu": float(rng.randint(1, 8)),
            "memory": float(rng.randint(1, 32)),
            "storage": float(rng.randint(0, 100)),
        }
        if kind == "invalid_bid":
            kw["bid"] = rng.choice((math.nan, -1.0, math.inf))
        elif kind == "invalid_resources":
            kw["cpu"] = -1.0
        elif kind == "expired":
            kw["expires_in"] = -1.0
        elif kind == "unsupported_executor":
            kw["executors"] = (TRAIN, UNKNOWN_EXECUTOR)
        elif kind == "below_floor":
            kw["bid"] = round(rng.uniform(1.0, 49.0), 2)
        elif kind == "below_price":
            kw["bid"] = round(rng.uniform(50.0, 99.0), 2)
        elif kind == "exceeds_capacity":
            kw["gpu"] = 1000.0
        elif kind == "empty_request":
            kw.update(gpu=0.0, cpu=0.0, memory=0.0, storage=0.0)
        out.append(advertisement(rid, t, scheduler=sched, **kw))  # type: ignore[arg-type]
    return out


def renew(lease_id: str, owner: str, reply_to: int = 1) -> RenewRequested:
    return RenewRequested(lease_id=lease_id, peer=owner, reply_to=reply_to)


def offers_in(out: Step) -> Iterator[SendOffer]:
    for effect in out.effects:
        if isinstance(effect, SendOffer):
            yield effect


def transitions_in(out: Step) -> int:
    """Declared transitions fired in one step (trace entries with a transition index >= 0)."""
    return sum(1 for entry in out.trace if entry[5] >= 0)


@dataclass
class Population:
    """A state holding ``n`` active leases, built through the real path, and its bookkeeping."""

    state: WorkerState
    clock: Clock
    lease_ids: list[str]
    owners: dict[str, str] = field(default_factory=dict)
    transitions: int = 0
    steps: int = 0


def build_population(engine: Engine, n: int, dt: float = 1e-6) -> Population:
    """n advertisements (all pass) -> n offers -> one owner renewal each (offered -> active).

    Then a Tick at t = 6 s: past every offer timeout (so the stale offer timers are popped) and
    past the advertisements' own expiry (so the dedupe memory is forgotten), but before the first
    lease expires (accepted at t <= 0.2 s, lease_timeout 10 s).
    """
    assert n % 100 == 0
    state = initial_state(engine, big_policy(max_leases=max(n, 1024) * 2), SEED)
    clock = Clock()
    lease_ids: list[str] = []
    owners: dict[str, str] = {}
    transitions = steps = 0
    for b in range(n // 100):
        for i in range(100):
            sched = SCHEDULERS[(b * 100 + i) % len(SCHEDULERS)]
            event = advertisement(f"pop-{b:05d}-{i:02d}", clock.t, bid=100.0 + i, scheduler=sched)
            out = step(state, event, clock.advance(dt))
            transitions += transitions_in(out)
            steps += 1
        for offer in offers_in(out):
            lease_ids.append(offer.lease_id)
            owners[offer.lease_id] = offer.scheduler
    assert len(lease_ids) == n, (len(lease_ids), n, state.counters)
    for lease_id in lease_ids:
        out = step(state, renew(lease_id, owners[lease_id]), clock.advance(dt))
        transitions += transitions_in(out)
        steps += 1
    assert clock.t < 0.5, "offers must be accepted before offer_timeout"
    clock.t = 6.0
    step(state, Tick(), clock.now())
    assert len(state.records["lease"]) == n
    assert all(rec._phase == "active" for rec in state.records["lease"].values())
    return Population(state, clock, lease_ids, owners, transitions, steps)


def job_events(
    job_id: str, lease_id: str, owner: str, exit_code: int
) -> tuple[DispatchRequested, JobStarted, StatusDelivered, JobExited, StatusDelivered]:
    """One job's life under a lease, as the shell would report it."""
    return (
        DispatchRequested(
            job_id=job_id, lease_id=lease_id, peer=owner, executor=TRAIN, spec="{}", reply_to=2
        ),
        JobStarted(job_id=job_id),
        StatusDelivered(job_id=job_id, status="running"),
        JobExited(job_id=job_id, exit_code=exit_code),
        StatusDelivered(job_id=job_id, status="finished" if exit_code == 0 else "failed"),
    )
