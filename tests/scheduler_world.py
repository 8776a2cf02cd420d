"""A world for the scheduler's pure core: workers, gateways and a clock that answer its effects.

Tests drive it by rules (Hypothesis) or by random walks (the transition-coverage explorer). It
answers every effect the way a real network can: in any order, late, refused, or never; offers
come from honest and hostile workers (dear, too small, NaN, duplicated, for stale requests);
statuses and progress come from the right worker, from strangers, or for unknown jobs.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypha_sm.core.resources import Amounts
from hypha_sm.core.trace import Now
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.scheduler.core import effects as fx
from hypha_sm.roles.scheduler.core import events as ev
from hypha_sm.roles.scheduler.core.plan import DiLoCoPlan, Plan
from hypha_sm.roles.scheduler.core.role import SCHEDULER
from hypha_sm.roles.scheduler.core.state import HELD, SchedulerState

WALL0 = 1_764_000_000.0
ASK = Amounts(gpu=0.0, cpu=1.0, memory=1.0, storage=0.0)
ENOUGH = Amounts(gpu=0.0, cpu=2.0, memory=2.0, storage=1.0)
TOO_SMALL = Amounts(gpu=0.0, cpu=0.5, memory=1.0, storage=0.0)
PEERS = tuple(f"12D3KooWorker{i}" for i in range(6))
STATUSES = ("running", "finished", "failed", "cancelled")


def plan(workers: int = 2, **timings: Any) -> Plan:
    """A small job: ``workers`` workers, bid 100, short timings."""
    defaults: dict[str, Any] = {
        "offer_wait": 0.1,
        "advertise_timeout": 10.0,
        "renew_interval": 1.0,
        "timeout": 30.0,
    }
    defaults.update(timings)
    return Plan(workers=workers, resources=ASK, bid=100.0, **defaults)


class World:
    """The scheduler's core, its clock, and the effects waiting for an answer."""

    def __init__(self, the_plan: Plan | None = None, seed: bytes = bytes(16)) -> None:
        engine, self.machines_hash = load_engine(SCHEDULER)
        self.plan = the_plan or plan()
        self.seed = seed
        self.state: SchedulerState = SCHEDULER.initial(engine, self.plan, seed)
        self.mono = 0.0
        self.inputs: list[tuple[Now, ev.Event]] = []
        self.effects: list[fx.Effect] = []
        #: Effects that report back, waiting for an answer (in the order they were asked).
        self.open: list[fx.Effect] = []
        self.replies = 0
        self.coverage: Counter[tuple[str, int]] = Counter()
        self.dispatched_leases: set[str] = set()
        self.slices = 5
        #: The worker each slice was last handed to (as the workers see it).
        self.holding: dict[int, str] = {}
        #: How often each slice was reported done, per epoch.
        self.done_in_epoch: Counter[tuple[int, int]] = Counter()
        self.epochs_checked = 1

    # -- stepping ------------------------------------------------------------------------------

    def feed(self, event: ev.Event) -> list[fx.Effect]:
        now = Now(self.mono, WALL0 + self.mono)
        self.inputs.append((now, event))
        result = SCHEDULER.step(self.state, event, now)
        for kind, _key, _src, _event, _dst, index in result.trace:
            if index >= 0:
                self.coverage[(kind, index)] += 1
        effects = list(result.effects)
        for effect in effects:
            if isinstance(effect, fx.DispatchJob):
                self.dispatched_leases.add(effect.lease_id)
            if isinstance(
                effect,
                (
                    fx.LocateGateways,
                    fx.Publish,
                    fx.AcceptLease,
                    fx.RenewLease,
                    fx.DispatchJob,
                    fx.LocateDataset,
                ),
            ):
                self.open.append(effect)
            elif isinstance(effect, fx.ReplySlice):
                self.holding[effect.index] = effect.peer
            elif isinstance(effect, fx.ReplySliceDone) and not effect.reason:
                self.done_in_epoch[(self.state.epoch, effect.index)] += 1
        self.effects.extend(effects)
        self.check()
        return effects

    def advance(self, seconds: float) -> list[fx.Effect]:
        self.mono += seconds
        return self.feed(ev.Tick())

    def token(self) -> int:
        self.replies += 1
        return self.replies

    # -- answers -------------------------------------------------------------------------------

    def take(self, kind: type[Any]) -> Any:
        for i, effect in enumerate(self.open):
            if isinstance(effect, kind):
                return self.open.pop(i)
        return None

    def answer(
        self, effect: fx.Effect, ok: bool = True, refused: bool = False, why: str = "unknown_lease"
    ) -> None:
        """Report ``effect``'s result: success, a network failure, or a refusal (``why``)."""
        wall = WALL0 + self.mono
        match effect:
            case fx.LocateGateways():
                self.feed(ev.GatewaysLocated(("tcp://gw",)) if ok else ev.GatewaysUnreachable("x"))
            case fx.Publish(request_id=rid):
                self.feed(ev.Published(rid) if ok else ev.PublishFailed(rid, "no connection"))
            case fx.AcceptLease(lease_id=lid):
                self.feed(ev.LeaseAccepted(lid, wall + 5.0) if ok else ev.AcceptFailed(lid, "x"))
            case fx.RenewLease(lease_id=lid):
                if ok:
                    self.feed(ev.Renewed(lid, wall + 5.0))
                elif refused:
                    self.feed(ev.RenewRefused(lid, f"{ev.RENEWAL_REFUSED}{why}"))
                else:
                    self.feed(ev.RenewFailed(lid, "timeout"))
            case fx.DispatchJob(lease_id=lid):
                self.feed(ev.Dispatched(lid) if ok else ev.DispatchFailed(lid, "refused"))
            case fx.LocateDataset(name=name):
                if ok:
                    self.feed(ev.DatasetFound(name, self.slices, "sha256:m", ("dn1", "dn2")))
                else:
                    self.feed(ev.DatasetMissing(name, "no record"))

    def offer(
        self,
        peer: str,
        lease_id: str,
        price: float = 90.0,
        resources: Amounts = ENOUGH,
        request_id: str | None = None,
    ) -> list[fx.Effect]:
        alloc = self.state.records["allocation"].get("job")
        rid = request_id if request_id is not None else (alloc.request_id if alloc else "none")
        return self.feed(
            ev.OfferReceived(self.token(), peer, rid, lease_id, f"tcp://{peer}", price, resources)
        )

    def job_of(self, lease_id: str) -> str | None:
        return next((j for j, lid in self.state.jobs.items() if lid == lease_id), None)

    # -- invariants ----------------------------------------------------------------------------

    def check(self) -> None:
        """The scheduler's invariants, after every step."""
        state = self.state
        placements = state.records["placement"]
        held = [p for p in placements.values() if p.phase in HELD]
        alloc = state.records["allocation"].get("job")
        # Never more leases kept than wanted: hedged acceptances may overshoot only while the
        # allocation is still accepting; the surplus is let go as it moves on.
        wanted = self.plan.workers + (1 if self.plan.diloco is not None else 0)
        if alloc is None or alloc.phase != "accepting":
            assert len(held) <= wanted, (alloc and alloc.phase, len(held))
        if self.dispatched_leases:  # the job's workers, once chosen, are as many as wanted
            assert len(state.placed) <= wanted
        tracker = state.tracker
        if tracker is not None:
            # Done only after the last round; never more rounds than planned.
            assert tracker.round <= tracker.plan.rounds + 1
            for rec in state.records["training"].values():
                assert rec.phase != "done" or tracker.finished
                assert rec.round <= tracker.round
        # Never a dispatch on a lease it does not hold.
        for p in placements.values():
            if p.phase in ("dispatched", "running"):
                assert p.key in self.dispatched_leases
                assert p.job_id
                assert state.jobs.get(p.job_id) == p.key
        # Every held lease is renewed before its expiry (or found lost at it).
        for p in held:
            assert p.deadline <= p.expires_mono, (p.key, p.deadline, p.expires_mono)
        # A slice is held by at most one worker, and only by a worker the job still runs on;
        # a lost worker's slices are back in the pool.
        running = {p.worker for p in placements.values() if p.phase in ("dispatched", "running")}
        for piece in state.records["slice"].values():
            if piece.phase == "assigned":
                assert piece.assignee in running, (piece.index, piece.assignee)
            else:
                assert piece.assignee == ""
        # Every slice is done exactly once in each finished epoch.
        while self.epochs_checked < state.epoch:
            epoch = self.epochs_checked
            assert all(self.done_in_epoch[(epoch, i)] == 1 for i in range(self.slices)), epoch
            self.epochs_checked += 1
        # Nothing is decided after the run is over; a finished run holds nothing.
        if state.finished is not None:
            assert alloc is None
            assert not held


