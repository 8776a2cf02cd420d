"""One unsigned frame nested 1,000 deep, sent to every port of every role over real sockets.

The frame of the report: about 1.6 KB of msgpack, an envelope with an all-zero signature and a
7th element nested ~1,000 levels deep. Before the fix it raised ``RecursionError`` in the
envelope decoder and killed the worker (request and bulk ports), the gateway (request and
ingest ports) and the scheduler, and an honest advertisement whose offers a hostile scheduler
answered with it took down every worker that offered. Now each is a counted ``too_deep``
rejection and every node goes on serving.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import msgspec
import pynng
import pytest
import trio

from hypha_sm.config.scheduler import JobSettings
from hypha_sm.net.bulk import MAGIC
from hypha_sm.net.relay import frame as relay_frame
from hypha_sm.net.streams import open_stream, parse_address
from hypha_sm.net.transport import Endpoint, NetError
from hypha_sm.roles.data.node import DataNode, load_datasets, plan_of
from hypha_sm.roles.gateway.gateway import Gateway
from hypha_sm.roles.scheduler.scheduler import Scheduler
from hypha_sm.roles.worker.run import run_worker
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import VERSION, Opened
from hypha_sm.wire.identity import Identity
from tests.hostile import CRASH_DEPTH, msgpack_tower
from tests.netkit import LOOPBACK, wait_connected, wait_healthy
from tests.nodeproc import advertise
from tests.test_data_node import dataset, settings
from tests.test_run_worker import fixture, worker_settings

pytestmark = pytest.mark.net

GATEWAY = Identity.from_seed(bytes([90]) * 32)
SCHED = Identity.from_seed(bytes([91]) * 32)
HOSTILE = Identity.from_seed(bytes([92]) * 32)
TRAIN = m.Executor(cls="train", name="echo")
_enc = msgspec.msgpack.encode


def crash_frame() -> bytes:
    """The report's frame: a zero-signed envelope with a deep 7th element (~1.6 KB)."""
    head = b"\x97" + b"".join(
        _enc(x) for x in (VERSION, b"\x00" * 38, 0, bytes(16), b"", bytes(64))
    )
    return head + msgpack_tower(CRASH_DEPTH, b"\x91")


async def send_raw_request(address: str, data: bytes) -> bytes | None:
    """Send bytes on a bare Req0 socket; the answer, or None if none came in 0.5 s."""
    with pynng.Req0(dial=address, recv_timeout=500, send_timeout=2000) as sock:
        await sock.asend(data)
        try:
            answer: bytes = await sock.arecv()
        except pynng.Timeout:
            return None
        return answer


async def still_answers(endpoint: Endpoint, address: str) -> None:
    answer = await endpoint.request(address, m.Health(), timeout=5)
    assert isinstance(answer.message, m.HealthReply)


