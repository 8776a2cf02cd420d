"""A world for the data node's pure core: peers fetching with good and bad grants, transfers that
finish, fail or hang, gateways that store or refuse records, and shutdowns."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypha_sm.core.trace import Now
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.data.core import effects as fx
from hypha_sm.roles.data.core import events as ev
from hypha_sm.roles.data.core.plan import DataPlan, Served
from hypha_sm.roles.data.core.role import DATA
from hypha_sm.roles.data.core.state import DataState

WALL0 = 1_764_000_000.0
HASH = "sha256:" + "ab" * 32
SCHED = "12D3KooWScheduler"
PEERS = ("12D3KooWorkerA", "12D3KooWorkerB", "12D3KooWorkerC")


def plan(**options: Any) -> DataPlan:
    defaults: dict[str, Any] = {"grant_from": (SCHED,), "max_concurrent": 2, "send_timeout": 5.0}
    defaults.update(options)
    return DataPlan(datasets=(Served("fox", 4, HASH),), **defaults)


class World:
    """The data node's core, its clock, and the sends waiting for an answer."""

    def __init__(self, the_plan: DataPlan | None = None) -> None:
        engine, self.machines_hash = load_engine(DATA)
        self.plan = the_plan or plan()
        self.state: DataState = DATA.initial(engine, self.plan, bytes(16))
        self.mono = 0.0
        self.effects: list[Any] = []
        self.sending: list[fx.SendSlice] = []
        self.coverage: Counter[tuple[str, int]] = Counter()
        self.tokens = 0
        self.inputs: list[tuple[Now, Any]] = []

    def feed(self, event: Any) -> list[Any]:
        now = Now(self.mono, WALL0 + self.mono)
        self.inputs.append((now, event))
        result = DATA.step(self.state, event, now)
        for kind, _key, _src, _event, _dst, index in result.trace:
            if index >= 0:
                self.coverage[(kind, index)] += 1
        effects = list(result.effects)
        self.sending.extend(e for e in effects if isinstance(e, fx.SendSlice))
        self.effects.extend(effects)
        self.check()
        return effects

    def advance(self, seconds: float) -> list[Any]:
        self.mono += seconds
        return self.feed(ev.Tick())

    def fetch(self, peer: str = PEERS[0], **grant: Any) -> list[Any]:
        """A fetch with a good grant for ``peer``, but for the fields given."""
        self.tokens += 1
        fields: dict[str, Any] = {
            "granter": SCHED,
            "grant_dataset": "fox",
            "grant_index": 1,
            "grant_hash": HASH,
            "grant_worker": peer,
            "grant_expires": WALL0 + self.mono + 60,
        }
        fields.update(grant)
        request = ev.FetchRequested(self.tokens, peer, f"t{self.tokens}", "tcp://w:1", **fields)
        return self.feed(request)

    def check(self) -> None:
        """Never more sends in flight than max_concurrent; nothing in flight once stopped."""
        fetches = self.state.records["fetch"]
        assert len(fetches) <= self.plan.max_concurrent
        if "node" not in self.state.records["node"]:
            assert not fetches


def random_walk(rng: random.Random, steps: int = 200) -> World:
    world = World(plan(max_concurrent=rng.choice((1, 2, 3))))
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.35:
            bad = rng.choice(
                [
                    {},
                    {},
                    {},
                    {"granter": ""},
                    {"granter": "12D3KooWOther"},
                    {"grant_worker": PEERS[1]},
                    {"grant_expires": 0.0},
                    {"grant_dataset": "cat"},
                    {"grant_hash": "sha256:" + "00" * 32},
                    {"grant_index": 4},
                    {"grant_index": -1},
                ]
            )
            world.fetch(rng.choice(PEERS[:1] if "grant_worker" in bad else PEERS), **bad)
        elif roll < 0.6 and world.sending:
            send = world.sending.pop(rng.randrange(len(world.sending)))
            if rng.random() < 0.8:
                world.feed(ev.SliceSent(send.key, 100, "00" * 32))
            else:
                world.feed(ev.SendFailed(send.key, "connection reset"))
        elif roll < 0.7:
            announce = ev.Announced() if rng.random() < 0.7 else ev.AnnounceFailed("no gateway")
            world.feed(announce)
        elif roll < 0.72:
            world.feed(ev.ShutdownRequested())
        else:
            world.advance(rng.choice((0.1, 0.5, 2.0, 6.0, 61.0)))
        if "node" not in world.state.records["node"]:
            break
    return world


def explore_data(walks: int = 200) -> Counter[tuple[str, int]]:
    total: Counter[tuple[str, int]] = Counter()
    for seed in range(walks):
        total += random_walk(random.Random(seed)).coverage
    return total