def diloco(rounds: int = 2, samples: int = 40, **extra: Any) -> DiLoCoPlan:
    """A small DiLoCo job: ``rounds`` rounds of ``samples`` samples, batches of up to 8."""
    extra.setdefault("max_batch_size", 8)
    return DiLoCoPlan(
        rounds=rounds,
        samples_per_round=samples,
        ps_resources=ASK,
        ps_bid=100.0,
        **extra,
    )


def random_walk(
    rng: random.Random, steps: int = 400, workers: int | None = None, training: bool = False
) -> World:
    """A run driven by random inputs and answers; the world checks the invariants each step.

    ``training``: a DiLoCo job whose workers mostly follow the progress protocol.
    """
    world = World(
        plan(
            workers or rng.choice((1, 2, 3)),
            advertise_timeout=rng.choice((3.0, 20.0)),
            timeout=rng.choice((2.0, 30.0, 120.0)) if not training else rng.choice((8.0, 60.0)),
            dataset=rng.choice(("", "d", "d", "d")),
            slice_timeout=rng.choice((1.0, 600.0)),
            epochs=rng.choice((0, 0, 2)),
            diloco=diloco(rng.choice((1, 2, 3)), rng.choice((8, 40))) if training else None,
        )
    )
    world.slices = rng.choice((1, 3, 7))
    if rng.random() < 0.02:
        world.feed(ev.StopRequested())  # stopped before it began
    world.feed(ev.Begin())
    leases = 0
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.45 and world.open:
            effect = world.open.pop(rng.randrange(len(world.open)))
            why = rng.choice(("unknown_lease", "job_ended", "lease_expired"))
            world.answer(effect, ok=rng.random() < 0.85, refused=rng.random() < 0.5, why=why)
        elif roll < 0.6:
            leases += 1
            price = rng.choice((90.0, 50.0, 99.0, 90.0, 150.0, -1.0, float("nan")))
            resources = rng.choice((ENOUGH, ENOUGH, ENOUGH, TOO_SMALL))
            lease = f"L{leases}" if rng.random() < 0.95 else "L1"
            stale = "stale" if rng.random() < 0.05 else None
            world.offer(rng.choice(PEERS), lease, price, resources, stale)
        elif roll < 0.68 and world.state.jobs:
            slice_input(world, rng)
        elif roll < 0.75 and world.state.jobs and training:
            diloco_input(world, rng)
        elif roll < 0.75 and world.state.jobs:
            job_id, lease_id = rng.choice(sorted(world.state.jobs.items()))
            rec = world.state.records["placement"].get(lease_id)
            peer = rec.worker if rec is not None and rng.random() < 0.9 else "12D3KooWStranger"
            if rng.random() < 0.5:
                status = rng.choice(STATUSES) if rng.random() < 0.5 else "running"
                code = 0 if status == "finished" and rng.random() < 0.8 else 1
                world.feed(ev.StatusReceived(world.token(), peer, job_id, status, code, ""))
            else:
                kind = rng.choice(("update-received", "round-metrics"))
                world.feed(ev.ProgressReceived(world.token(), peer, job_id, kind, "progress"))
        elif roll < 0.76:
            world.feed(ev.StatusReceived(world.token(), PEERS[0], "no-such-job", "running"))
            world.feed(ev.ProgressReceived(world.token(), PEERS[0], "no-such-job", "x", "y"))
        elif roll < 0.763:
            world.feed(ev.StopRequested())
        elif roll < 0.766:
            world.feed(ev.Begin())
        else:
            pace = (0.01, 0.05, 0.05, 0.2, 0.2, 0.6, 1.5)
            world.advance(rng.choice((6.0, 40.0)) if rng.random() < 0.03 else rng.choice(pace))
        if world.state.finished is not None and rng.random() < 0.05:
            break
    return world


