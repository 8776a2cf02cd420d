"""The transport: signed request/response and pub/sub over NNG and in memory, hostile input.

Every behavioural test runs on real NNG sockets (marked ``net``) and on the in-memory
transport, which must behave the same for the layers above. Real time, short timeouts, no
timing assertions.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pynng
import pytest
import trio

from hypha_sm.net.memory import MemoryEndpoint, MemoryNetwork
from hypha_sm.net.transport import (
    HARD_LIMIT_FACTOR,
    Endpoint,
    NetConfig,
    NetError,
    Transport,
)
from hypha_sm.wire.envelope import (
    VERSION,
    Envelope,
    Opened,
    encode_payload,
    seal,
    signing_bytes,
)
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import (
    Advertisement,
    Executor,
    Health,
    HealthReply,
    LeaseRenewed,
    Message,
    Progress,
    RenewLease,
    Resources,
    UpdateStarted,
)

SERVER = Identity.from_seed(b"s" * 32)
CLIENT = Identity.from_seed(b"c" * 32)
OTHER = Identity.from_seed(b"o" * 32)
SCHEDULER = Identity.from_seed(b"h" * 32)

SMALL = 4096  # the server's envelope limit in the hostile tests
SHORT = 0.3  # seconds to wait where no answer is expected

Make = Callable[..., Transport]


class Net:
    """Builds endpoints and fresh addresses for one transport kind."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.memory = MemoryNetwork()
        self._n = 0

    def endpoint(
        self, identity: Identity, config: NetConfig | None = None, **kw: object
    ) -> Transport:
        if self.kind == "memory":
            return MemoryEndpoint(self.memory, identity, config, **kw)  # type: ignore[arg-type]
        return Endpoint(identity, config, **kw)  # type: ignore[arg-type]

    def address(self) -> str:
        self._n += 1
        if self.kind == "ipc":
            return f"ipc://{self.tmp_path}/n{self._n}.ipc"
        return "tcp://127.0.0.1:0"  # NNG (and the memory network) picks the port


NET = pytest.param("tcp", marks=pytest.mark.net)
IPC = pytest.param("ipc", marks=pytest.mark.net)


@pytest.fixture(params=[NET, "memory"])
def net(request: pytest.FixtureRequest, tmp_path: Path) -> Net:
    return Net(request.param, tmp_path)


@pytest.fixture(params=[NET, IPC, "memory"])
def any_net(request: pytest.FixtureRequest, tmp_path: Path) -> Net:
    return Net(request.param, tmp_path)


