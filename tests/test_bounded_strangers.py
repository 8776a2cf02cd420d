"""What a stranger sends costs bounded memory and bounded log bytes.

Found by attack: 600 dispatches for a lease that does not exist, each with a 1 MB spec, were
logged in full (493 MB, every earlier segment rotated away); 5,000 declined advertisements with
50 KB reply addresses wrote ~270 MB per worker log and grew each worker by ~245 MB for good (the
node kept every advertiser's reply address); the scheduler kept and logged every progress report
in full. Now every field a peer sends has a limit (specs/protocol.md §4), a refused dispatch is
logged as a digest, the node learns a scheduler's address only when it offers it a lease, the
core remembers a bounded number of advertisement ids, and the scheduler keeps the latest reports.
"""

from __future__ import annotations

import io
import os
import time

import msgspec
import pytest
import trio

from hypha_sm.log.replay import replay
from hypha_sm.machines_io import load_engine
from hypha_sm.net.memory import MemoryEndpoint, MemoryNetwork
from hypha_sm.roles.worker.core.effects import SendOffer, StartJob
from hypha_sm.roles.worker.core.events import DispatchRequested, Tick
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened, Opener, Rejection, encode_payload, signing_bytes
from hypha_sm.wire.identity import Identity
from tests.helpers import SCHED, SEED, TRAIN, Worker, ad, at, policy, recording, renew
from tests.netkit import running_gateway, wait_connected, wait_healthy
from tests.test_shell_node import GATEWAY, GW, FakeExecutor, memory_node

STRANGER = Identity.from_seed(bytes([81]) * 32)
NOW = 1_764_000_000.0