def diloco_input(world: World, rng: random.Random) -> None:
    """A DiLoCo job's progress, mostly as its workers and parameter server follow the protocol.

    A training worker reports a batch (its first with the initial weights' digest), starts its
    update once scheduled, says it merged the update; the parameter server says ``updated``
    once every live worker is updating. Sometimes out of order, from the wrong peer, with a
    different digest, or a job status (finished, failed) instead.
    """
    state = world.state
    job_id, lease_id = rng.choice(sorted(state.jobs.items()))
    rec = state.records["placement"].get(lease_id)
    if rec is None:
        return
    peer = rec.worker if rng.random() < 0.97 else "12D3KooWStranger"
    digest = "same" if rng.random() < 0.98 else "different"

    def progress(kind: str, batch: int = 0, weights: str = "") -> None:
        world.feed(ev.ProgressReceived(world.token(), peer, job_id, kind, kind, batch, weights))

    if rng.random() < 0.04:
        status = rng.choice(STATUSES)
        world.feed(
            ev.StatusReceived(world.token(), peer, job_id, status, 0 if rng.random() < 0.7 else 1)
        )
        return
    if rec.group == "ps":
        training = list(state.records["training"].values())
        ready = all(t.phase in ("updating", "awaiting", "done") for t in training)
        if ready or rng.random() < 0.1:
            progress("updated")
        return
    training_rec = state.records["training"].get(lease_id)
    phase = training_rec.phase if training_rec is not None else "training"
    if rng.random() < 0.2:
        progress(rng.choice(("status", "update", "update-received", "metrics", "updated")), 4)
    elif phase == "training":
        first = training_rec is not None and 0 not in (
            state.tracker.hashes if state.tracker else {}
        )
        progress("status", rng.choice((4, 8)), digest if first or rng.random() < 0.1 else "")
    elif phase == "update_scheduled":
        progress("update" if rng.random() < 0.6 else "status", 8)
    elif phase == "updating":
        progress("metrics" if rng.random() < 0.2 else "update-received", 0, digest)
    else:
        progress(rng.choice(("metrics", "update-received", "status")), 4)


