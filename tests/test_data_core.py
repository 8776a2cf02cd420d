"""The data node's pure core: which fetches it serves, how many at once, announcing, draining."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest

from hypha_sm.log.codec import Entry, encode_entry, encode_header
from hypha_sm.log.replay import replay
from hypha_sm.log.store import make_header
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.data.core import effects as fx
from hypha_sm.roles.data.core import events as ev
from hypha_sm.roles.data.core.role import DATA
from tests.data_world import PEERS, World, plan, random_walk


def of(kind: type, effects: list[Any]) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def test_a_good_grant_starts_one_send_and_its_verification_answers_the_worker() -> None:
    world = World()
    (send,) = of(fx.SendSlice, world.fetch())
    assert (send.peer, send.dataset, send.index, send.bulk_address) == (
        PEERS[0],
        "fox",
        1,
        "tcp://w:1",
    )
    effects = world.feed(ev.SliceSent(send.key, 123, "cd" * 32))
    assert of(fx.ReplyFetch, effects) == [fx.ReplyFetch(1, "t1", "", 123, "cd" * 32)]
    assert not world.state.records["fetch"]


@pytest.mark.parametrize(
    ("grant", "reason"),
    [
        ({"granter": ""}, "bad_grant"),  # the envelope did not verify
        ({"granter": "12D3KooWOther"}, "grant_not_trusted"),
        ({"grant_worker": PEERS[1]}, "grant_for_another_peer"),
        ({"grant_expires": 0.0}, "grant_expired"),
        ({"grant_dataset": "cat"}, "unknown_dataset"),
        ({"grant_hash": "sha256:" + "00" * 32}, "manifest_mismatch"),
        ({"grant_index": 4}, "index_out_of_range"),  # == slices: the original's off-by-one
        ({"grant_index": -1}, "index_out_of_range"),
    ],
)
def test_a_fetch_whose_grant_does_not_hold_is_refused_with_a_reason_and_costs_no_record(
    grant: dict[str, Any], reason: str
) -> None:
    world = World()
    effects = world.fetch(**grant)
    assert of(fx.ReplyFetch, effects) == [fx.ReplyFetch(1, "t1", reason)]
    assert not of(fx.SendSlice, effects)
    assert not world.state.records["fetch"]
    assert world.state.counters[f"rejected.fetch.{reason}"] == 1


def test_any_schedulers_grant_counts_when_no_scheduler_is_named() -> None:
    world = World(plan(grant_from=()))
    assert of(fx.SendSlice, world.fetch(granter="12D3KooWAnyone"))


def test_past_max_concurrent_a_fetch_is_refused_busy_until_a_send_ends() -> None:
    world = World(plan(max_concurrent=2))
    first = of(fx.SendSlice, world.fetch())[0]
    world.fetch()
    assert of(fx.ReplyFetch, world.fetch()) == [fx.ReplyFetch(3, "t3", "busy")]
    world.feed(ev.SendFailed(first.key, "connection reset"))
    assert of(fx.SendSlice, world.fetch())


def test_a_send_that_takes_longer_than_send_timeout_fails_and_frees_its_place() -> None:
    world = World(plan(send_timeout=5.0))
    (send,) = of(fx.SendSlice, world.fetch())
    effects = world.advance(5.0)
    assert of(fx.ReplyFetch, effects) == [fx.ReplyFetch(1, "t1", "send_failed: send_timeout")]
    effects = world.feed(ev.SliceSent(send.key, 1, "00" * 32))  # too late: counted only
    assert not of(fx.ReplyFetch, effects)
    assert world.state.counters["late.slice_sent"] == 1


def test_records_are_announced_at_once_then_every_period_and_soon_after_a_failure() -> None:
    world = World(plan(announce_every=60.0, announce_retry=5.0, record_lifetime=180.0))
    effects = world.advance(0.0)
    assert of(fx.Announce, effects) == [fx.Announce(1_764_000_000.0 + 180.0)]
    world.feed(ev.AnnounceFailed("no gateway"))
    assert of(fx.Announce, world.advance(5.0))  # retried after announce_retry
    world.feed(ev.Announced())
    assert not of(fx.Announce, world.advance(59.0))
    assert of(fx.Announce, world.advance(1.0))


def test_a_shutdown_refuses_new_fetches_and_stops_once_the_last_send_ended() -> None:
    world = World()
    (send,) = of(fx.SendSlice, world.fetch())
    assert not of(fx.NodeStopped, world.feed(ev.ShutdownRequested()))
    assert of(fx.ReplyFetch, world.fetch()) == [fx.ReplyFetch(2, "t2", "draining")]
    effects = world.feed(ev.SliceSent(send.key, 1, "00" * 32))
    assert of(fx.NodeStopped, effects) == [fx.NodeStopped()]


@pytest.mark.parametrize("seed", range(20))
def test_random_runs_keep_the_limits_and_replay_from_their_log(seed: int) -> None:
    """Hostile grants, failing sends, time jumps and shutdowns; the inputs, written as the data
    node's event log, replay to the same effects."""
    world = random_walk(random.Random(seed))
    sink = io.BytesIO()
    sink.write(
        encode_header(make_header(world.machines_hash, world.plan, bytes(16), "data"), DATA)
    )
    fresh = World(world.plan)
    for seq, (now, event) in enumerate(world.inputs, start=1):
        fresh.mono = now.mono
        effects = fresh.feed(event)
        sink.write(encode_entry(Entry(seq, now.mono, now.wall, event, effects), DATA))
    engine, machines_hash = load_engine(DATA)
    report = replay(sink.getvalue().splitlines(keepends=True), engine, machines_hash, role=DATA)
    assert report.ok, report.divergence
