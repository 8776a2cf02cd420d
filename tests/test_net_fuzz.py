"""Fuzzing the transport with hostile request bytes: the server never breaks, and counts add up.

The pure decoder is fuzzed in ``tests/test_wire.py``; here the bytes go through a real server
loop: Hypothesis against the in-memory transport (with trio's autojumping clock, so waiting
out timeouts costs nothing), and a seeded burst of mutations over a real NNG socket.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st

from hypha_sm.net.memory import MemoryEndpoint, MemoryNetwork
from hypha_sm.net.transport import Endpoint, NetConfig, NetError, Transport
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import LeaseRenewed, Message, RenewLease
from tests.hostile import hostile_msgpack, msgpack_tower

SERVER = Identity.from_seed(b"s" * 32)
CLIENT = Identity.from_seed(b"c" * 32)
CONFIG = NetConfig(recv_max_size=2048)
#: Repeat a ~190-byte envelope: as is, over the 2 KiB limit, over the 4 KiB hard limit.
STRETCH = (1, 12, 25)


async def renew(opened: Opened) -> Message:
    assert isinstance(opened.message, RenewLease)  # anything else raises: a handler error
    return LeaseRenewed(opened.message.lease_id, expires=1.0)


def mutate(data: bytes, how: int, where: int, byte: int) -> bytes:
    """One of: flip a byte, truncate, insert a byte, duplicate the tail."""
    i = where % (len(data) + 1)
    if how == 0 and data:
        i %= len(data)
        return data[:i] + bytes([data[i] ^ (byte or 1)]) + data[i + 1 :]
    if how == 1:
        return data[:i]
    if how == 2:
        return data[:i] + bytes([byte]) + data[i:]
    return data + data[i:]


async def hammer(server: Transport, client: Transport, address: str, bad: list[bytes]) -> None:
    """Send every hostile envelope at once, then a good request; check what the server counted.

    A good request goes first, so the client's connection is up before the burst: otherwise, on
    a loaded machine, a request could time out before its connection exists (``unreachable``),
    which says nothing about the server.
    """
    outcomes: list[str] = []
    warm = await client.request(address, RenewLease("warm-up"))
    assert warm.message == LeaseRenewed("warm-up", expires=1.0)

    async def one(data: bytes) -> None:
        try:
            answer = await client.request_envelope(address, data, timeout=1.0)
        except NetError as exc:
            outcomes.append(exc.reason)
        else:
            assert answer.sender == SERVER.peer_id
            outcomes.append("answered")

    async with trio.open_nursery() as nursery:
        for data in bad:
            nursery.start_soon(one, data)
    good = await client.request(address, RenewLease("still-here"))
    assert good.message == LeaseRenewed("still-here", expires=1.0)
    stats = server.stats()
    assert len(outcomes) == len(bad)
    assert set(outcomes) <= {"answered", "timeout", "refused", "rejected", "connection_lost"}
    # Whatever got a signed answer was counted by the server; handled requests were answered
    # unless their connection was cut (a frame over the hard limit drops the whole connection,
    # and with it the answers in flight on it).
    signed = sum(outcomes.count(o) for o in ("answered", "refused", "rejected"))
    assert stats.accepted + sum(stats.rejected.values()) >= signed + 2
    handled = stats.accepted - stats.handler_errors
    answered = outcomes.count("answered") + 2
    assert answered <= handled <= answered + outcomes.count("connection_lost")


async def _memory_case(bad: list[bytes]) -> None:
    network = MemoryNetwork()
    with (
        MemoryEndpoint(network, SERVER, CONFIG) as server,
        MemoryEndpoint(network, CLIENT, NetConfig()) as client,
    ):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(server.serve, "mem:fuzz", renew)
            await hammer(server, client, address, bad)
            nursery.cancel_scope.cancel()


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            hostile_msgpack(),
            st.tuples(
                st.integers(0, 3),
                st.integers(0, 10_000),
                st.integers(0, 255),
                st.sampled_from(STRETCH),
            ),
        ),
        max_size=8,
    )
)
@example([msgpack_tower(10_000), msgpack_tower(10_000, b"\x81\xa1k")])
def test_fuzz_hostile_requests_in_memory(cases: list[bytes | tuple[int, int, int, int]]) -> None:
    """Any bytes, deep or wide structures, or a mutated valid request (maybe stretched past
    the limits), leave the server answering, with every request counted."""
    client = Identity.from_seed(b"c" * 32)
    bad = []
    for i, case in enumerate(cases):
        if isinstance(case, bytes):
            bad.append(case)
            continue
        how, where, byte, stretch = case
        envelope = MemoryEndpoint(MemoryNetwork(), client).seal(RenewLease(f"lease-{i}"))
        bad.append(mutate(envelope, how, where, byte) * stretch)
    trio.run(_memory_case, bad, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.net
async def test_a_burst_of_mutated_requests_over_tcp_leaves_the_server_serving() -> None:
    """300 seeded mutations of valid requests, all in flight at once over a real socket, then
    frames over the hard limit (each cuts the client's connection, and with it everything in
    flight on it, so they go last)."""
    rng = random.Random(20261124)
    with Endpoint(SERVER, CONFIG) as server, Endpoint(CLIENT) as client:
        bad = []
        for i in range(300):
            envelope = client.seal(RenewLease(f"lease-{i}"))
            how, where, byte = rng.randrange(4), rng.randrange(10_000), rng.randrange(256)
            bad.append(mutate(envelope, how, where, byte) * rng.choices(STRETCH[:2], (9, 1))[0])
        async with trio.open_nursery() as nursery:
            address = await nursery.start(server.serve, "tcp://127.0.0.1:0", renew)
            await hammer(server, client, address, bad)
            assert server.stats().rejected["oversized"] > 0
            huge = [client.seal(RenewLease(f"huge-{i}")) * STRETCH[2] for i in range(3)]
            await hammer(server, client, address, huge)
            assert server.stats().connection_errors >= 1
            nursery.cancel_scope.cancel()
