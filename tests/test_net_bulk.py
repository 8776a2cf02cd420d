"""Bulk transfers: verified round trips, typed errors, no partial files, bounded memory.

Real-socket tests are marked ``net`` (loopback TCP, Unix sockets, mutual TLS with certificates
from ``trustme``). No test has a timing threshold: memory is measured with tracemalloc and
backpressure by how far a sender gets while the receiver's disk is stuck.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import tracemalloc
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import blake3
import msgspec
import pytest
import trio
import trio.testing
import trustme

from hypha_sm.net import bulk
from hypha_sm.net.bulk import protocol as bulk_protocol
from hypha_sm.net.bulk import pump as bulk_pump
from hypha_sm.net.bulk import receive as bulk_receive
from hypha_sm.net.streams import (
    Address,
    AddressError,
    TlsFiles,
    TlsSetupError,
    open_listener,
    open_stream,
    parse_address,
)
from hypha_sm.wire.identity import Identity, PeerId
from hypha_sm.wire.messages import TransferAnswer, TransferOffer

SENDER = Identity.from_seed(bytes([1]) * 32)
RECEIVER = Identity.from_seed(bytes([2]) * 32)
STRANGER = Identity.from_seed(bytes([3]) * 32)
MiB = 1 << 20


def allow_sender(peer: PeerId, offer: TransferOffer) -> str | None:
    return None if peer == SENDER.peer_id else "not a member of this job"


def make_file(path: Path, size: int, seed: int = 0) -> str:
    """Write ``size`` pseudo-random bytes; return their SHA-256."""
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@dataclass
class Server:
    """A running BulkServer, its address and the outcomes it reported, in order."""

    server: bulk.BulkServer
    address: str
    outcomes: trio.MemoryReceiveChannel[bulk.ReceivedFile | bulk.BulkError]

    async def next_outcome(self) -> bulk.ReceivedFile | bulk.BulkError:
        with trio.fail_after(30):
            return await self.outcomes.receive()


async def start_server(
    nursery: trio.Nursery,
    directory: Path,
    address: str = "tcp://127.0.0.1:0",
    **options: object,
) -> Server:
    send, receive = trio.open_memory_channel[bulk.ReceivedFile | bulk.BulkError](math.inf)
    options.setdefault("authorize", allow_sender)
    server = bulk.BulkServer(
        directory,
        identity=RECEIVER,
        on_result=send.send_nowait,
        **options,  # type: ignore[arg-type]
    )
    bound = await nursery.start(server.serve, address)
    return Server(server, str(bound), receive)


# -- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    server: TlsFiles
    client: TlsFiles
    foreign_client: TlsFiles  # a certificate from another CA, trusting ours
    foreign_server: TlsFiles


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ours, theirs = trustme.CA(), trustme.CA()
    ours.cert_pem.write_to_path(str(root / "ca.pem"))

    def issue(ca: trustme.CA, name: str) -> TlsFiles:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(root / f"{name}.key"))
        chain = root / f"{name}.crt"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        return TlsFiles(cert=chain, key=root / f"{name}.key", trust=root / "ca.pem")

    return Pki(
        issue(ours, "server"),
        issue(ours, "client"),
        issue(theirs, "x-client"),
        issue(theirs, "x-server"),
    )


# -- pure checks -------------------------------------------------------------------------------


def test_addresses_parse_and_print_back() -> None:
    """tcp, tls+tcp and ipc addresses parse into parts and print back the same."""
    for text in (
        "tcp://127.0.0.1:7010",
        "tls+tcp://node.example:443",
        "ipc:///tmp/b.sock",
        "tcp://[::1]:9",
    ):
        assert str(parse_address(text)) == text
    assert parse_address("tls+tcp://h:1") == Address("tls+tcp", host="h", port=1)
    for bad in ("udp://h:1", "tcp://h", "tcp://h:x", "tcp://:1", "ipc://", "tcp://h:70000"):
        with pytest.raises(AddressError):
            parse_address(bad)


async def test_tls_addresses_need_a_loadable_tls_config(tmp_path: Path) -> None:
    """tls+tcp:// without a TLS config, or with missing PEM files, fails before connecting."""
    with pytest.raises(TlsSetupError, match="needs a TLS configuration"):
        await open_stream("tls+tcp://127.0.0.1:9")
    missing = TlsFiles(cert=tmp_path / "no.crt", key=tmp_path / "no.key", trust=tmp_path / "ca")
    with pytest.raises(TlsSetupError, match="cannot load TLS files"):
        await open_stream("tls+tcp://127.0.0.1:9", missing)