async def test_the_crash_frame_on_every_port_of_a_gateway_and_a_worker_is_counted_not_fatal(
    tmp_path: Path,
) -> None:
    """Worker request port, worker bulk port, gateway request and ingest ports, and a worker's
    subscription to a hostile gateway: each refuses the frame as too_deep, and the network
    still runs a job end to end afterwards."""
    frame = crash_frame()
    assert 1000 < len(frame) < 2000
    gateway = Gateway(Endpoint(GATEWAY), listen=LOOPBACK, ingest=LOOPBACK, publish=LOOPBACK)
    statuses: list[m.JobStatus] = []
    offers: list[m.WorkerOffer] = []

    async def sched_handle(opened: Opened) -> m.Message:
        if isinstance(opened.message, m.WorkerOffer):
            offers.append(opened.message)
            return m.OfferAck(opened.message.lease_id)
        assert isinstance(opened.message, m.JobStatus)
        statuses.append(opened.message)
        return m.StatusAck(opened.message.job_id)

    # A hostile "gateway": it says where to subscribe, then publishes the frame there.
    hostile = Endpoint(HOSTILE)
    hostile_pub = pynng.Pub0(listen="tcp://127.0.0.1:0")
    hostile_publish = hostile_pub.listeners[0].url

    async def hostile_handle(opened: Opened) -> m.Message:
        if isinstance(opened.message, m.GatewayInfo):
            return m.GatewayInfoReply(ingest="tcp://127.0.0.1:9", publish=hostile_publish)
        return m.Ack()

    bulk = f"ipc://{tmp_path}/bulk.sock"
    with gateway.transport, hostile, hostile_pub, Endpoint(SCHED) as sched:
        async with trio.open_nursery() as nursery:
            gw = await nursery.start(gateway.run)
            hostile_listen = await nursery.start(hostile.serve, LOOPBACK, hostile_handle)
            sched_address = await nursery.start(sched.serve, LOOPBACK, sched_handle)
            settings = worker_settings(
                tmp_path,
                gw.listen,
                fixture("exit", "0"),
                bulk_listen_address=bulk,
            )
            settings.gateway_addresses.append(hostile_listen)
            worker = await nursery.start(run_worker, settings)
            with trio.fail_after(30):
                await wait_healthy(sched, worker)
                # 1. the worker's request port and 2. the gateway's request port
                assert await send_raw_request(worker, frame) is None
                assert await send_raw_request(gw.listen, frame) is None
                # 3. the gateway's ingest port, as a publisher would send it
                with pynng.Pub0(dial=gw.ingest) as pub:
                    while not pub.pipes:  # noqa: ASYNC110 - NNG has no connect event
                        await trio.sleep(0.01)
                    for seq in range(1, 4):
                        await pub.asend(relay_frame(seq, frame))
                    while not gateway.transport.stats().rejected.get("too_deep"):  # noqa: ASYNC110
                        await trio.sleep(0.01)
                # 4. the worker's subscription, from the hostile gateway
                while not hostile_pub.pipes:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                for seq in range(1, 4):
                    await hostile_pub.asend(relay_frame(seq, frame))
                # 5. the worker's bulk port
                for _ in range(3):
                    stream = await open_stream(parse_address(bulk))
                    async with stream:
                        await stream.send_all(MAGIC + struct.pack(">I", len(frame)) + frame)
                        refusal = b""  # a signed refusal, then the server hangs up
                        while chunk := await stream.receive_some(1024):
                            refusal += chunk
                        assert b"too_deep" in refusal
                await trio.sleep(0.2)
                await still_answers(sched, worker)
                await still_answers(sched, gw.listen)
                # The whole path still works: advertise, offer, accept, dispatch, finish.
                with sched.publisher(dial=[gw.ingest]) as pub:
                    await wait_connected(pub)
                    await advertise(pub, SCHED, "req-after", sched_address)
                    while not offers:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                lease = offers[0].lease_id
                await sched.request(worker, m.RenewLease(lease))
                await sched.request(worker, m.DispatchJob("job-after", lease, TRAIN, "{}"))
                while not any(s.status == "finished" for s in statuses):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            rejected = gateway.transport.stats().rejected
            nursery.cancel_scope.cancel()
    assert rejected["too_deep"] >= 2  # its request port and its ingest


async def test_a_scheduler_survives_the_frame_on_its_port_and_as_a_workers_answer(
    tmp_path: Path,
) -> None:
    """The scheduler's request port takes the frame; a hostile worker that offers and then
    answers the acceptance with the frame is dropped, and the scheduler reports why."""
    frame = crash_frame()
    job = JobSettings(
        executor={"class": "train", "name": "echo"},
        resources={"cpu": 1, "memory": 1},
        workers=1,
        bid=100.0,
        advertise_timeout=3.0,
        timeout=5.0,
    )
    gateway = Gateway(Endpoint(GATEWAY), listen=LOOPBACK, ingest=LOOPBACK, publish=LOOPBACK)
    # The hostile worker answers every request on its "request port" with the frame.
    worker_sock = pynng.Rep0(listen="tcp://127.0.0.1:0")
    worker_address = worker_sock.listeners[0].url

    async def answer_with_the_frame() -> None:
        while True:
            await worker_sock.arecv()
            await worker_sock.asend(frame)

    with gateway.transport, worker_sock, Endpoint(SCHED) as sched_ep, Endpoint(HOSTILE) as bad:
        async with trio.open_nursery() as nursery:
            gw = await nursery.start(gateway.run)
            nursery.start_soon(answer_with_the_frame)
            scheduler = Scheduler(sched_ep, job, gateways=[gw.listen], address=LOOPBACK)
            outcome: list[object] = []

            async def run_scheduler(*, task_status: trio.TaskStatus[str]) -> None:
                outcome.append(await scheduler.run(task_status=task_status))

            sched_address = await nursery.start(run_scheduler)
            with trio.fail_after(20):
                assert await send_raw_request(sched_address, frame) is None
                await still_answers(bad, sched_address)
                # The hostile worker subscribes, sees the advertisement and offers.
                with bad.subscribe(dial=[gw.publish]) as sub:
                    ad = (await sub.receive()).message
                    assert isinstance(ad, m.Advertisement)
                    offer = m.WorkerOffer(
                        "lease-x",
                        ad.request_id,
                        1.0,
                        ad.resources,
                        time.time() + 1,
                        worker_address,
                    )
                    answer = await bad.request(sched_address, offer)
                    assert answer.message == m.OfferAck("lease-x")
                while not outcome:  # noqa: ASYNC110 - the scheduler gives up after its timeout
                    await trio.sleep(0.05)
            stats = sched_ep.stats()
            nursery.cancel_scope.cancel()
    assert stats.rejected["too_deep"] >= 2  # its own port, and the worker's answer
    assert "workers accepted" in outcome[0].reason  # type: ignore[attr-defined]


