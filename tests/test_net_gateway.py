"""The gateway over real NNG sockets: relay, two gateways de-duplicated, forged ads, records."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from hypha_sm.net.transport import Endpoint, NetConfig, NetError, Subscription
from hypha_sm.roles.gateway.gateway import Gateway, GatewayAddresses
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import (
    Ack,
    Advertisement,
    Executor,
    Health,
    HealthReply,
    Lookup,
    LookupReply,
    PeerRecord,
    Resources,
)

pytestmark = pytest.mark.net

SCHEDULER = Identity.from_seed(bytes([3]) * 32)
WORKER = Identity.from_seed(bytes([4]) * 32)
FORGER = Identity.from_seed(bytes([5]) * 32)


def advert(n: int, scheduler: Identity = SCHEDULER) -> Advertisement:
    return Advertisement(
        request_id=f"req-{n}",
        scheduler=str(scheduler.peer_id),
        reply_address="tcp://127.0.0.1:1",
        resources=Resources(cpu=1),
        executors=(Executor(cls="train", name="diloco-transformer"),),
        bid=100.0,
        expires=time.time() + 5,
    )


@asynccontextmanager
async def gateway(seed: int) -> AsyncIterator[tuple[Gateway, GatewayAddresses]]:
    with Endpoint(Identity.from_seed(bytes([seed]) * 32), NetConfig()) as transport:
        gw = Gateway(
            transport,
            listen="tcp://127.0.0.1:0",
            ingest="tcp://127.0.0.1:0",
            publish="tcp://127.0.0.1:0",
        )
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(gw.run)
            yield gw, addresses
            nursery.cancel_scope.cancel()


async def take(sub: Subscription, n: int) -> list[Opened]:
    got = []
    with trio.fail_after(10):
        while len(got) < n:
            got.append(await sub.receive())
    return got


async def wait_connected(*counts: object) -> None:
    with trio.fail_after(10):
        while not all(c() for c in counts):  # type: ignore[operator]  # noqa: ASYNC110 - NNG has no connect event
            await trio.sleep(0.01)
    await trio.sleep(0.05)  # NNG finishes subscribing just after the pipe is up


async def test_advertisements_reach_workers_signed_by_the_scheduler_not_the_gateway() -> None:
    """scheduler → gateway → worker: the worker verifies the scheduler's own signature."""
    async with gateway(10) as (gw, addr):
        with (
            Endpoint(SCHEDULER) as sched,
            Endpoint(WORKER) as work,
            work.subscribe(dial=[addr.publish]) as sub,
            sched.publisher(dial=[addr.ingest]) as pub,
        ):
            await wait_connected(lambda: sub.connections, lambda: pub.connections)
            for n in range(5):
                await pub.publish(advert(n))
            got = await take(sub, 5)
    assert [o.message.request_id for o in got] == [f"req-{n}" for n in range(5)]  # type: ignore[union-attr]
    assert {o.sender for o in got} == {SCHEDULER.peer_id}
    assert gw.stats.relayed == 5


async def test_two_gateways_deliver_each_advertisement_once() -> None:
    """A worker dialling both gateways gets every advertisement once; the copy is counted."""
    async with gateway(11) as (_, a), gateway(12) as (_, b):
        with (
            Endpoint(SCHEDULER) as sched,
            Endpoint(WORKER) as work,
            work.subscribe(dial=[a.publish, b.publish]) as sub,
            sched.publisher(dial=[a.ingest, b.ingest]) as pub,
        ):
            await wait_connected(lambda: sub.connections == 2, lambda: pub.connections == 2)
            for n in range(10):
                await pub.publish(advert(n))
            got = await take(sub, 10)
            with trio.move_on_after(0.5):
                extra = await sub.receive()
                pytest.fail(f"delivered twice: {extra}")
            stats = work.stats()
    assert sorted(o.message.request_id for o in got) == sorted(f"req-{n}" for n in range(10))  # type: ignore[union-attr]
    assert stats.duplicates == 10


async def test_an_advertisement_signed_by_someone_else_is_not_relayed() -> None:
    """The gateway refuses an ad whose scheduler field is not its signer, and counts it."""
    async with gateway(13) as (gw, addr):
        with (
            Endpoint(FORGER) as forger,
            Endpoint(SCHEDULER) as sched,
            Endpoint(WORKER) as work,
            work.subscribe(dial=[addr.publish]) as sub,
            forger.publisher(dial=[addr.ingest]) as bad,
            sched.publisher(dial=[addr.ingest]) as good,
        ):
            await wait_connected(
                lambda: sub.connections, lambda: bad.connections, lambda: good.connections
            )
            await bad.publish(advert(1, scheduler=SCHEDULER))  # claims to be SCHEDULER
            await good.publish(advert(2))
            (only,) = await take(sub, 1)
    assert only.message.request_id == "req-2"  # type: ignore[union-attr]
    assert gw.stats.refused == {"not_author": 1}


async def test_peer_records_are_stored_from_their_author_and_looked_up_signed() -> None:
    """A node registers its address; anyone looks it up and verifies the node's signature."""
    async with gateway(14) as (gw, addr):
        with Endpoint(WORKER) as work, Endpoint(SCHEDULER) as sched:
            record = PeerRecord(str(WORKER.peer_id), ("tcp://127.0.0.1:7200",), time.time() + 60)
            answer = await work.request(addr.listen, record, expect=gw.transport.peer_id)
            assert answer.message == Ack()
            forged = PeerRecord(str(WORKER.peer_id), ("tcp://evil:1",), time.time() + 60)
            with pytest.raises(NetError) as refused:
                await sched.request(addr.listen, forged)
            assert (refused.value.reason, refused.value.cause) == ("refused", "not_record_author")
            found = await sched.request(addr.listen, Lookup(peer=str(WORKER.peer_id)))
            health = await sched.request(addr.listen, Health())
    assert isinstance(found.message, LookupReply)
    (signed,) = found.message.records
    opened = Endpoint(SCHEDULER)._opener.open(signed, time.time())
    assert isinstance(opened, Opened)
    assert opened.sender == WORKER.peer_id
    assert opened.message == record
    assert health.message == HealthReply(True)