def test_consider_refuses_bad_offers_up_front(tmp_path: Path) -> None:
    """Unsafe names, malformed hashes, oversize offers, taken names and strangers are refused."""
    server = bulk.BulkServer(tmp_path, identity=RECEIVER, authorize=allow_sender, max_size=MiB)
    (tmp_path / "taken").write_bytes(b"x")
    good = TransferOffer(transfer_id="t1", name="update.bin", size=10, sha256="0" * 64)
    assert server.consider(SENDER.peer_id, good).accepted
    cases: dict[str, list[dict[str, object]]] = {
        "bad-name": [{"name": n} for n in ("../x", "a/b", ".hidden", "", "x.part", "a\x00b")],
        "bad-offer": [
            {"sha256": "XYZ"},
            {"blake3": "0" * 63},
            {"sha256": "", "blake3": ""},  # names no digest: nothing to check the bytes by
            {"size": -1},
            {"transfer_id": "no spaces"},
        ],
        "too-large": [{"size": MiB + 1}],
        "exists": [{"name": "taken"}],
    }
    for code, changes in cases.items():
        for change in changes:
            offer = msgspec.structs.replace(good, **change)
            answer = server.consider(SENDER.peer_id, offer)
            assert not answer.accepted, change
            assert answer.reason.startswith(code + ":"), (change, answer)
    stranger = server.consider(STRANGER.peer_id, good)
    assert stranger.reason == "unauthorized: not a member of this job"


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.net
@pytest.mark.parametrize("scheme", ["tcp", "tls+tcp", "ipc"])
async def test_round_trip_stores_the_file_with_matching_digest(
    scheme: str, tmp_path: Path, pki: Pki, nursery: trio.Nursery
) -> None:
    """A few MiB arrive intact under the offered name; both sides agree on who and what (the
    sender named the file's BLAKE3, computed for the offer, and no SHA-256)."""
    source = tmp_path / "pseudo-gradient.bin"
    sha = make_file(source, 3 * MiB + 12345)
    inbox = tmp_path / "inbox"
    address = f"ipc://{tmp_path}/bulk.sock" if scheme == "ipc" else f"{scheme}://127.0.0.1:0"
    tls_server = pki.server if scheme == "tls+tcp" else None
    tls_client = pki.client if scheme == "tls+tcp" else None
    srv = await start_server(nursery, inbox, address, tls=tls_server)

    sent = await bulk.send_file(
        source, to=srv.address, identity=SENDER, peer=RECEIVER.peer_id, tls=tls_client,
        purpose="pseudo-gradient", chunk_size=256 * 1024,
    )  # fmt: skip
    assert (sent.size, sent.sha256, sent.blake3, sent.receiver) == (
        source.stat().st_size,
        "",
        blake3.blake3(source.read_bytes()).hexdigest(),
        RECEIVER.peer_id,
    )
    got = await srv.next_outcome()
    assert isinstance(got, bulk.ReceivedFile)
    assert got.offer.blake3 == sent.blake3
    assert got.sender == SENDER.peer_id
    assert got.offer.purpose == "pseudo-gradient"
    assert got.path == inbox / "pseudo-gradient.bin"
    assert hashlib.sha256(got.path.read_bytes()).hexdigest() == sha
    assert leftovers(inbox) == ["pseudo-gradient.bin"]  # no .part left behind


@pytest.mark.net
async def test_empty_file_and_existing_name(tmp_path: Path, nursery: trio.Nursery) -> None:
    """An empty file transfers; a second file under a taken name is refused up front."""
    source = tmp_path / "empty"
    sha = make_file(source, 0)
    srv = await start_server(nursery, tmp_path / "inbox")
    sent = await bulk.send_file(
        source, to=srv.address, identity=SENDER, peer=RECEIVER.peer_id, sha256=sha
    )
    assert sent.sha256 == sha
    assert (tmp_path / "inbox" / "empty").read_bytes() == b""
    with pytest.raises(bulk.TransferRefused) as refused:
        await bulk.send_file(source, to=srv.address, identity=SENDER, peer=RECEIVER.peer_id)
    assert refused.value.code == "exists"