class Renewer:
    """A handler that renews leases (sleeping a little if asked) and counts its calls."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay

    async def __call__(self, opened: Opened) -> Message:
        self.calls += 1
        if self.delay:
            await trio.sleep(self.delay)
        msg = opened.message
        if isinstance(msg, RenewLease):
            return LeaseRenewed(msg.lease_id, expires=1000.0)
        if isinstance(msg, Health):
            return HealthReply(healthy=True)
        raise RuntimeError(f"no handler for {type(msg).__name__}")


@asynccontextmanager
async def serving(server: Transport, address: str, handler: Renewer) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        bound: str = await nursery.start(server.serve, address, handler)
        yield bound
        nursery.cancel_scope.cancel()


def forge(
    identity: Identity, payload: bytes, *, ts: float | None = None, sig: bytes | None = None
) -> bytes:
    """An envelope around any payload bytes, signed by ``identity`` unless ``sig`` is given."""
    ts_ms = int((time.time() if ts is None else ts) * 1000)
    msg_id = os.urandom(16)
    sender = identity.peer_id.raw
    if sig is None:
        sig = identity.sign(signing_bytes(sender, ts_ms, msg_id, payload))
    return msgspec.msgpack.encode(Envelope(VERSION, sender, ts_ms, msg_id, payload, sig))


async def test_round_trip(any_net: Net) -> None:
    """A renewal to a named peer goes through a session (one signed handshake, then a sealed
    frame each way) and comes back from the server; a request to an unnamed peer is a signed
    envelope each way; over every transport."""
    handler = Renewer()
    with any_net.endpoint(SERVER) as server, any_net.endpoint(CLIENT) as client:
        async with serving(server, any_net.address(), handler) as address:
            answer = await client.request(address, RenewLease("lease-1"), expect=SERVER.peer_id)
            assert answer.message == LeaseRenewed("lease-1", expires=1000.0)
            assert answer.sender == SERVER.peer_id
            assert answer.envelope == b""  # sealed, not signed: nothing to hand on
            again = await client.request(address, RenewLease("lease-2"), expect=SERVER.peer_id)
            assert again.message == LeaseRenewed("lease-2", expires=1000.0)
            health = await client.request(address, Health())
            assert health.message == HealthReply(healthy=True)
            assert health.envelope != b""
        # the handshake, two sealed renewals, the signed health request
        assert server.stats().accepted == 4
        assert client.stats().accepted == 4
        assert handler.calls == 3


async def test_fifty_concurrent_requests_are_each_answered_correctly(net: Net) -> None:
    """Requests in flight at once (more than the server's contexts) each get their own answer."""
    handler = Renewer(delay=0.01)
    results: dict[int, Message] = {}
    with net.endpoint(SERVER) as server, net.endpoint(CLIENT) as client:
        async with serving(server, net.address(), handler) as address:

            async def one(i: int) -> None:
                results[i] = (await client.request(address, RenewLease(f"lease-{i}"))).message

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(one, i)
    assert results == {i: LeaseRenewed(f"lease-{i}", expires=1000.0) for i in range(50)}
    assert server.stats().accepted == 50


def _stale() -> bytes:
    return forge(CLIENT, encode_payload(RenewLease("x")), ts=time.time() - 3600)


HOSTILE: list[tuple[str, Callable[[], bytes], str, str, str]] = [
    # (case, envelope, client error reason, its cause, what the server counts)
    ("garbage", lambda: b"\xc1 not msgpack at all", "timeout", "", "malformed"),
    (
        "bad_signature",
        lambda: forge(CLIENT, encode_payload(RenewLease("x")), sig=bytes(64)),
        "timeout",
        "",
        "bad_signature",
    ),
    ("stale", _stale, "refused", "stale", "stale"),
    (
        "unknown_message",
        lambda: forge(CLIENT, msgspec.msgpack.encode({"t": "launch_missiles"})),
        "refused",
        "unknown_message",
        "unknown_message",
    ),
    (
        "malformed_payload",
        lambda: forge(CLIENT, msgspec.msgpack.encode({"t": "renew_lease"})),
        "refused",
        "malformed_payload",
        "malformed_payload",
    ),
    ("oversized", lambda: b"\x00" * (SMALL + 1), "timeout", "", "oversized"),
]


@pytest.mark.parametrize(
    ("case", "make", "reason", "cause", "counted"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
async def test_hostile_requests_are_refused_counted_logged_and_the_server_keeps_serving(
    net: Net,
    caplog: pytest.LogCaptureFixture,
    case: str,
    make: Callable[[], bytes],
    reason: str,
    cause: str,
    counted: str,
) -> None:
    """Each bad request never reaches the handler, is counted by reason and logged at debug;
    unauthenticated junk gets no answer, signed-but-refused input gets a sealed Refused; the
    next good request is answered."""
    caplog.set_level(logging.DEBUG, logger="hypha_sm.net")
    handler = Renewer()
    small = NetConfig(recv_max_size=SMALL)
    with net.endpoint(SERVER, small) as server, net.endpoint(CLIENT) as client:
        async with serving(server, net.address(), handler) as address:
            with pytest.raises(NetError) as caught:
                await client.request_envelope(address, make(), timeout=SHORT)
            assert (caught.value.reason, caught.value.cause) == (reason, cause)
            assert handler.calls == 0
            good = await client.request(address, RenewLease("after"), expect=SERVER.peer_id)
            assert good.message == LeaseRenewed("after", expires=1000.0)
        stats = server.stats()
    assert stats.rejected == {counted: 1}
    assert stats.accepted == 2  # the session's handshake and the sealed renewal
    assert handler.calls == 1
    assert f"rejected ({counted})" in caplog.text
    assert client.stats().failed_requests == {reason: 1}


async def test_a_replayed_request_is_refused_and_the_original_was_served(net: Net) -> None:
    """The same envelope sent twice is served once; the copy gets Refused("replayed")."""
    handler = Renewer()
    with net.endpoint(SERVER) as server, net.endpoint(CLIENT) as client:
        async with serving(server, net.address(), handler) as address:
            envelope = client.seal(RenewLease("once"))
            first = await client.request_envelope(address, envelope)
            assert first.message == LeaseRenewed("once", expires=1000.0)
            with pytest.raises(NetError) as caught:
                await client.request_envelope(address, envelope)
            assert (caught.value.reason, caught.value.cause) == ("refused", "replayed")
        assert server.stats().rejected == {"replayed": 1}
    assert handler.calls == 1


async def test_a_frame_over_the_hard_limit_is_cut_off_and_the_server_keeps_serving(
    net: Net,
) -> None:
    """A frame beyond NNG's hard limit closes that connection without being buffered or
    handled: the requester sees connection_lost, the server counts a connection error."""
    handler = Renewer()
    small = NetConfig(recv_max_size=SMALL)
    with net.endpoint(SERVER, small) as server, net.endpoint(CLIENT) as client:
        async with serving(server, net.address(), handler) as address:
            huge = b"\x00" * (HARD_LIMIT_FACTOR * SMALL + 100)
            with pytest.raises(NetError) as caught:
                await client.request_envelope(address, huge, timeout=2.0)
            assert caught.value.reason == "connection_lost"
            good = await client.request(address, RenewLease("after"))
            assert good.message == LeaseRenewed("after", expires=1000.0)
            assert server.stats().connection_errors >= 1
    assert handler.calls == 1


async def test_an_answer_from_the_wrong_peer_is_rejected(net: Net) -> None:
    """With ``expect``, an answer signed by anyone else is refused as sender_mismatch."""
    with net.endpoint(SERVER) as server, net.endpoint(CLIENT) as client:
        async with serving(server, net.address(), Renewer()) as address:
            with pytest.raises(NetError) as caught:
                await client.request(address, RenewLease("x"), expect=OTHER.peer_id)
            assert (caught.value.reason, caught.value.cause) == ("rejected", "sender_mismatch")
    assert client.stats().rejected == {"sender_mismatch": 1}


async def test_an_answer_that_fails_verification_is_rejected(net: Net) -> None:
    """A server whose clock is an hour off sends stale answers; the client refuses them."""
    with (
        net.endpoint(SERVER, wall=lambda: time.time() - 3600) as server,
        net.endpoint(CLIENT) as client,
    ):
        # The server refuses our request as stale too (its clock), and says so, stale-stamped.
        async with serving(server, net.address(), Renewer()) as address:
            with pytest.raises(NetError) as caught:
                await client.request(address, RenewLease("x"))
    assert (caught.value.reason, caught.value.cause) == ("rejected", "stale")


async def test_a_failing_handler_is_answered_internal_error_and_the_server_keeps_serving(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises costs that request only: Refused("internal_error"), counted."""
    handler = Renewer()
    with net.endpoint(SERVER) as server, net.endpoint(CLIENT) as client:
        async with serving(server, net.address(), handler) as address:
            with pytest.raises(NetError) as caught:
                await client.request(address, Progress("job", UpdateStarted()))
            assert (caught.value.reason, caught.value.cause) == ("refused", "internal_error")
            good = await client.request(address, RenewLease("after"))
            assert good.message == LeaseRenewed("after", expires=1000.0)
        assert server.stats().handler_errors == 1
    assert "handler failed on Progress" in caplog.text


async def test_nobody_listening_is_unreachable(net: Net) -> None:
    """A request to an address nobody serves fails as unreachable when its timeout ends."""
    with net.endpoint(CLIENT) as client:
        address = "tcp://127.0.0.1:9" if net.kind != "memory" else "tcp://nowhere:1"
        with pytest.raises(NetError) as caught:
            await client.request(address, Health(), timeout=SHORT)
    assert caught.value.reason == "unreachable"


async def test_a_server_that_starts_late_is_still_reached(net: Net) -> None:
    """The client keeps dialling in the background: a server up within the timeout answers."""
    with net.endpoint(SERVER) as server, net.endpoint(CLIENT) as client:
        if net.kind == "memory":
            address = "tcp://late:7"
        else:  # find a free port, then release it for the server
            with pynng.Rep0() as probe:
                address = probe.listen("tcp://127.0.0.1:0").url
        answers: list[Opened] = []
        answered = trio.Event()

        async def ask() -> None:
            answers.append(await client.request(address, Health(), timeout=5.0))
            answered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await trio.sleep(0.2)
            async with serving(server, address, Renewer()):
                await answered.wait()
    assert answers[0].message == HealthReply(healthy=True)


async def test_an_envelope_over_our_own_limit_is_not_sent(net: Net) -> None:
    """A request larger than recv_max_size fails as too_large before touching the network."""
    with (
        net.endpoint(CLIENT, NetConfig(recv_max_size=100)) as client,
        pytest.raises(NetError) as caught,
    ):
        await client.request(
            net.address(), Advertisement("r", "s", "x" * 200, Resources(), (), 1.0, 2.0)
        )
    assert caught.value.reason == "too_large"


async def test_a_closed_endpoint_fails_requests_as_closed(net: Net) -> None:
    """After close, requests fail at once with reason closed."""
    client = net.endpoint(CLIENT)
    client.close()
    with pytest.raises(NetError) as caught:
        await client.request(net.address(), Health())
    assert caught.value.reason == "closed"


async def test_serving_an_address_in_use_is_a_bad_address(net: Net) -> None:
    """Two servers cannot listen on one address; the second gets bad_address."""
    with net.endpoint(SERVER) as one, net.endpoint(OTHER) as two:
        async with serving(one, net.address(), Renewer()) as address:
            with pytest.raises(NetError) as caught:
                await two.serve(address, Renewer())
    assert caught.value.reason == "bad_address"


@pytest.mark.net
async def test_raw_garbage_and_a_wrong_protocol_peer_do_not_disturb_the_server(
    tmp_path: Path,
) -> None:
    """Bytes from a plain NNG socket are rejected as malformed; a Pub0 peer dialling the Rep0
    server is refused by NNG as a protocol error and counted; good clients are still served."""
    with Endpoint(SERVER) as server, Endpoint(CLIENT) as client:
        async with serving(server, "tcp://127.0.0.1:0", Renewer()) as address:
            with pynng.Req0(dial=address, resend_time=-1) as raw:
                await raw.asend(b"hello, is this the lease office?")
                with trio.move_on_after(SHORT):
                    await raw.arecv()
            with pynng.Pub0(dial=address, block_on_dial=False):
                await trio.sleep(0.2)
            good = await client.request(address, RenewLease("after"))
            assert good.message == LeaseRenewed("after", expires=1000.0)
            stats = server.stats()
    assert stats.rejected["malformed"] == 1
    assert stats.rejected["protocol"] >= 1


# -- pub/sub ---------------------------------------------------------------------------------


def advertisement(i: int) -> Advertisement:
    return Advertisement(
        request_id=f"req-{i}",
        scheduler=str(SCHEDULER.peer_id),
        reply_address="tcp://127.0.0.1:7000",
        resources=Resources(cpu=1.0, memory=2.0),
        executors=(Executor("train", "diloco"),),
        bid=1.5,
        expires=time.time() + 60,
    )


async def connected(*sides: object, count: int = 1) -> None:
    """Wait until every publisher/subscription in ``sides`` has ``count`` connections."""
    with trio.fail_after(5):
        while any(side.connections < count for side in sides):  # type: ignore[attr-defined]  # noqa: ASYNC110 - NNG has no event for it
            await trio.sleep(0.01)


async def test_a_subscriber_of_two_gateways_gets_each_advertisement_once(net: Net) -> None:
    """Two gateways relay the scheduler's envelopes byte for byte; the worker dials both and
    sees each advertisement once (the second copy counts as a duplicate), and a forged one
    is rejected."""
    with (
        net.endpoint(SCHEDULER) as scheduler,
        net.endpoint(OTHER) as gw1,
        net.endpoint(SERVER) as gw2,
        net.endpoint(CLIENT) as worker,
        gw1.publisher(listen=[net.address()]) as pub1,
        gw2.publisher(listen=[net.address()]) as pub2,
        worker.subscribe(dial=[*pub1.addresses, *pub2.addresses]) as sub,
    ):
        await connected(pub1, pub2)
        await connected(sub, count=2)
        envelopes = [scheduler.seal(advertisement(i)) for i in range(5)]
        forged = forge(SCHEDULER, encode_payload(advertisement(99)), sig=bytes(64))
        for envelope in envelopes:
            await pub1.relay(envelope)
            await pub2.relay(envelope)
        await pub1.relay(forged)
        await pub1.publish(advertisement(5))  # signed by gateway 1 itself
        got: list[Opened] = []

        def all_counted() -> bool:
            stats = worker.stats()
            return len(got) >= 6 and stats.duplicates >= 5 and sum(stats.rejected.values()) >= 1

        with trio.fail_after(20):  # a deadline for a broken relay, not a measurement
            while not all_counted():
                with trio.move_on_after(0.05):  # frames behind the last ad are counted here
                    got.append(await sub.receive())
        stats = worker.stats()
    assert sorted(o.message.request_id for o in got) == [f"req-{i}" for i in range(6)]  # type: ignore[union-attr]
    assert {o.sender for o in got} == {SCHEDULER.peer_id, OTHER.peer_id}
    assert stats.duplicates == 5
    assert stats.rejected == {"bad_signature": 1}
    assert stats.accepted == 6
    assert stats.dropped == 0


async def test_a_gateway_relays_what_it_verified_without_signing_again(net: Net) -> None:
    """scheduler → gateway → worker: the worker sees the scheduler as the sender of the
    advertisement the gateway received and relayed (``receive_envelope``)."""
    with (
        net.endpoint(SCHEDULER) as scheduler,
        net.endpoint(OTHER) as gateway,
        net.endpoint(CLIENT) as worker,
        gateway.subscribe(listen=[net.address()]) as inbound,
        scheduler.publisher(dial=list(inbound.addresses)) as upstream,
        gateway.publisher(listen=[net.address()]) as outbound,
        worker.subscribe(dial=list(outbound.addresses)) as sub,
    ):
        await connected(inbound, upstream, outbound, sub)
        await upstream.publish(advertisement(1))
        opened, envelope = await inbound.receive_envelope()
        await outbound.relay(envelope)
        relayed = await sub.receive()
    assert relayed.sender == SCHEDULER.peer_id == opened.sender
    assert relayed.msg_id == opened.msg_id
    assert relayed.message == opened.message


async def test_a_lagging_subscriber_loses_publications_and_counts_every_one() -> None:
    """When the subscription's queue is full, frames are dropped (as NNG does) and the
    subscriber counts each from the gap in the numbering once the next frame arrives."""
    memory = MemoryNetwork()
    config = NetConfig(pubsub_buffer=4)
    with (
        MemoryEndpoint(memory, SCHEDULER) as scheduler,
        MemoryEndpoint(memory, CLIENT, config) as worker,
        scheduler.publisher(listen=["mem:ads"]) as pub,
        worker.subscribe(dial=["mem:ads"]) as sub,
    ):
        for i in range(10):
            await pub.publish(advertisement(i))
        first = [await sub.receive() for _ in range(4)]
        await pub.publish(advertisement(10))
        last = await sub.receive()
    assert [o.message.request_id for o in first] == [f"req-{i}" for i in range(4)]  # type: ignore[union-attr]
    assert last.message.request_id == "req-10"  # type: ignore[union-attr]
    assert worker.stats().dropped == 6


def padded(i: int, size: int) -> Advertisement:
    """An advertisement whose envelope is about ``size`` bytes."""
    ad = advertisement(i)
    base = len(seal(SCHEDULER, ad, time.time(), bytes(16)))
    return msgspec.structs.replace(ad, reply_address=ad.reply_address + "x" * (size - base))


async def test_publications_over_the_size_limit_are_refused(net: Net) -> None:
    """A publisher will not send an envelope over publication_max_size; a subscriber with a
    smaller limit than its gateway rejects such envelopes as oversized, and one over its hard
    limit costs the connection (a counted connection error), not memory."""
    limit = 600  # an ordinary advertisement's envelope is about 400 bytes
    small = NetConfig(publication_max_size=limit)
    with (
        net.endpoint(SCHEDULER) as scheduler,
        net.endpoint(CLIENT, small) as worker,
        scheduler.publisher(listen=[net.address()]) as pub,
        worker.subscribe(dial=list(pub.addresses)) as sub,
        trio.fail_after(5),
    ):
        await connected(pub, sub)
        with pytest.raises(NetError) as caught:
            await pub.relay(b"x" * (NetConfig().publication_max_size + 1))
        assert caught.value.reason == "too_large"
        await pub.publish(padded(0, limit + 100))
        await pub.publish(advertisement(1))
        got = await sub.receive()
        assert got.message.request_id == "req-1"  # type: ignore[union-attr]
        assert worker.stats().rejected == {"oversized": 1}
        await pub.publish(padded(2, HARD_LIMIT_FACTOR * limit + 100))
        while worker.stats().connection_errors == 0:  # noqa: ASYNC110 - NNG has no event for it
            await trio.sleep(0.01)


async def test_a_closed_subscription_ends_iteration(net: Net) -> None:
    """Closing a subscription ends ``async for`` and makes ``receive`` raise closed."""
    with net.endpoint(CLIENT) as worker:
        sub = worker.subscribe(listen=[net.address()])
        sub.close()
        assert [o async for o in sub] == []
        with pytest.raises(NetError) as caught:
            await sub.receive()
    assert caught.value.reason == "closed"


async def test_a_closed_publisher_refuses_to_publish(net: Net) -> None:
    """Publishing after close raises closed instead of vanishing."""
    with net.endpoint(SCHEDULER) as scheduler:
        pub = scheduler.publisher(listen=[net.address()])
        pub.close()
        with pytest.raises(NetError) as caught:
            await pub.publish(advertisement(0))
    assert caught.value.reason == "closed"


async def test_an_answer_too_large_for_the_peer_is_not_sent(net: Net) -> None:
    """A handler whose sealed answer exceeds recv_max_size gets Refused("internal_error")
    sent instead, and the handler error is counted."""

    async def verbose(opened: Opened) -> Message:
        return Advertisement("r", "s", "x" * 600, Resources(), (), 1.0, 2.0)

    with (
        net.endpoint(SERVER, NetConfig(recv_max_size=500)) as server,
        net.endpoint(CLIENT) as client,
    ):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(server.serve, net.address(), verbose)
            with pytest.raises(NetError) as caught:
                await client.request(address, Health())
            nursery.cancel_scope.cancel()
    assert (caught.value.reason, caught.value.cause) == ("refused", "internal_error")
    assert server.stats().handler_errors == 1


async def test_a_backlog_of_publications_is_verified_in_a_thread_in_order_once_each(
    net: Net,
) -> None:
    """Forty advertisements queued at once (and a forged one among them, and a repeat) are
    checked together in a worker thread: each good one arrives once, in order, the forged one
    and the repeat are counted, and the subscription goes on with single frames after."""
    with (
        net.endpoint(SCHEDULER) as scheduler,
        net.endpoint(CLIENT) as worker,
        scheduler.publisher(listen=[net.address()]) as pub,
        worker.subscribe(dial=list(pub.addresses)) as sub,
    ):
        await connected(pub)
        await connected(sub)
        envelopes = [scheduler.seal(advertisement(i)) for i in range(40)]
        forged = forge(SCHEDULER, encode_payload(advertisement(99)), sig=bytes(64))
        for i, envelope in enumerate(envelopes):
            await pub.relay(envelope)
            if i == 20:
                await pub.relay(forged)
                await pub.relay(envelopes[3])
        await trio.sleep(0.2)  # all of them queue before the first receive
        got = [await sub.receive() for _ in range(40)]
        await pub.publish(advertisement(40))
        last = await sub.receive()
        stats = worker.stats()
    assert [o.message.request_id for o in got] == [f"req-{i}" for i in range(40)]  # type: ignore[union-attr]
    assert last.message.request_id == "req-40"  # type: ignore[union-attr]
    assert stats.rejected == {"bad_signature": 1}
    assert stats.duplicates == 1
    assert stats.verified_in_thread >= 8