def placed_diloco(workers: int = 2, batches: tuple[int, ...] = (), **extra: Any) -> World:
    """A world whose DiLoCo job runs: a parameter server (lease ``PS``) and ``workers``
    training workers (leases ``T0``...), each offering ``gpu`` for the batch in ``batches``."""
    job = plan(workers, timeout=3600.0, advertise_timeout=30.0, renew_interval=100.0)
    gpu = 1.0 if batches else 0.0
    job = Plan(
        **{**{f: getattr(job, f) for f in job.__struct_fields__}, "diloco": diloco(**extra)}
    )
    job = Plan(
        **{
            **{f: getattr(job, f) for f in job.__struct_fields__},
            "resources": Amounts(gpu=gpu, cpu=1.0, memory=1.0, storage=0.0),
        }
    )
    world = World(job)
    world.feed(ev.Begin())
    world.answer(world.take(fx.LocateGateways))
    for n, group in enumerate(["ps", "train"]):
        publish = world.take(fx.Publish)
        assert publish is not None
        assert publish.group == group, publish
        world.answer(publish)
        count = 1 if group == "ps" else workers
        for i in range(count):
            size = batches[i] if batches and group == "train" else 8
            offered = Amounts(gpu=float(size), cpu=2.0, memory=2.0, storage=1.0)
            lease = "PS" if group == "ps" else f"T{i}"
            world.offer(PEERS[n * 3 + i], lease, 50.0 + i, offered)
        world.advance(0.2)
        while (accept := world.take(fx.AcceptLease)) is not None:
            world.answer(accept)
            world.advance(0.06)
    while (dispatch := world.take(fx.DispatchJob)) is not None:
        world.answer(dispatch)
    assert world.state.records["allocation"]["job"].phase == "held"
    return world