async def test_a_worker_survives_a_scheduler_answering_its_offer_with_the_frame(
    tmp_path: Path,
) -> None:
    """An honest advertisement through an honest gateway; the offer's answer is the frame.
    The worker counts it, releases the offer, and goes on taking advertisements."""
    frame = crash_frame()
    gateway = Gateway(Endpoint(GATEWAY), listen=LOOPBACK, ingest=LOOPBACK, publish=LOOPBACK)
    sched_sock = pynng.Rep0(listen="tcp://127.0.0.1:0")
    reply_address = sched_sock.listeners[0].url
    offers = 0

    async def answer_with_the_frame() -> None:
        nonlocal offers
        while True:
            await sched_sock.arecv()
            offers += 1
            await sched_sock.asend(frame)

    with gateway.transport, sched_sock, Endpoint(SCHED) as sched:
        async with trio.open_nursery() as nursery:
            gw = await nursery.start(gateway.run)
            nursery.start_soon(answer_with_the_frame)
            workers = []
            for n in range(2):
                (tmp_path / f"w{n}").mkdir()
                settings = worker_settings(tmp_path / f"w{n}", gw.listen, fixture("exit", "0"))
                workers.append(await nursery.start(run_worker, settings))
            with trio.fail_after(20), sched.publisher(dial=[gw.ingest]) as pub:
                await wait_connected(pub)
                for worker in workers:
                    await wait_healthy(sched, worker)
                for n in range(3):
                    await advertise(pub, SCHED, f"req-{n}", reply_address)
                    while offers < 2 * (n + 1):  # noqa: ASYNC110 - both workers offer each time
                        await trio.sleep(0.02)
                    await trio.sleep(0.6)  # the failed offer released, the next ad is offered
                for worker in workers:
                    await still_answers(sched, worker)
            nursery.cancel_scope.cancel()
    assert offers == 6


async def test_a_data_node_survives_the_frame_on_its_port_and_as_a_grant(tmp_path: Path) -> None:
    """The data node's request port takes the frame; a slice fetch whose grant is a deep
    structure is refused as a bad grant; the node keeps answering."""
    directory = dataset(tmp_path)
    config = settings(tmp_path, "tcp://127.0.0.1:9", directory)
    datasets = load_datasets(config.datasets)
    deep_grant = msgpack_tower(400, b"\x81\xa1k")[:1000]
    with Endpoint(Identity.from_seed(bytes([93]) * 32)) as dn, Endpoint(HOSTILE) as bad:
        node = DataNode(dn, datasets, plan_of(config, datasets), gateways=[], address=LOOPBACK)
        async with trio.open_nursery() as nursery:
            address = await nursery.start(node.run)
            with trio.fail_after(20):
                assert await send_raw_request(address, crash_frame()) is None
                await still_answers(bad, address)
                with pytest.raises(NetError, match="bad_grant"):
                    await bad.request(address, m.SliceFetch(deep_grant, "t", "tcp://127.0.0.1:9"))
                await still_answers(bad, address)
            stats = dn.stats()
            nursery.cancel_scope.cancel()
    assert stats.rejected["too_deep"] >= 1