# -- integrity errors --------------------------------------------------------------------------


@pytest.mark.net
async def test_hash_mismatch_is_typed_and_leaves_no_file(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A wrong SHA-256 in the offer: both sides raise TransferMismatch naming both hashes."""
    source = tmp_path / "update.bin"
    real = make_file(source, 2 * MiB)
    inbox = tmp_path / "inbox"
    srv = await start_server(nursery, inbox)
    claimed = "ab" * 32
    with pytest.raises(bulk.TransferMismatch) as caught:
        await bulk.send_file(source, to=srv.address, identity=SENDER, sha256=claimed)
    assert (caught.value.field, caught.value.expected, caught.value.actual) == (
        "sha256",
        claimed,
        real,
    )
    assert f"expected {claimed}" in str(caught.value)
    assert f"got {real}" in str(caught.value)
    outcome = await srv.next_outcome()
    assert isinstance(outcome, bulk.TransferMismatch)
    assert outcome.actual == real
    assert leftovers(inbox) == []


@pytest.mark.net
@pytest.mark.parametrize("wrong", ["sha256", "blake3"])
async def test_every_digest_the_offer_names_is_checked(
    wrong: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """An offer naming both digests, one of them wrong, fails on that one: a sender cannot
    pair a manifest's true SHA-256 with the BLAKE3 of other bytes."""
    source = tmp_path / "slice.bin"
    sha = make_file(source, MiB + 7)
    digests = {"sha256": sha, "blake3": blake3.blake3(source.read_bytes()).hexdigest()}
    digests[wrong] = "cd" * 32
    inbox = tmp_path / "inbox"
    srv = await start_server(nursery, inbox)
    with pytest.raises(bulk.TransferMismatch) as caught:
        await bulk.send_file(source, to=srv.address, identity=SENDER, **digests)
    assert (caught.value.field, caught.value.expected) == (wrong, "cd" * 32)
    outcome = await srv.next_outcome()
    assert isinstance(outcome, bulk.TransferMismatch)
    assert outcome.field == wrong
    assert leftovers(inbox) == []


@pytest.mark.net
async def test_short_file_is_a_size_mismatch(tmp_path: Path, nursery: trio.Nursery) -> None:
    """The offer claims more bytes than the sender has: TransferMismatch(size), no file."""
    source = tmp_path / "slice.bin"
    sha = make_file(source, MiB)
    inbox = tmp_path / "inbox"
    srv = await start_server(nursery, inbox)
    offer = TransferOffer(transfer_id="short-1", name="slice.bin", size=MiB + 100, sha256=sha)
    stream = await open_stream(srv.address)
    fd = os.open(source, os.O_RDONLY)
    try:
        with pytest.raises(bulk.TransferMismatch) as caught:
            await bulk.send_over(stream, fd, offer, identity=SENDER, peer=RECEIVER.peer_id)
    finally:
        os.close(fd)
        await stream.aclose()
    assert (caught.value.field, caught.value.expected, caught.value.actual) == (
        "size",
        MiB + 100,
        MiB,
    )
    outcome = await srv.next_outcome()
    assert isinstance(outcome, bulk.TransferMismatch)
    assert outcome.field == "size"
    assert leftovers(inbox) == []


async def _raw_offer(
    stream: trio.abc.Stream, offer: TransferOffer, envelope: bytes | None = None
) -> TransferAnswer:
    """Speak the protocol by hand: send an offer (or given envelope bytes), read the answer."""
    sealed = envelope or bulk_protocol.seal_message(SENDER, offer, bulk_protocol.wall_clock)
    await stream.send_all(bulk.MAGIC + bulk_protocol.frame(sealed))
    return await _raw_answer(stream)


async def _raw_answer(stream: trio.abc.Stream) -> TransferAnswer:
    from hypha_sm.wire.envelope import Opened, Opener

    opened = Opener().open(
        await bulk_protocol.read_frame(stream), bulk_protocol.wall_clock(), RECEIVER.peer_id
    )
    assert isinstance(opened, Opened)
    assert isinstance(opened.message, TransferAnswer)
    return opened.message


@pytest.mark.net
async def test_extra_bytes_are_refused_as_a_size_mismatch(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A sender pushing more than it offered is stopped at the first excess chunk."""
    inbox = tmp_path / "inbox"
    srv = await start_server(nursery, inbox)
    offer = TransferOffer(transfer_id="long-1", name="x.bin", size=10, sha256="0" * 64)
    async with await open_stream(srv.address) as stream:
        assert (await _raw_offer(stream, offer)).accepted
        await stream.send_all(bulk_protocol.U32.pack(20) + b"y" * 20)
        verdict = await _raw_answer(stream)
    assert not verdict.accepted
    assert verdict.reason == "size-mismatch: expected=10 actual=20"
    outcome = await srv.next_outcome()
    assert isinstance(outcome, bulk.TransferMismatch)
    assert (outcome.expected, outcome.actual) == (
        10,
        20,
    )
    assert leftovers(inbox) == []


STALLS: dict[str, tuple[bytes, str]] = {
    # what the sender sends after an accepted offer of 100 bytes, and the receiver's reason
    "a chunk over MAX_CHUNK": (
        bulk_protocol.U32.pack(bulk.MAX_CHUNK + 1),
        f"protocol error: a chunk of {bulk.MAX_CHUNK + 1} bytes",
    ),
    "silence mid-chunk": (bulk_protocol.U32.pack(100) + b"z" * 40, "no data for 0.3 s after 0"),
    "silence between chunks": (
        bulk_protocol.U32.pack(40) + b"z" * 40,
        "no data for 0.3 s after 40",
    ),
}


@pytest.mark.net
@pytest.mark.parametrize("scheme", ["tcp", "tls+tcp"])
@pytest.mark.parametrize("case", list(STALLS))
async def test_a_bad_chunk_or_a_silent_sender_aborts_with_a_reason_and_no_file(
    case: str, scheme: str, tmp_path: Path, pki: Pki, nursery: trio.Nursery
) -> None:
    """Over a plain socket (read in a thread) and TLS (read on the loop) alike: a chunk
    larger than the protocol allows, or a sender that goes quiet, ends the transfer."""
    data, reason = STALLS[case]
    tls = scheme == "tls+tcp"
    inbox = tmp_path / "inbox"
    srv = await start_server(
        nursery, inbox, f"{scheme}://127.0.0.1:0", tls=pki.server if tls else None,
        idle_timeout=0.3,
    )  # fmt: skip
    offer = TransferOffer(transfer_id="stall-1", name="x.bin", size=100, sha256="0" * 64)
    async with await open_stream(srv.address, pki.client if tls else None) as stream:
        assert (await _raw_offer(stream, offer)).accepted
        await stream.send_all(data)
        verdict = await _raw_answer(stream)
    assert not verdict.accepted
    outcome = await srv.next_outcome()
    assert isinstance(outcome, bulk.TransferAborted)
    assert reason in str(outcome)
    assert leftovers(inbox) == []


@pytest.mark.net
@pytest.mark.parametrize("scheme", ["tcp", "tls+tcp"])
async def test_a_disk_error_mid_transfer_is_an_abort_both_sides_see(
    scheme: str,
    tmp_path: Path,
    pki: Pki,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The receiver's file write fails (a full disk): the sender hears why, nothing is kept,
    and the server takes the next transfer."""
    source = tmp_path / "big.bin"
    make_file(source, 4 * MiB)
    store = bulk_receive._Sink.store
    calls = [0]

    def full_disk(self: bulk_receive._Sink, view: memoryview) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(28, "No space left on device")
        store(self, view)

    monkeypatch.setattr(bulk_receive._Sink, "store", full_disk)
    tls = scheme == "tls+tcp"
    inbox = tmp_path / "inbox"
    srv = await start_server(
        nursery, inbox, f"{scheme}://127.0.0.1:0", tls=pki.server if tls else None
    )
    with pytest.raises(bulk.TransferAborted, match="No space left on device"):
        await bulk.send_file(
            source, to=srv.address, identity=SENDER, chunk_size=256 * 1024,
            tls=pki.client if tls else None,
        )  # fmt: skip
    outcome = await srv.next_outcome()
    assert isinstance(outcome, bulk.TransferAborted)
    assert leftovers(inbox) == []
    monkeypatch.setattr(bulk_receive._Sink, "store", store)
    await bulk.send_file(source, to=srv.address, identity=SENDER, tls=pki.client if tls else None)
    assert isinstance(await srv.next_outcome(), bulk.ReceivedFile)


@pytest.mark.net
@pytest.mark.parametrize("scheme", ["tcp", "tls+tcp", "ipc"])
async def test_every_stream_the_node_makes_is_received_in_threads_not_on_the_loop(
    scheme: str, tmp_path: Path, pki: Pki
) -> None:
    """The threaded reader drives trio's SSLStream through its internals: a trio upgrade that
    renamed them would put decryption back on the loop (correct, but half the speed), so it
    fails here instead of silently."""
    tls = scheme == "tls+tcp"
    address = f"ipc://{tmp_path}/s.sock" if scheme == "ipc" else f"{scheme}://127.0.0.1:0"
    listener, bound = await open_listener(address, pki.server if tls else None)
    clients: list[trio.abc.Stream] = []

    async def connect() -> None:  # a TLS client's handshake needs the server to read
        clients.append(await open_stream(str(bound), pki.client if tls else None))
        await clients[0].send_all(b"x")

    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(connect)
        server = await listener.accept()
        reader = bulk_pump.thread_reader(server, 1.0)
        assert isinstance(reader, bulk_pump._TlsReader if tls else bulk_pump._PlainReader)
        assert await server.receive_some(1) == b"x"  # still a working stream
    await clients[0].aclose()
    await server.aclose()


async def test_a_stream_no_thread_can_read_directly_goes_through_the_same_pipeline(
    tmp_path: Path,
) -> None:
    """An in-memory stream (neither a socket nor TLS over one) is read through the loop, one
    call per read, and the file arrives checked all the same; a sender that then goes quiet
    is timed out there too."""
    source = tmp_path / "x.bin"
    make_file(source, 3 * MiB + 7)
    inbox = tmp_path / "inbox"
    server = bulk.BulkServer(inbox, identity=RECEIVER, authorize=allow_sender, idle_timeout=0.3)
    inbox.mkdir()
    client, end = trio.testing.memory_stream_pair()
    assert isinstance(bulk_pump.thread_reader(end, 1.0), bulk_pump._StreamReader)
    digest = blake3.blake3(source.read_bytes()).hexdigest()
    offer = TransferOffer("mem-1", "x.bin", source.stat().st_size, blake3=digest)
    received: list[bulk.ReceivedFile] = []
    fd = os.open(source, os.O_RDONLY)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _keep(received, server.receive(end)))
            await bulk.send_over(client, fd, offer, identity=SENDER, peer=RECEIVER.peer_id)
    finally:
        os.close(fd)
    assert received[0].path.read_bytes() == source.read_bytes()

    client, end = trio.testing.memory_stream_pair()
    quiet = TransferOffer("mem-2", "y.bin", 100, blake3=digest)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_raw_offer, client, quiet)
        with pytest.raises(bulk.TransferAborted, match=r"no data for 0\.3 s after 0 of 100"):
            await server.receive(end)
    assert leftovers(inbox) == ["x.bin"]