def _signed(message: m.Message) -> bytes:
    payload = encode_payload(message)
    sender, ts, msg_id = STRANGER.peer_id.raw, int(NOW * 1000), os.urandom(16)
    sig = STRANGER.sign(signing_bytes(sender, ts, msg_id, payload))
    return msgspec.msgpack.encode([1, sender, ts, msg_id, payload, sig])


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (m.DispatchJob("j", "l", m.Executor("train", "x"), "x" * (m.MAX_SPEC + 1)), "spec"),
        (
            m.Advertisement("r", "12D3", "tcp://" + "a" * 50_000, m.Resources(), (), 1.0, NOW + 5),
            "reply_address",
        ),
        (
            m.Advertisement(
                "r", "12D3", "tcp://h:1", m.Resources(), (m.Executor("train", "x"),) * 9, 1, 2
            ),
            "executors",
        ),
        (m.Progress("j", m.RoundMetrics(1, {f"m{i}": 1.0 for i in range(300)})), "metrics"),
        (m.Progress("j", m.RoundMetrics(1, {f"m{i}": 1.0 for i in range(30_000)})), "items"),
        (m.Progress("j", m.RoundMetrics(1, {"m" * 200: 1.0})), "metrics"),
        (m.WorkerOffer("l", "r", 1.0, m.Resources(), 2.0, "x" * 300), "worker_address"),
        (m.PeerRecord("p" * 65, ("tcp://h:1",), 2.0), "peer"),
        (m.PeerRecord("p", ("tcp://h:1",) * 17, 2.0), "addresses"),
        (m.TransferOffer("t" * 129, "f", 1, "0" * 64), "transfer_id"),
        (m.JobStatus("j", "failed", 1, "r" * 2000), "reason"),
        (m.LookupReply((b"x",) * 65), "records"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_every_field_a_peer_sends_has_a_limit(message: m.Message, field: str) -> None:
    """Over its limit, a field makes the whole message a counted malformed_payload, before
    anything keeps or logs it."""
    result = Opener().open(_signed(message), NOW)
    assert isinstance(result, Rejection)
    assert result.reason == "malformed_payload"
    assert field in result.detail


def test_the_limits_leave_room_for_every_real_message() -> None:
    """The golden messages, a 256-metric round and a 512 KiB spec all still open."""
    from hypha_sm.wire import vectors

    big = [
        m.Progress("j", m.RoundMetrics(1, {f"m{i}": 1.0 for i in range(m.MAX_METRICS)})),
        m.DispatchJob("j", "l", m.Executor("train", "x"), "x" * m.MAX_SPEC),
    ]
    for message in [*vectors.EXAMPLES.values(), *big]:
        assert isinstance(Opener().open(_signed(message), NOW), Opened), message


def test_a_refused_dispatch_is_logged_as_a_digest_and_still_replays() -> None:
    """50 dispatches for a lease that does not exist, each with a 500 KB spec: each is logged
    with the spec's size and SHA-256 (about 22 KB in all, not 25 MB), and the log replays to
    the same refusals."""
    engine, machines_hash = load_engine(WORKER)
    sink = io.BytesIO()
    rec = recording(sink, engine, machines_hash, policy("flexible"), SEED)
    spec = '{"blob": "' + "x" * 500_000 + '"}'
    for n in range(50):
        refused = rec.feed(
            DispatchRequested(f"job-{n}", "no-such-lease", "peer", TRAIN, spec, n), at(0.1)
        )
        assert [type(e).__name__ for e in refused.effects] == ["ReplyDispatchFailed"]
    assert len(sink.getvalue()) < 50 * 500  # under 500 bytes per refusal
    assert b"<refused spec: 500012 bytes, sha256 " in sink.getvalue()
    report = replay(sink.getvalue().splitlines(keepends=True), engine, machines_hash, role=WORKER)
    assert report.ok, report.divergence
    assert report.events == 50


def test_an_accepted_dispatch_keeps_its_spec_in_the_log() -> None:
    """Only refusals are digested: a job that starts has its whole spec in its entry."""
    engine, machines_hash = load_engine(WORKER)
    sink = io.BytesIO()
    rec = recording(sink, engine, machines_hash, policy("flexible"), SEED)
    rec.feed(ad("req-1"), at(0.0))
    (offer,) = rec.feed(Tick(), at(0.2)).effects
    assert isinstance(offer, SendOffer)
    rec.feed(renew(offer.lease_id), at(0.3))
    spec = '{"hello": "' + "w" * 10_000 + '"}'
    started = rec.feed(DispatchRequested("job-1", offer.lease_id, SCHED, TRAIN, spec, 5), at(0.4))
    assert any(isinstance(e, StartJob) for e in started.effects)
    last = sink.getvalue().splitlines()[-1]
    assert msgspec.json.decode(last)["event"]["spec"] == spec


def test_the_core_remembers_a_bounded_number_of_advertisement_ids() -> None:
    """20,000 distinct advertisements (declined) leave at most ``dedupe_capacity`` ids."""
    worker = Worker(policy("flexible", dedupe_capacity=1000))
    for n in range(20_000):
        worker.feed(ad(f"req-{n}", bid=1.0, t=n * 0.001), n * 0.001)
    assert len(worker.state.seen_ads) <= 1000
    assert worker.state.counters["dedupe.evicted"] >= 19_000


async def test_declined_advertisements_leave_no_per_scheduler_state_in_the_node() -> None:
    """Ads below the floor are declined: the node keeps no reply address for their senders;
    an offered one is remembered (its status and progress go there)."""
    network = MemoryNetwork()
    node = memory_node(network, FakeExecutor())
    strangers = [Identity.from_seed(bytes([100 + i]) * 32) for i in range(20)]
    async with (
        running_gateway(MemoryEndpoint(network, GATEWAY), *GW) as gw,
        trio.open_nursery() as nursery,
    ):
        worker = await nursery.start(node.run, [gw.listen])
        for i, who in enumerate(strangers):
            with MemoryEndpoint(network, who) as ep, ep.publisher(dial=[gw.ingest]) as pub:
                await wait_connected(pub)
                await wait_healthy(ep, worker)
                await pub.publish(
                    m.Advertisement(
                        f"req-{i}",
                        str(who.peer_id),
                        f"mem:{i}:" + "a" * 200,
                        m.Resources(cpu=1, memory=1),
                        (m.Executor("train", "diloco-transformer"),),
                        1.0,  # below the floor of 100
                        time.time() + 5,
                    )
                )
        with trio.fail_after(5):
            while node.stepper.state.counters["declined.below_floor"] < 20:  # noqa: ASYNC110
                await trio.sleep(0.05)
        remembered = dict(node._schedulers)
        nursery.cancel_scope.cancel()
    assert remembered == {}
