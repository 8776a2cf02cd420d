"""Growing files: bytes sent while the file is written, the digest in a signed trailer.

The receiver treats a trailer offer as it treats any other: nothing appears under the final name
until the bytes match a digest signed by the sender of the offer. Real sockets are marked ``net``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from pathlib import Path

import blake3
import msgspec
import pytest
import trio
import trio.testing

from hypha_sm.net import bulk
from hypha_sm.net.bulk import protocol as bulk_protocol
from hypha_sm.net.bulk.growing import GrowingFile
from hypha_sm.net.streams import open_stream
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import TransferOffer, TransferTrailer
from tests.test_net_bulk import (  # noqa: F401 (pki is a fixture)
    RECEIVER,
    SENDER,
    STRANGER,
    Pki,
    _raw_answer,
    _raw_offer,
    allow_sender,
    leftovers,
    pki,
    start_server,
)

MiB = 1 << 20


def pieces(size: int, parts: int, seed: int = 7) -> list[bytes]:
    """``size`` pseudo-random bytes in ``parts`` pieces."""
    data = random.Random(seed).randbytes(size)
    step = -(-size // parts)
    return [data[i : i + step] for i in range(0, size, step)]


async def write_slowly(
    path: Path, growing: GrowingFile, data: list[bytes], started: trio.Event | None = None
) -> str:
    """Append each piece, report it, and let the senders run; with ``started``, the last piece
    waits until a sender has sent something (so the test proves bytes left before the end)."""
    digest = blake3.blake3()
    with path.open("r+b") as f:
        for n, piece in enumerate(data):
            if started is not None and n == len(data) - 1:
                with trio.fail_after(10):
                    await started.wait()
            f.write(piece)
            f.flush()
            digest.update(piece)
            growing.advance(f.tell())
            await trio.sleep(0.01)
    growing.finish(digest.hexdigest())
    return digest.hexdigest()


# -- the offer ---------------------------------------------------------------------------------


def test_an_offer_with_a_trailer_names_no_digest_and_only_blake3_follows(tmp_path: Path) -> None:
    """A trailer offer is accepted without a digest; with one, or another trailer, refused."""
    server = bulk.BulkServer(tmp_path, identity=RECEIVER, authorize=allow_sender)
    good = TransferOffer("t1", "update.bin", 10, trailer="blake3")
    assert server.consider(SENDER.peer_id, good).accepted
    for change in ({"blake3": "0" * 64}, {"sha256": "0" * 64}, {"trailer": "sha1"}):
        answer = server.consider(SENDER.peer_id, msgspec.structs.replace(good, **change))
        assert not answer.accepted, change
        assert answer.reason.startswith("bad-offer:"), change


async def test_growing_file_wakes_every_waiter_on_progress_end_and_failure() -> None:
    """Waiters see each advance; the end returns the size; a failure raises in all of them."""
    growing = GrowingFile(Path("/nonexistent"), 100)
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(lambda: _collect(growing, seen))
        await trio.testing.wait_all_tasks_blocked()
        growing.advance(40)
        await trio.testing.wait_all_tasks_blocked()
        growing.finish("ab" * 32)
    assert sorted(seen) == [40, 40, 100, 100]
    assert await growing.digest() == "ab" * 32
    failing = GrowingFile(Path("/nonexistent"), 10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _expect_failure(failing))
        await trio.testing.wait_all_tasks_blocked()
        failing.fail("disk full")
    with pytest.raises(OSError, match="disk full"):
        await failing.readable(0)


async def _collect(growing: GrowingFile, seen: list[int]) -> None:
    offset = 0
    while offset < growing.size:
        offset = await growing.readable(offset)
        seen.append(offset)


async def _expect_failure(growing: GrowingFile) -> None:
    with pytest.raises(OSError, match="not completed: disk full"):
        await growing.digest()


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.net
@pytest.mark.parametrize("scheme", ["tcp", "tls+tcp", "ipc"])
async def test_a_growing_file_arrives_whole_and_checked_though_sending_began_before_it_was(
    scheme: str,
    tmp_path: Path,
    pki: Pki,  # noqa: F811 (the fixture imported above)
    nursery: trio.Nursery,
) -> None:
    """Bytes go out while the file is written (the last piece waits for the first sent bytes);
    the receiver stores it once the signed trailer's BLAKE3 matches, and reports that digest."""
    source = tmp_path / "update.bin"
    source.write_bytes(b"")
    data = pieces(3 * MiB + 12345, 6)
    size = sum(map(len, data))
    growing = GrowingFile(source, size)
    address = f"ipc://{tmp_path}/bulk.sock" if scheme == "ipc" else f"{scheme}://127.0.0.1:0"
    tls = scheme == "tls+tcp"
    srv = await start_server(nursery, tmp_path / "inbox", address, tls=pki.server if tls else None)
    started = trio.Event()
    result: list[str] = []

    async def writer() -> None:
        result.append(await write_slowly(source, growing, data, started))

    nursery.start_soon(writer)
    sent = await bulk.send_file(
        source, to=srv.address, identity=SENDER, peer=RECEIVER.peer_id,
        tls=pki.client if tls else None, growing=growing, chunk_size=256 * 1024,
        progress=lambda n: started.set(),
    )  # fmt: skip
    assert (sent.size, sent.blake3) == (size, result[0])
    got = await srv.next_outcome()
    assert isinstance(got, bulk.ReceivedFile)
    assert (got.offer.trailer, got.offer.blake3, got.blake3) == ("blake3", "", result[0])
    assert got.path.read_bytes() == b"".join(data)
    assert leftovers(tmp_path / "inbox") == ["update.bin"]