async def _keep(into: list[bulk.ReceivedFile], receiving: Awaitable[bulk.ReceivedFile]) -> None:
    into.append(await receiving)


# -- refusals and authentication ---------------------------------------------------------------


@pytest.mark.net
async def test_oversize_and_unauthorized_are_refused_before_any_byte(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Above max_size, or from a peer the policy rejects: TransferRefused, no chunk sent."""
    source = tmp_path / "model.bin"
    make_file(source, 2 * MiB)
    inbox = tmp_path / "inbox"
    srv = await start_server(nursery, inbox, max_size=MiB)
    progress: list[int] = []
    with pytest.raises(bulk.TransferRefused) as too_big:
        await bulk.send_file(source, to=srv.address, identity=SENDER, progress=progress.append)
    assert too_big.value.code == "too-large"
    assert str(MiB) in too_big.value.reason
    assert isinstance(await srv.next_outcome(), bulk.TransferRefused)

    small = tmp_path / "small.bin"
    make_file(small, 1000)
    with pytest.raises(bulk.TransferRefused) as stranger:
        await bulk.send_file(small, to=srv.address, identity=STRANGER, progress=progress.append)
    assert stranger.value.reason == "unauthorized: not a member of this job"
    assert progress == []
    assert leftovers(inbox) == []


@pytest.mark.net
async def test_answers_from_the_wrong_peer_are_refused(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """If the server is not the peer we meant, the sender stops before sending any byte."""
    source = tmp_path / "a.bin"
    make_file(source, MiB)
    inbox = tmp_path / "inbox"
    srv = await start_server(nursery, inbox)
    progress: list[int] = []
    with pytest.raises(bulk.PeerAuthError, match="sender_mismatch"):
        await bulk.send_file(
            source,
            to=srv.address,
            identity=SENDER,
            peer=STRANGER.peer_id,
            progress=progress.append,
        )
    assert progress == []
    assert isinstance(await srv.next_outcome(), bulk.TransferAborted)
    assert leftovers(inbox) == []


@pytest.mark.net
async def test_a_sender_with_a_wrong_clock_is_told_why(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Clocks further apart than the allowed skew: both sides refuse as ``stale``, naming the
    timestamps, and nothing is stored."""
    source = tmp_path / "a.bin"
    make_file(source, 1000)
    srv = await start_server(nursery, tmp_path / "inbox")
    with pytest.raises(bulk.PeerAuthError, match=r"stale \(timestamp \d+ vs now \d+\)"):
        await bulk.send_file(
            source, to=srv.address, identity=SENDER, peer=RECEIVER.peer_id,
            clock=lambda: bulk_protocol.wall_clock() - 120,
        )  # fmt: skip
    refused = await srv.next_outcome()
    assert isinstance(refused, bulk.PeerAuthError)
    assert "stale" in str(refused)
    assert leftovers(tmp_path / "inbox") == []


@pytest.mark.net
async def test_replayed_offer_and_garbage_are_refused(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A captured offer envelope cannot be replayed; non-protocol bytes are refused; the server
    keeps serving."""
    inbox = tmp_path / "inbox"
    srv = await start_server(nursery, inbox)
    offer = TransferOffer(
        transfer_id="once", name="o.bin", size=0, sha256=hashlib.sha256().hexdigest()
    )
    envelope = bulk_protocol.seal_message(SENDER, offer, bulk_protocol.wall_clock)
    async with await open_stream(srv.address) as stream:
        assert (await _raw_offer(stream, offer, envelope)).accepted
        await stream.send_all(bulk_protocol.U32.pack(0))
        assert (await _raw_answer(stream)).accepted
    assert isinstance(await srv.next_outcome(), bulk.ReceivedFile)
    (inbox / "o.bin").unlink()

    async with await open_stream(srv.address) as stream:
        refusal = await _raw_offer(stream, offer, envelope)
    assert not refusal.accepted
    assert refusal.reason.startswith("rejected: replayed")
    replay = await srv.next_outcome()
    assert isinstance(replay, bulk.PeerAuthError)
    assert "replayed" in str(replay)

    async with await open_stream(srv.address) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
    garbage = await srv.next_outcome()
    assert isinstance(garbage, bulk.PeerAuthError)
    assert "magic" in str(garbage)
    assert leftovers(inbox) == []


@pytest.mark.net
async def test_client_certificate_from_another_ca_is_refused(
    tmp_path: Path, pki: Pki, nursery: trio.Nursery
) -> None:
    """Mutual TLS: a client whose certificate another CA signed is refused in the handshake,
    and a server with such a certificate is refused by the client."""
    source = tmp_path / "a.bin"
    make_file(source, 100_000)
    inbox = tmp_path / "inbox"
    srv = await start_server(nursery, inbox, "tls+tcp://127.0.0.1:0", tls=pki.server)
    with pytest.raises(bulk.PeerAuthError, match="TLS"):
        await bulk.send_file(source, to=srv.address, identity=SENDER, tls=pki.foreign_client)
    refused = await srv.next_outcome()
    assert isinstance(refused, bulk.PeerAuthError)
    assert "TLS" in str(refused)

    impostor = await start_server(
        nursery, tmp_path / "other", "tls+tcp://127.0.0.1:0", tls=pki.foreign_server
    )
    with pytest.raises(bulk.PeerAuthError, match="certificate verify failed"):
        await bulk.send_file(source, to=impostor.address, identity=SENDER, tls=pki.client)

    await bulk.send_file(source, to=srv.address, identity=SENDER, tls=pki.client)  # still serving
    assert leftovers(inbox) == ["a.bin"]


# -- cancellation ------------------------------------------------------------------------------


@pytest.mark.net
async def test_sender_cancelled_mid_transfer(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Cancelling the sender mid-way removes the receiver's partial file; both sides carry on."""
    source = tmp_path / "big.bin"
    make_file(source, 8 * MiB)
    inbox = tmp_path / "inbox"
    srv = await start_server(nursery, inbox)
    with trio.CancelScope() as scope:

        def cancel_after_two_chunks(sent: int) -> None:
            if sent >= 2 * 256 * 1024:
                scope.cancel()

        await bulk.send_file(
            source, to=srv.address, identity=SENDER, chunk_size=256 * 1024,
            progress=cancel_after_two_chunks,
        )  # fmt: skip
    assert scope.cancelled_caught
    aborted = await srv.next_outcome()
    assert isinstance(aborted, bulk.TransferAborted)
    assert "sender went away" in str(aborted)
    assert leftovers(inbox) == []

    await bulk.send_file(source, to=srv.address, identity=SENDER, peer=RECEIVER.peer_id)
    assert isinstance(await srv.next_outcome(), bulk.ReceivedFile)
    assert leftovers(inbox) == ["big.bin"]


@pytest.mark.net
async def test_receiver_cancelled_mid_transfer(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Stopping the server mid-transfer removes the partial file and the sender gets
    TransferAborted; a new server on the same directory then takes the file."""
    source = tmp_path / "big.bin"
    make_file(source, 8 * MiB)
    inbox = tmp_path / "inbox"
    server_scope = trio.CancelScope()
    server = bulk.BulkServer(inbox, identity=RECEIVER, authorize=allow_sender)

    async def run_server(task_status: trio.TaskStatus[Address]) -> None:
        with server_scope:
            await server.serve("tcp://127.0.0.1:0", task_status=task_status)

    address = await nursery.start(run_server)

    def stop_server(sent: int) -> None:
        if sent >= 2 * 256 * 1024:
            server_scope.cancel()

    with pytest.raises(bulk.TransferAborted):
        await bulk.send_file(
            source, to=str(address), identity=SENDER, chunk_size=256 * 1024, progress=stop_server
        )
    assert leftovers(inbox) == []

    srv = await start_server(nursery, inbox)
    await bulk.send_file(source, to=srv.address, identity=SENDER, peer=RECEIVER.peer_id)
    assert leftovers(inbox) == ["big.bin"]


@pytest.mark.net
async def test_a_receiver_stopped_while_the_bytes_flow_without_pause_stores_nothing(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every byte is already in the socket, so the reading thread never waits: stopping the
    server as the first chunk is written must still abort the transfer, not store the file."""
    inbox = tmp_path / "inbox"
    server_scope = trio.CancelScope()
    token = trio.lowlevel.current_trio_token()
    store = bulk_receive._Sink.store

    def stop_on_first_write(self: bulk_receive._Sink, view: memoryview) -> None:
        trio.from_thread.run_sync(server_scope.cancel, trio_token=token)
        store(self, view)

    monkeypatch.setattr(bulk_receive._Sink, "store", stop_on_first_write)
    server = bulk.BulkServer(inbox, identity=RECEIVER, authorize=allow_sender, depth=1)

    async def run_server(task_status: trio.TaskStatus[Address]) -> None:
        with server_scope:
            await server.serve("tcp://127.0.0.1:0", task_status=task_status)

    address = await nursery.start(run_server)
    data = b"q" * (256 * 1024)
    chunks = (bulk_protocol.U32.pack(len(data)) + data) * 4 + bulk_protocol.U32.pack(0)
    offer = TransferOffer(
        "flow-1", "x.bin", 4 * len(data), blake3=blake3.blake3(data * 4).hexdigest()
    )
    sealed = bulk_protocol.seal_message(SENDER, offer, bulk_protocol.wall_clock)
    async with await open_stream(str(address)) as stream:
        await stream.send_all(bulk.MAGIC + bulk_protocol.frame(sealed) + chunks)
        assert (await _raw_answer(stream)).accepted
        verdict = await _raw_answer(stream)
    assert not verdict.accepted
    assert leftovers(inbox) == []


# -- memory and backpressure -------------------------------------------------------------------


@pytest.mark.net
@pytest.mark.parametrize("scheme", ["tcp", "tls+tcp"])
async def test_memory_stays_bounded_for_a_64_mib_transfer(
    scheme: str, tmp_path: Path, pki: Pki, nursery: trio.Nursery
) -> None:
    """Sender and receiver together never hold more than their chunk buffers (tracemalloc).

    Over tcp the sender uses sendfile (no buffers); over TLS it reads into ``depth`` buffers.
    """
    source = tmp_path / "artifact.bin"
    sha = make_file(source, 64 * MiB)
    tls = scheme == "tls+tcp"
    address = f"{scheme}://127.0.0.1:0"
    srv = await start_server(nursery, tmp_path / "inbox", address, tls=pki.server if tls else None)
    chunk, depth = 256 * 1024, bulk.DEFAULT_DEPTH
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        await bulk.send_file(
            source, to=srv.address, identity=SENDER, sha256=sha, chunk_size=chunk,
            tls=pki.client if tls else None,
        )  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Each side holds at most ``depth`` chunk buffers; allow 1 MiB for everything else.
    assert peak - base <= 2 * depth * chunk + MiB, f"peak grew by {(peak - base) / MiB:.1f} MiB"
    assert isinstance(await srv.next_outcome(), bulk.ReceivedFile)


def _tcp_buffer_max(name: str) -> int:
    """The largest buffer this kernel gives a TCP socket (the third value of net.ipv4.NAME)."""
    return int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])


@pytest.mark.net
@pytest.mark.parametrize("scheme", ["tcp", "tls+tcp"])
async def test_slow_receiver_slows_the_sender(
    scheme: str, tmp_path: Path, pki: Pki, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the receiver's disk is stuck, the sender stalls instead of buffering the file."""
    source = tmp_path / "big.bin"
    size = 64 * MiB
    make_file(source, size)
    disk = threading.Event()
    store = bulk_receive._Sink.store

    def stuck_store(self: bulk_receive._Sink, view: memoryview) -> None:
        disk.wait()
        store(self, view)

    monkeypatch.setattr(bulk_receive._Sink, "store", stuck_store)
    tls = scheme == "tls+tcp"
    address = f"{scheme}://127.0.0.1:0"
    srv = await start_server(nursery, tmp_path / "inbox", address, tls=pki.server if tls else None)
    sent: list[int] = [0]
    started, done = trio.Event(), trio.Event()

    def progress(n: int) -> None:
        sent[0] = n
        started.set()

    async def send() -> None:
        await bulk.send_file(
            source, to=srv.address, identity=SENDER, chunk_size=256 * 1024,
            progress=progress, tls=pki.client if tls else None,
        )  # fmt: skip
        done.set()

    nursery.start_soon(send)
    await started.wait()
    await trio.testing.wait_all_tasks_blocked(cushion=0.2)
    stalled_at = sent[0]
    # Bounded by both sides' chunk buffers plus the most this kernel lets a TCP connection
    # buffer (its send and receive maxima, read from /proc), far short of the file.
    kernel = _tcp_buffer_max("tcp_wmem") + _tcp_buffer_max("tcp_rmem")
    assert not done.is_set()
    assert stalled_at < size
    assert stalled_at <= 2 * bulk.DEFAULT_DEPTH * 256 * 1024 + kernel + MiB
    disk.set()
    with trio.fail_after(30):
        await done.wait()
    assert isinstance(await srv.next_outcome(), bulk.ReceivedFile)
