"""Sessions: the handshake, sealed frames, replay and tampering, re-keying, and fallbacks.

The pure part (``hypha_sm.net.session``) is tested directly and fuzzed; the transport's use of
it runs over the in-memory transport (with a clock the test moves) and over real NNG sockets.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pynng
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from hypha_sm.devnet import free_port
from hypha_sm.net import session as sn
from hypha_sm.net.memory import MemoryEndpoint, MemoryNetwork
from hypha_sm.net.transport import Endpoint, NetConfig, NetError, Transport
from hypha_sm.wire.envelope import Opened, Opener, Rejection, encode_payload, seal
from hypha_sm.wire.messages import (
    DispatchJob,
    Executor,
    Health,
    HealthReply,
    LeaseRenewed,
    Message,
    Refused,
    RenewLease,
    SessionAccept,
    SessionOpen,
)
from tests.test_net_fuzz import mutate
from tests.test_net_transport import CLIENT, OTHER, SERVER


def handshake(
    lifetime: float = 60.0, budget: int = 100, now: float = 1000.0
) -> tuple[sn.ClientSession, sn.SessionTable]:
    """Both halves of one session, as the transport derives them."""
    client_key, server_key = sn.new_private_key(b"\x01" * 32), sn.new_private_key(b"\x02" * 32)
    hello = seal(
        CLIENT, SessionOpen(sn.public_bytes(client_key), str(SERVER.peer_id)), now, b"h" * 16
    )
    accept = seal(
        SERVER,
        SessionAccept(sn.public_bytes(server_key), b"S" * 16, b"h" * 16, str(CLIENT.peer_id), lifetime, budget),
        now,
        b"a" * 16,
    )  # fmt: skip
    client_keys = sn.derive_keys(client_key, sn.public_bytes(server_key), hello, accept)
    server_keys = sn.derive_keys(server_key, sn.public_bytes(client_key), hello, accept)
    assert client_keys == server_keys  # both sides hold the same two keys
    table = sn.SessionTable(capacity=4)
    table.add(CLIENT.peer_id, b"S" * 16, server_keys, now + lifetime, budget)
    client = sn.ClientSession.from_keys(b"S" * 16, client_keys, now + lifetime, budget)
    return client, table


def reason(result: object) -> str:
    assert isinstance(result, tuple), result
    rejection, _ = result
    assert isinstance(rejection, Rejection)
    return rejection.reason


# -- the pure part ---------------------------------------------------------------------------------


def test_a_sealed_request_opens_once_and_its_answer_opens_only_for_that_request() -> None:
    client, table = handshake()
    seq, frame = client.seal(b"payload")
    opened = table.open(frame, 1000.0)
    assert isinstance(opened, sn.OpenedFrame)
    assert (opened.seq, opened.payload, opened.session.client) == (seq, b"payload", CLIENT.peer_id)
    answer = opened.session.seal_answer(seq, b"answer")
    assert client.open_answer(answer, seq) == b"answer"
    assert reason(table.open(frame, 1000.0)) == "replayed"
    other_seq, _ = client.seal(b"next")
    rejected = client.open_answer(answer, other_seq)  # an answer moved to another request
    assert isinstance(rejected, Rejection)
    assert rejected.reason == "bad_seal"


@pytest.mark.parametrize(
    ("case", "mangle", "expected"),
    [
        ("a flipped byte in the box", lambda f: f[:-1] + bytes([f[-1] ^ 1]), "bad_seal"),
        ("another session id", lambda f: f.replace(b"S" * 16, b"T" * 16), "unknown_session"),
        ("a truncated frame", lambda f: f[:-5], "malformed"),
        ("not a frame at all", lambda f: b"\x94\x02", "malformed"),
        ("a frame of another version", lambda f: b"\x94\x03" + f[2:], "malformed"),
        ("oversized", lambda f: f + b"\x00" * sn.MAX_FRAME, "oversized"),
    ],
)
def test_a_tampered_frame_is_refused_and_does_not_use_up_its_sequence_number(
    case: str, mangle: object, expected: str
) -> None:
    client, table = handshake()
    _, frame = client.seal(b"payload")
    assert callable(mangle)
    assert reason(table.open(mangle(frame), 1000.0)) == expected, case
    assert isinstance(table.open(frame, 1000.0), sn.OpenedFrame)  # the genuine one still opens


def test_the_replay_window_takes_late_requests_once_and_refuses_what_fell_out_of_it() -> None:
    client, table = handshake(budget=10_000)
    frames = [client.seal(b"x")[1] for _ in range(sn.WINDOW + 3)]  # seq 0 .. WINDOW + 2
    assert isinstance(table.open(frames[1], 1000.0), sn.OpenedFrame)
    assert isinstance(table.open(frames[0], 1000.0), sn.OpenedFrame)  # late, in the window
    assert reason(table.open(frames[0], 1000.0)) == "replayed"
    assert isinstance(table.open(frames[-1], 1000.0), sn.OpenedFrame)
    assert reason(table.open(frames[2], 1000.0)) == "replayed"  # now out of the window


def test_a_jump_to_a_huge_sequence_number_costs_nothing_and_closes_the_window_behind_it() -> None:
    """A client (or a key thief) that jumps to seq 2**62: the window is reset, not shifted by
    2**62 bits (which would take memory and time), and everything before it is refused."""
    client, table = handshake()
    _, early = client.seal(b"early")
    client.next_seq = 1 << 62
    _, late = client.seal(b"late")
    opened = table.open(late, 1000.0)
    assert isinstance(opened, sn.OpenedFrame)
    assert opened.session.highest == 1 << 62
    assert opened.session.seen == 1
    assert reason(table.open(early, 1000.0)) == "replayed"


def test_a_session_ends_with_its_lifetime_or_its_budget() -> None:
    client, table = handshake(lifetime=60.0, budget=2)
    assert client.usable(1059.0)
    assert not client.usable(1060.0)
    assert reason(table.open(client.seal(b"x")[1], 1060.0)) == "unknown_session"
    client, table = handshake(lifetime=60.0, budget=2)
    for _ in range(2):
        assert isinstance(table.open(client.seal(b"x")[1], 1000.0), sn.OpenedFrame)
    assert not client.usable(1000.0)
    with pytest.raises(RuntimeError):
        client.seal(b"over budget")


def test_the_table_is_bounded_and_forgets_the_least_recently_used_session() -> None:
    table = sn.SessionTable(capacity=2)
    keys = (b"k" * 32, b"K" * 32)
    for i in range(3):
        table.add(CLIENT.peer_id, bytes([i]) * 16, keys, 2000.0, 10)
    assert len(table) == 2
    stale = sn.ClientSession.from_keys(bytes([0]) * 16, keys, 2000.0, 10)
    assert reason(table.open(stale.seal(b"x")[1], 1000.0)) == "unknown_session"


def test_a_low_order_ephemeral_key_is_refused() -> None:
    with pytest.raises(sn.SessionError):
        sn.derive_keys(sn.new_private_key(b"\x01" * 32), bytes(32), b"", b"")
    with pytest.raises(sn.SessionError):
        sn.derive_keys(sn.new_private_key(b"\x01" * 32), b"short", b"", b"")


@given(st.binary(max_size=400))
def test_fuzz_any_bytes_neither_raise_nor_open(data: bytes) -> None:
    client, table = handshake()
    assert isinstance(table.open(data, 1000.0), tuple)
    assert isinstance(client.open_answer(data, 0), Rejection)


@given(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 255))
def test_fuzz_a_mutated_frame_never_opens_as_anything_but_itself(
    how: int, where: int, byte: int
) -> None:
    client, table = handshake()
    seq, frame = client.seal(b"the request")
    mutated = mutate(frame, how, where, byte)
    result = table.open(mutated, 1000.0)
    if isinstance(result, sn.OpenedFrame):  # only a mutation that changed nothing
        assert (result.seq, result.payload) == (seq, b"the request")
        assert sn._decode(mutated) == sn._decode(frame)


# -- through the transport ---------------------------------------------------------------------


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def renew(opened: Opened) -> Message:
    message = opened.message
    if isinstance(message, RenewLease):
        return LeaseRenewed(message.lease_id, expires=1.0)
    if isinstance(message, Health):
        return HealthReply(healthy=True)
    return Refused("unexpected")


@asynccontextmanager
async def served(server: Transport, address: str) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        bound: str = await nursery.start(server.serve, address, renew)
        yield bound
        nursery.cancel_scope.cancel()


async def test_renewals_share_one_session_and_reopen_it_after_its_lifetime() -> None:
    clock, network = Clock(), MemoryNetwork()
    config = NetConfig(session_lifetime=60.0)
    with (
        MemoryEndpoint(network, SERVER, config, wall=clock) as server,
        MemoryEndpoint(network, CLIENT, wall=clock) as client,
    ):
        async with served(server, "mem:s") as address:
            for i in range(5):
                answer = await client.request(address, RenewLease(f"l{i}"), expect=SERVER.peer_id)
                assert answer.message == LeaseRenewed(f"l{i}", expires=1.0)
            assert len(server._sessions.table) == 1
            first = client._sessions.clients[(address, SERVER.peer_id.raw)].session
            clock.now += (
                55.0  # past 90 % of the lifetime: the client re-keys before the server forgets
            )
            await client.request(address, RenewLease("later"), expect=SERVER.peer_id)
            second = client._sessions.clients[(address, SERVER.peer_id.raw)].session
    assert second != first
    assert server.stats().accepted == 2 + 6  # two handshakes, six sealed renewals
    assert server.stats().rejected == {}


async def test_a_server_that_forgot_the_session_is_answered_by_a_new_handshake() -> None:
    """After a restart the server has no session: its notice makes the client open a new one
    and the request still succeeds, once, without an error."""
    network = MemoryNetwork()
    with MemoryEndpoint(network, CLIENT) as client:
        with MemoryEndpoint(network, SERVER) as server:
            async with served(server, "mem:s") as address:
                await client.request(address, RenewLease("before"), expect=SERVER.peer_id)
        with MemoryEndpoint(network, SERVER) as restarted:
            async with served(restarted, "mem:s") as address:
                answer = await client.request(address, RenewLease("after"), expect=SERVER.peer_id)
                assert answer.message == LeaseRenewed("after", expires=1.0)
            assert restarted.stats().rejected == {"unknown_session": 1}
            assert restarted.stats().accepted == 2  # the new handshake and the request
    assert client.stats().failed_requests == {}


async def test_a_dispatch_inside_a_session_is_refused_it_must_stay_signed() -> None:
    network = MemoryNetwork()
    with MemoryEndpoint(network, SERVER) as server, MemoryEndpoint(network, CLIENT) as client:
        async with served(server, "mem:s") as address:
            await client.request(address, Health(), expect=SERVER.peer_id)
            session = client._sessions.clients[(address, SERVER.peer_id.raw)]
            dispatch = DispatchJob("job", "lease", Executor("train", "x"), "{}")
            seq, frame = session.seal(encode_payload(dispatch))
            answer = session.open_answer(await client._exchange(address, frame, 1.0), seq)
    assert isinstance(answer, bytes)
    assert answer == encode_payload(Refused("not_in_session"))
    assert server.stats().rejected == {"not_in_session": 1}


async def test_a_handshake_naming_another_peer_is_refused() -> None:
    """A SessionOpen meant for OTHER, relayed to SERVER, opens nothing."""
    network = MemoryNetwork()
    with MemoryEndpoint(network, SERVER) as server, MemoryEndpoint(network, CLIENT) as client:
        async with served(server, "mem:s") as address:
            hello = client.seal(SessionOpen(b"\x09" * 32, str(OTHER.peer_id)))
            with pytest.raises(NetError) as caught:
                await client.request_envelope(address, hello, expect=SERVER.peer_id)
    assert (caught.value.reason, caught.value.cause) == ("refused", "wrong_peer")
    assert len(server._sessions.table) == 0


@asynccontextmanager
async def raw_server(answer_hello: str) -> AsyncIterator[str]:
    """A pynng server standing in for another implementation: it answers a SessionOpen with
    ``unknown_message`` (an older peer) or with an accept for another handshake (a bad one),
    and a signed RenewLease with a signed LeaseRenewed."""
    opener = Opener()
    address = f"tcp://127.0.0.1:{free_port()}"
    with pynng.Rep0(listen=address) as sock:

        async def loop() -> None:
            while True:
                opened = opener.open(await sock.arecv(), time.time())
                assert isinstance(opened, Opened)
                if isinstance(opened.message, SessionOpen) and answer_hello == "older":
                    reply: Message = Refused("unknown_message")
                elif isinstance(opened.message, SessionOpen) and answer_hello == "forever":
                    # It answers this very handshake, but wants the session kept forever.
                    reply = SessionAccept(
                        b"\x09" * 32, b"S" * 16, opened.msg_id, str(CLIENT.peer_id), math.inf, 9
                    )
                elif isinstance(opened.message, SessionOpen):
                    reply = SessionAccept(
                        b"\x09" * 32, b"S" * 16, b"x" * 16, str(CLIENT.peer_id), 60.0, 9
                    )
                else:
                    assert isinstance(opened.message, RenewLease)
                    reply = LeaseRenewed(opened.message.lease_id, expires=1.0)
                await sock.asend(seal(SERVER, reply, time.time(), os.urandom(16)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop)
            yield address
            nursery.cancel_scope.cancel()


@pytest.mark.net
async def test_a_peer_without_sessions_is_asked_with_signed_envelopes() -> None:
    async with raw_server("older") as address:
        with Endpoint(CLIENT) as client:
            for i in range(3):
                answer = await client.request(address, RenewLease(f"l{i}"), expect=SERVER.peer_id)
                assert answer.message == LeaseRenewed(f"l{i}", expires=1.0)
                assert answer.envelope  # signed
            assert client.stats().accepted == 1 + 3  # asked for a session once, not every time


@pytest.mark.net
@pytest.mark.parametrize("kind", ["bad", "forever"])
async def test_an_accept_for_another_handshake_or_with_no_end_is_rejected(kind: str) -> None:
    """A server that answers with an accept for some other open, or one with an infinite
    lifetime (a key never to be rotated), sets up no session."""
    async with raw_server(kind) as address:
        with Endpoint(CLIENT) as client:
            with pytest.raises(NetError) as caught:
                await client.request(address, RenewLease("l"), expect=SERVER.peer_id)
            assert (caught.value.reason, caught.value.cause) == ("rejected", "bad_session")
            assert client.stats().rejected == {"bad_session": 1}


@pytest.mark.net
async def test_concurrent_first_requests_open_one_session_over_nng() -> None:
    with Endpoint(SERVER) as server, Endpoint(CLIENT) as client:
        async with served(server, "tcp://127.0.0.1:0") as address:
            results: list[Message] = []

            async def one(i: int) -> None:
                answer = await client.request(address, RenewLease(f"l{i}"), expect=SERVER.peer_id)
                results.append(answer.message)

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one, i)
    assert sorted(results, key=str) == sorted(
        (LeaseRenewed(f"l{i}", 1.0) for i in range(20)), key=str
    )
    assert len(server._sessions.table) == 1
    assert server.stats().accepted == 1 + 20


# -- golden vectors ------------------------------------------------------------------------------


def test_the_golden_vectors_are_what_the_code_makes_and_what_the_spec_says() -> None:
    """specs/vectors/session-v1.json is reproduced byte for byte, and its keys and frames are
    recomputed here from the spec's formulas with the primitives alone (not ``net.session``)."""
    import hashlib
    import json
    from pathlib import Path

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from hypha_sm.net import session_vectors

    root = Path(__file__).resolve().parent.parent
    stored = json.loads((root / "specs" / "vectors" / "session-v1.json").read_text())
    assert stored == session_vectors.build()

    h = {k: bytes.fromhex(v) for k, v in stored.items() if k.endswith("_hex")}
    client_key = X25519PrivateKey.from_private_bytes(h["client_ephemeral_private_hex"])
    server_public = X25519PrivateKey.from_private_bytes(
        h["server_ephemeral_private_hex"]
    ).public_key()
    shared = client_key.exchange(
        X25519PublicKey.from_public_bytes(server_public.public_bytes_raw())
    )
    salt = hashlib.sha256(
        h["session_open_envelope_hex"] + h["session_accept_envelope_hex"]
    ).digest()
    okm = HKDF(hashes.SHA256(), 64, salt, b"hypha-sm/session/v1\x00").derive(shared)
    assert (okm[:32], okm[32:]) == (h["k_c2s_hex"], h["k_s2c_hex"])

    seq, session = stored["seq"], session_vectors.SESSION
    aad = b"hypha-sm/session/v1\x00" + session + seq.to_bytes(8, "big")
    nonce = seq.to_bytes(12, "big")
    request = msgspec_decode(h["request_frame_hex"])
    assert request[:3] == [2, session, seq]
    assert ChaCha20Poly1305(okm[:32]).decrypt(nonce, request[3], aad) == h["request_payload_hex"]
    answer = msgspec_decode(h["answer_frame_hex"])
    assert answer[:3] == [2, session, seq]
    assert ChaCha20Poly1305(okm[32:]).decrypt(nonce, answer[3], aad) == h["answer_payload_hex"]


def msgspec_decode(data: bytes) -> list[object]:
    import msgspec

    value = msgspec.msgpack.decode(data)
    assert isinstance(value, list)
    return value


async def test_a_handshake_with_a_low_order_key_is_refused_and_counted() -> None:
    """An all-zero X25519 key (a low-order point: an all-zero secret) opens no session."""
    network = MemoryNetwork()
    with MemoryEndpoint(network, SERVER) as server, MemoryEndpoint(network, CLIENT) as client:
        async with served(server, "mem:s") as address:
            hello = client.seal(SessionOpen(bytes(32), str(SERVER.peer_id)))
            with pytest.raises(NetError) as caught:
                await client.request_envelope(address, hello, expect=SERVER.peer_id)
    assert (caught.value.reason, caught.value.cause) == ("refused", "bad_ephemeral_key")
    assert server.stats().rejected == {"bad_ephemeral_key": 1}
    assert len(server._sessions.table) == 0