@pytest.mark.net
async def test_two_receivers_take_one_growing_file_side_by_side(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The parameter server's case: one file being written, two senders following it."""
    source = tmp_path / "update.bin"
    source.write_bytes(b"")
    data = pieces(2 * MiB, 4)
    growing = GrowingFile(source, 2 * MiB)
    servers = [await start_server(nursery, tmp_path / f"in{n}") for n in range(2)]
    nursery.start_soon(write_slowly, source, growing, data)
    async with trio.open_nursery() as senders:
        for srv in servers:
            send = partial(bulk.send_file, to=srv.address, identity=SENDER, peer=RECEIVER.peer_id)
            senders.start_soon(partial(send, source, growing=growing))
    for n in range(2):
        assert (tmp_path / f"in{n}" / "update.bin").read_bytes() == b"".join(data)


@pytest.mark.net
async def test_a_writer_that_fails_aborts_every_transfer_and_leaves_no_file(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Half written, the writer gives up: the sender raises TransferAborted, the receiver
    drops its partial file."""
    source = tmp_path / "update.bin"
    source.write_bytes(b"x" * MiB)
    growing = GrowingFile(source, 4 * MiB)
    growing.advance(MiB)
    srv = await start_server(nursery, tmp_path / "inbox")

    async def fail_later() -> None:
        await trio.sleep(0.05)
        growing.fail("aggregate failed: disk full")

    nursery.start_soon(fail_later)
    with pytest.raises(bulk.TransferAborted, match="aggregate failed: disk full"):
        await bulk.send_file(source, to=srv.address, identity=SENDER, growing=growing)
    assert isinstance(await srv.next_outcome(), bulk.TransferAborted)
    assert leftovers(tmp_path / "inbox") == []


@pytest.mark.net
async def test_a_wrong_digest_in_the_trailer_is_a_mismatch_and_leaves_no_file(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The sender's trailer names other bytes: TransferMismatch(blake3) on both sides."""
    source = tmp_path / "update.bin"
    source.write_bytes(b"y" * MiB)
    growing = GrowingFile(source, MiB)
    growing.finish("cd" * 32)
    srv = await start_server(nursery, tmp_path / "inbox")
    with pytest.raises(bulk.TransferMismatch) as caught:
        await bulk.send_file(source, to=srv.address, identity=SENDER, growing=growing)
    assert (caught.value.field, caught.value.expected) == ("blake3", "cd" * 32)
    outcome = await srv.next_outcome()
    assert isinstance(outcome, bulk.TransferMismatch)
    assert outcome.actual == blake3.blake3(b"y" * MiB).hexdigest()
    assert leftovers(tmp_path / "inbox") == []


# -- hostile trailers --------------------------------------------------------------------------


def _sealed(identity: Identity, message: TransferTrailer) -> bytes:
    return bulk_protocol.frame(
        bulk_protocol.seal_message(identity, message, bulk_protocol.wall_clock)
    )


TRUE = blake3.blake3(b"z" * 1000).hexdigest()
# Sealed when the test runs (a trailer sealed at collection could be stale by then).
HOSTILE_TRAILERS: dict[str, tuple[Callable[[], bytes] | None, type[bulk.BulkError], str]] = {
    "signed by a stranger": (
        lambda: _sealed(STRANGER, TransferTrailer("t-h", TRUE)),
        bulk.PeerAuthError,
        "trailer rejected",
    ),
    "for another transfer": (
        lambda: _sealed(SENDER, TransferTrailer("t-other", TRUE)),
        bulk.PeerAuthError,
        "expected the trailer of transfer t-h",
    ),
    "not hex": (
        lambda: _sealed(SENDER, TransferTrailer("t-h", "Z" * 64)),
        bulk.PeerAuthError,
        "not 64 hex digits",
    ),
    "garbage": (
        lambda: bulk_protocol.frame(b"\x00" * 100),
        bulk.PeerAuthError,
        "trailer rejected",
    ),
    "missing (the sender hangs up)": (None, bulk.TransferAborted, "before the trailer"),
}


@pytest.mark.net
@pytest.mark.parametrize("case", list(HOSTILE_TRAILERS))
async def test_a_hostile_or_missing_trailer_stores_nothing(
    case: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Correct bytes with a trailer that is not the offer's sender's word for them: refused
    with a reason, no file, the server goes on."""
    trailer, error, reason = HOSTILE_TRAILERS[case]
    srv = await start_server(nursery, tmp_path / "inbox")
    stream = await open_stream(srv.address)
    offer = TransferOffer("t-h", "update.bin", 1000, trailer="blake3")
    assert (await _raw_offer(stream, offer)).accepted
    await stream.send_all(bulk_protocol.U32.pack(1000) + b"z" * 1000 + bulk_protocol.U32.pack(0))
    if trailer is None:
        await stream.aclose()
    else:
        await stream.send_all(trailer())
        verdict = await _raw_answer(stream)
        assert not verdict.accepted
        await stream.aclose()
    outcome = await srv.next_outcome()
    assert isinstance(outcome, error), outcome
    assert reason in str(outcome)
    assert leftovers(tmp_path / "inbox") == []
