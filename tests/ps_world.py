"""A world for the parameter server's pure core: workers' files, the shell's results, a clock.

Random walks send files from the job's workers and from strangers (late, early, duplicated,
malformed, with another layout), answer the core's effects (aggregated or failed, delivered to
some workers or none, the scheduler's answer) and let deadlines pass. After every step the
world checks: an aggregation only takes one file per live worker of the job, all of this round
and with one layout; a round closes early only with every live worker's file, at its deadline
only with the quorum; the job ends done only when the scheduler said so.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypha_sm.core.trace import Now
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.ps.core import model as ps
from hypha_sm.roles.ps.core.role import PS
from hypha_sm.roles.ps.core.rounds import PSState

WORKERS = ("12D3KooWTrainA", "12D3KooWTrainB", "12D3KooWTrainC")


class PSWorld:
    """The core, its clock, and the effects waiting for a result."""

    def __init__(self, plan: ps.PSPlan) -> None:
        engine, _ = load_engine(PS)
        self.plan = plan
        self.state: PSState = PS.initial(engine, plan, bytes(16))
        self.mono = 0.0
        self.open: list[ps.Effect] = []
        self.effects: list[ps.Effect] = []
        self.coverage: Counter[tuple[str, int]] = Counter()
        self.files = 0
        self.reported_done = False

    def feed(self, event: ps.Event) -> list[ps.Effect]:
        result = PS.step(self.state, event, Now(self.mono, 1e9 + self.mono))
        for kind, _k, _s, _e, _d, index in result.trace:
            if index >= 0:
                self.coverage[(kind, index)] += 1
        effects = list(result.effects)
        for effect in effects:
            if isinstance(effect, ps.Aggregate | ps.Publish | ps.ReportUpdated):
                self.open.append(effect)
            if isinstance(effect, ps.Aggregate):
                self.check_aggregate(effect)
        self.effects.extend(effects)
        self.check()
        return effects

    def advance(self, seconds: float) -> list[ps.Effect]:
        self.mono += seconds
        return self.feed(ps.Tick())

    def file(self, peer: str, **fields: Any) -> list[ps.Effect]:
        self.files += 1
        fields.setdefault("round", self.state.round)
        fields.setdefault("signature", "layout-1")
        fields.setdefault("samples", 64)
        return self.feed(ps.FileArrived(peer, f"/w/in-{self.files}", 100, **fields))

    def answer(self, effect: ps.Effect, rng: random.Random) -> None:
        match effect:
            case ps.Aggregate(round=rnd):
                if rng.random() < 0.9:
                    self.feed(ps.Aggregated(rnd, f"/w/update-{rnd}", 100, "ab" * 32))
                else:
                    self.feed(ps.AggregateFailed(rnd, "disk full"))
            case ps.Publish(round=rnd, peers=peers):
                outcomes = {
                    p: "delivered" if rng.random() < 0.9 else "unreachable: gone" for p in peers
                }
                self.feed(ps.Published(rnd, outcomes))
            case ps.ReportUpdated(round=rnd):
                if rng.random() < 0.95:
                    done = rng.random() < 0.3
                    self.reported_done = done
                    self.feed(ps.Reported(rnd, done))
                else:
                    self.feed(ps.ReportFailed(rnd, "timeout"))

    def check_aggregate(self, effect: ps.Aggregate) -> None:
        state = self.state
        senders = [p for p in self.plan.workers if p in state.files]
        assert len(effect.files) == len(set(effect.files)) == len(senders)
        assert all(w > 0 for w in effect.weights)
        assert effect.first == (effect.round == 1)
        assert len(senders) >= state.needed() or len(senders) == len(state.live)

    def check(self) -> None:
        state = self.state
        assert set(state.live) <= set(self.plan.workers)
        rec = state.records["round"].get("job")
        if rec is not None and rec.phase in ("waiting", "collecting"):
            assert set(state.files) <= set(state.live)  # a taken file's worker is live
        if state.finished is not None and state.finished[0]:
            assert self.reported_done


def random_walk(rng: random.Random, steps: int = 200) -> PSWorld:
    workers = WORKERS[: rng.choice((1, 2, 3))]
    plan = ps.PSPlan(
        workers=workers,
        quorum=rng.choice((0, 1, len(workers))),
        round_timeout=rng.choice((1.0, 5.0)),
        weighting=rng.choice(("samples", "equal")),
    )
    world = PSWorld(plan)
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.35 and world.open:
            world.answer(world.open.pop(rng.randrange(len(world.open))), rng)
        elif roll < 0.75:
            odd = rng.random()
            peer = rng.choice(workers)
            if odd < 0.04:
                world.file("12D3KooWStranger")
            elif odd < 0.08:
                world.file(peer, problem="header is not JSON")
            elif odd < 0.12:
                world.file(peer, round=world.state.round + rng.choice((-1, 1)))
            elif odd < 0.15:
                world.file(peer, signature="layout-2")
            else:
                world.file(peer, round=rng.choice((0, world.state.round)))
        elif roll < 0.78:
            world.feed(ps.Stop())
        else:
            world.advance(rng.choice((0.2, 1.5, 6.0)))
        if world.state.finished is not None:
            world.file(rng.choice(workers))  # after the end: dropped, never a crash
            break
    return world


def explore_ps(walks: int = 300) -> Counter[tuple[str, int]]:
    """Transition coverage of the parameter server's round machine over seeded walks."""
    total: Counter[tuple[str, int]] = Counter()
    for seed in range(walks):
        total += random_walk(random.Random(seed)).coverage
    return total