def progress(
    world: World, lease: str, kind: str, batch: int = 0, weights: str = "", peer: str = ""
) -> list[fx.Effect]:
    """A progress report from the worker holding ``lease`` (or ``peer``)."""
    job_id = world.job_of(lease)
    assert job_id is not None
    sender = peer or world.state.records["placement"][lease].worker
    return world.feed(
        ev.ProgressReceived(world.token(), sender, job_id, kind, kind, batch, weights)
    )


def protocol_walk(rng: random.Random, steps: int = 300) -> World:
    """A placed DiLoCo job fed every progress kind from every party in random order, with
    workers lost now and then: every reply must follow the machines (the world checks)."""
    world = placed_diloco(rng.choice((1, 2, 3)), rounds=rng.choice((1, 2, 3)), samples=16)
    kinds = ("status", "update", "update-received", "metrics")
    for _ in range(steps):
        if world.state.finished is not None:
            break
        leases = sorted(world.state.records["training"])
        roll = rng.random()
        if roll < 0.15:
            if "PS" in world.state.records["placement"]:
                progress(world, "PS", "updated")
        elif roll < 0.17 and leases:
            lease = rng.choice(leases)
            job_id = world.job_of(lease)
            peer = world.state.records["placement"][lease].worker
            world.feed(ev.StatusReceived(world.token(), peer, job_id or "", "failed", 1))
        elif roll < 0.175 and leases:  # the job ended and its worker let the lease go
            world.feed(ev.RenewRefused(rng.choice(leases), f"{ev.RENEWAL_REFUSED}job_ended"))
        elif roll < 0.18 and world.state.jobs:
            job_id = rng.choice(sorted(world.state.jobs))
            world.feed(ev.ProgressReceived(world.token(), "12D3KooWStranger", job_id, "x", "y"))
        elif roll < 0.2:
            world.advance(rng.choice((0.05, 0.5, 3.0)))
        elif leases:
            digest = "same" if rng.random() < 0.97 else "other"
            progress(world, rng.choice(leases), rng.choice(kinds), 8, digest)
    return world


def slice_input(world: World, rng: random.Random) -> None:
    """A slice request or a "slice done", mostly from the job's workers, sometimes not."""
    job_id, lease_id = rng.choice(sorted(world.state.jobs.items()))
    rec = world.state.records["placement"].get(lease_id)
    peer = rec.worker if rec is not None and rng.random() < 0.9 else "12D3KooWStranger"
    dataset = "d" if rng.random() < 0.95 else "other"
    held = [i for i, who in world.holding.items() if who == peer]
    if world.holding and rng.random() < 0.6:
        if held and rng.random() < 0.8:
            index = rng.choice(held)
        else:  # another worker's slice, or one past the end
            index = rng.choice([*world.holding, world.slices])
        world.feed(ev.SliceDone(world.token(), peer, job_id, dataset, index))
    else:
        world.feed(ev.SliceRequested(world.token(), peer, job_id, dataset))


def explore_scheduler(walks: int = 300) -> Counter[tuple[str, int]]:
    """Transition coverage of the scheduler's machines over seeded random walks."""
    total: Counter[tuple[str, int]] = Counter()
    for seed in range(walks):
        total += random_walk(random.Random(seed)).coverage
    for seed in range(walks // 3):
        total += random_walk(random.Random(seed), steps=900, training=True).coverage
    for seed in range(walks // 3):
        total += protocol_walk(random.Random(seed)).coverage
    return total
