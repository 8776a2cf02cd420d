"""Market and directory abuse over real sockets.

Found by attack: a scheduler advertising 10 times a second with a bid of 1e300 and never
accepting kept a `whole` worker permanently reserved, so a real scheduler got no worker in 20 s;
300 directory records of ~1 MB grew a gateway from 64 to 362 MB; 5,000 throwaway keys
registering as providers of one dataset made its lookup exceed the reply size, so the real
provider could no longer be found; after a gateway restart, workers' peer records came back
only ~95 s later. Now the worker backs off from a scheduler that lets offers lapse, the
directory is bounded in bytes and providers (a renewing provider stays, lookups always fit a
reply), and a worker registers again as soon as its subscription reconnects.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import msgspec
import pytest
import trio
import trio.lowlevel

from hypha_sm.config.scheduler import JobSettings
from hypha_sm.config.worker import OfferSettings
from hypha_sm.net.keys import load_key_file
from hypha_sm.net.transport import Endpoint, NetError
from hypha_sm.roles.gateway.gateway import Gateway
from hypha_sm.roles.scheduler.scheduler import Scheduler
from hypha_sm.roles.worker.run import run_worker
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened, open_record, signing_bytes
from hypha_sm.wire.identity import Identity
from tests.netkit import LOOPBACK, running_gateway, wait_connected, wait_healthy
from tests.nodeproc import advertise
from tests.test_run_worker import fixture, worker_settings

pytestmark = [pytest.mark.net]

GATEWAY = Identity.from_seed(bytes([33]) * 32)
ATTACKER = Identity.from_seed(bytes([34]) * 32)
SCHED = Identity.from_seed(bytes([35]) * 32)
PROVIDER = Identity.from_seed(bytes([36]) * 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_a_scheduler_that_never_accepts_cannot_keep_a_whole_worker_from_a_real_one(
    tmp_path: Path,
) -> None:
    """10 ads/s with bid 1e300 that are never accepted; a real scheduler still places its job
    within 20 s, because the worker backs off from the attacker after three lapses."""
    settings = worker_settings(tmp_path, "tcp://127.0.0.1:1", fixture("exit", "0"))
    settings.offer = OfferSettings(price=100, floor=100, strategy="whole")
    job = JobSettings(
        executor={"class": "train", "name": "echo"},
        resources={"cpu": 1, "memory": 1},
        workers=1,
        bid=150.0,
        max_price=150.0,
        advertise_timeout=20.0,
        timeout=20.0,
    )
    attacked = 0

    async def ack_and_forget(opened: Opened) -> m.Message:
        nonlocal attacked
        assert isinstance(opened.message, m.WorkerOffer)
        attacked += 1
        return m.OfferAck(opened.message.lease_id)

    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        settings.gateway_addresses[:] = [gw.listen]
        worker = await nursery.start(run_worker, settings)
        with Endpoint(ATTACKER) as attacker, attacker.publisher(dial=[gw.ingest]) as pub:
            reply = await nursery.start(attacker.serve, LOOPBACK, ack_and_forget)
            await wait_connected(pub)
            await wait_healthy(attacker, worker)

            async def flood() -> None:
                n = 0
                while True:
                    n += 1
                    await advertise(pub, ATTACKER, f"junk-{n}", reply, bid=1e300)
                    await trio.sleep(0.1)

            nursery.start_soon(flood)
            await trio.sleep(1.0)  # the attacker holds the worker before the real one comes
            with Endpoint(SCHED) as sched:
                scheduler = Scheduler(sched, job, gateways=[gw.listen], address=LOOPBACK)
                with trio.fail_after(30):
                    outcome = await scheduler.run()
        nursery.cancel_scope.cancel()
    assert attacked >= 3
    assert outcome.ok, (outcome.reason, outcome.placements)


async def test_throwaway_providers_through_a_real_gateway_cannot_hide_the_real_one() -> None:
    """1,000 throwaway keys register as providers of one dataset; the provider that renews is
    the first record of a lookup, which holds at most 64 records; a ~9 KB record is refused."""
    async with running_gateway(Endpoint(GATEWAY)) as gw:
        with Endpoint(PROVIDER) as provider:
            for _ in range(2):  # registered, then renewed
                ack = await provider.request(
                    gw.listen, m.DatasetRecord("corpus", str(PROVIDER.peer_id), time.time() + 600)
                )
                assert ack.message == m.Ack()
            async with trio.open_nursery() as nursery:
                for n in range(1000):

                    async def register(n: int = n) -> None:
                        who = Identity.from_seed(n.to_bytes(4, "big") * 8)
                        with Endpoint(who) as ep:
                            record = m.DatasetRecord("corpus", str(who.peer_id), time.time() + 600)
                            await ep.request(gw.listen, record, timeout=20)

                    nursery.start_soon(register)
                    if n % 100 == 99:
                        await trio.lowlevel.checkpoint()
            found = await provider.request(gw.listen, m.Lookup(dataset="corpus"))
            # A valid record padded with an unknown 500 KB field (unknown fields are ignored):
            padded = msgspec.msgpack.encode(
                {
                    "t": "peer_record",
                    "peer": str(PROVIDER.peer_id),
                    "addresses": ["tcp://10.0.0.1:7200"],
                    "expires": time.time() + 600,
                    "pad": b"x" * 500_000,
                }
            )
            sender, ts, msg_id = PROVIDER.peer_id.raw, int(time.time() * 1000), os.urandom(16)
            sig = PROVIDER.sign(signing_bytes(sender, ts, msg_id, padded))
            envelope = msgspec.msgpack.encode([1, sender, ts, msg_id, padded, sig])
            try:
                await provider.request_envelope(gw.listen, envelope)
                refused = "accepted"
            except NetError as exc:
                refused = exc.cause
    assert isinstance(found.message, m.LookupReply)
    records = found.message.records
    assert len(records) == 64
    first = open_record(records[0])
    assert isinstance(first, Opened)
    assert first.sender == PROVIDER.peer_id
    assert len(found.envelope) < 1 << 20
    assert refused == "record_too_large"


async def test_a_worker_registers_again_as_soon_as_a_restarted_gateway_is_back(
    tmp_path: Path,
) -> None:
    """The gateway restarts on the same addresses with an empty directory: the worker's peer
    record is back within seconds (it used to wait for its 100 s renewal)."""
    ports = [free_port() for _ in range(3)]
    listen, ingest, publish = (f"tcp://127.0.0.1:{p}" for p in ports)
    settings = worker_settings(tmp_path, listen, fixture("exit", "0"))
    async with trio.open_nursery() as nursery:
        first = Gateway(Endpoint(GATEWAY), listen=listen, ingest=ingest, publish=publish)
        gateway_scope = trio.CancelScope()
        nursery.start_soon(_run_gateway, first, gateway_scope)
        worker = await nursery.start(run_worker, settings)
        with Endpoint(SCHED) as asker:
            with trio.fail_after(20):
                await wait_healthy(asker, worker)
                while not first.directory.peers:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            gateway_scope.cancel()
            await trio.sleep(1.0)
            second = Gateway(Endpoint(GATEWAY), listen=listen, ingest=ingest, publish=publish)
            nursery.start_soon(_run_gateway, second, trio.CancelScope())
            # A deadline for the reconnect, not a measurement: before the fix the record came
            # back only with the next renewal, about 100 s later.
            with trio.fail_after(20):
                while not second.directory.peers:  # noqa: ASYNC110
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert set(second.directory.peers) == {str(load_key_file(settings.node_key).peer_id)}


async def _run_gateway(gateway: Gateway, scope: trio.CancelScope) -> None:
    with scope, gateway.transport:
        await gateway.run()
