"""Chunked bulk transfer of files between nodes, bound to a signed ``TransferOffer``.

Pseudo-gradients, parameter updates, dataset slices and model artifacts are files of up to many
GB. They move over a trio byte stream (``hypha_sm.net.streams``: ``tcp://``, ``ipc://``,
``tls+tcp://``), not as NNG messages: NNG reached 25-47 % of a bare TCP socket on loopback and
holds each message whole in memory, while a stream gives byte-level backpressure. The
measurements and the choice are in ``docs/network-bulk.md``.

Protocol, one transfer per connection (``frame`` = 4-byte big-endian length + that many bytes,
at most 64 KiB)::

    sender → receiver   MAGIC frame(seal(TransferOffer))    who sends what: name, size, SHA-256
    receiver → sender   frame(seal(TransferAnswer))         accepted, or refused with a reason
    sender → receiver   chunk* end                          chunk = u32 n (1..MAX_CHUNK) + n bytes
                                                            end = u32 0
    receiver → sender   frame(seal(TransferAnswer))         the verdict: accepted=True once the
                                                            file is verified, stored and (with
                                                            a ``place`` hook) placed

The verdict may come early (too many bytes, disk error, the receiver cancelled); the sender
watches for it while it sends and stops at once. A refused verdict's ``reason`` starts with a
code: ``size-mismatch``, ``sha256-mismatch``, ``exists``, ``aborted``, ``not-placed`` (see
``_verdict_reason`` and ``BulkServer``'s ``place``).

Threat model. Peers are identified by Ed25519 keys (``hypha_sm.wire``), never by addresses.

* The receiver writes bytes only after a ``TransferOffer`` envelope on the same connection was
  verified as signed by the sender, fresh (clock skew) and not replayed (the server's single
  ``Opener`` remembers envelope ids), and only if its ``authorize`` policy accepted that sender
  and offer. Oversized offers are refused before any byte is sent.
* Integrity is end to end: the size and SHA-256 are inside the signed offer, so a corrupted or
  substituted stream fails the check, even over plain ``tcp://``; the partial file is removed
  and the error names expected and actual values. A file appears under its final name only
  after the check (it is ``.<transfer id>.part`` until then; the final step is an atomic link
  that never overwrites).
* The sender believes an answer or verdict only if it is signed by the receiver it meant
  (``peer``) and names its transfer id (128 random bits by default), so a forged "stored" or a
  replayed old verdict is refused.
* Names are plain file names (no separators, no leading dot) and the receiver chooses the
  directory. Resources are bounded: ``depth`` chunk buffers per transfer (chunks are at most
  ``MAX_CHUNK``), ``max_concurrent`` transfers, a timeout on every wait.
* Confidentiality, and protection against an on-path attacker who breaks or hijacks a
  connection after the offer, need ``tls+tcp://`` (mutual TLS: both certificates must chain to
  the configured trust bundle). ``tcp://`` and ``ipc://`` are for local development: an attacker
  there can read the bytes or spoil the transfer, but cannot get a different file accepted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import shutil
import ssl
import stat
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from hypha_sm.net.streams import Address, open_listener, open_stream
from hypha_sm.net.tls import TlsFiles
from hypha_sm.wire.envelope import MSG_ID_BYTES, Opener, Rejection, seal
from hypha_sm.wire.identity import Identity, PeerId
from hypha_sm.wire.messages import TransferAnswer, TransferOffer, clip

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_DEPTH",
    "DEFAULT_MAX_SIZE",
    "MAGIC",
    "MAX_CHUNK",
    "Authorize",
    "BulkError",
    "BulkServer",
    "PeerAuthError",
    "ReceivedFile",
    "SentFile",
    "TransferAborted",
    "TransferMismatch",
    "TransferRefused",
    "file_sha256",
    "new_transfer_id",
    "send_file",
    "send_over",
]

MAGIC = b"HSMBULK1"
MiB = 1 << 20
#: Bytes per chunk the sender uses by default.
DEFAULT_CHUNK = 1 * MiB
#: Largest chunk in the protocol; a receiver holds at most ``depth`` x this per transfer.
MAX_CHUNK = 4 * MiB
#: Chunk buffers per side and transfer: file I/O and hashing overlap with the network.
DEFAULT_DEPTH = 4
#: Largest file a server accepts unless configured otherwise.
DEFAULT_MAX_SIZE = 64 << 30
MAX_FRAME = 64 * 1024

_U32 = struct.Struct(">I")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
_TRANSFER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MISMATCH = re.compile(r"(size|sha256)-mismatch: expected=(\S+) actual=(\S+)")

Clock = Callable[[], float]
#: ``authorize(sender, offer)`` returns None to accept, or a short reason to refuse.
Authorize = Callable[[PeerId, TransferOffer], str | None]


def wall_clock() -> float:
    """Seconds since the epoch, for envelope timestamps."""
    return time.time()


# -- errors ------------------------------------------------------------------------------------


class BulkError(Exception):
    """A bulk transfer failed; the subclass says how. ``transfer_id`` is set when known."""

    def __init__(self, message: str, *, transfer_id: str = "") -> None:
        super().__init__(message)
        self.transfer_id = transfer_id


class TransferRefused(BulkError):
    """The receiver declined the transfer.

    Before any byte was sent (too large, unauthorized, …), or at the end with code ``exists``
    (a file of that name appeared meanwhile).
    """

    def __init__(self, reason: str, *, transfer_id: str = "") -> None:
        super().__init__(
            f"transfer {transfer_id or '?'} refused: {reason}", transfer_id=transfer_id
        )
        self.reason = reason

    @property
    def code(self) -> str:
        """The reason's code: ``too-large``, ``unauthorized``, ``exists``, ``busy``, …."""
        return self.reason.split(":", 1)[0]


class TransferMismatch(BulkError):
    """The bytes do not match the signed offer: ``field`` is ``"size"`` or ``"sha256"``."""

    def __init__(
        self,
        field: Literal["size", "sha256"],
        expected: int | str,
        actual: int | str,
        *,
        transfer_id: str = "",
    ) -> None:
        unit = " bytes" if field == "size" else ""
        super().__init__(
            f"transfer {transfer_id or '?'}: {field} mismatch: expected {expected}{unit}, "
            f"got {actual}{unit}; the partial file was removed",
            transfer_id=transfer_id,
        )
        self.field = field
        self.expected = expected
        self.actual = actual


class TransferAborted(BulkError):
    """The transfer stopped before completing: connection lost, cancelled, timed out, I/O error."""


class PeerAuthError(BulkError):
    """The peer was not authenticated: bad or foreign envelope, wrong signer, or TLS refused."""


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentFile:
    """A transfer the receiver verified and stored."""

    transfer_id: str
    receiver: PeerId
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """A verified file in the receiving directory, and the signed offer it was bound to."""

    path: Path
    sender: PeerId
    offer: TransferOffer


# -- framing -----------------------------------------------------------------------------------


async def _read_exact(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        more = await stream.receive_some(n - len(data))
        if not more:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes")
        data += more
    return bytes(data)


async def _read_into(stream: trio.abc.ReceiveStream, view: memoryview) -> None:
    """Fill ``view`` exactly; a plain socket reads straight into it, without a copy."""
    got, n = 0, len(view)
    if isinstance(stream, trio.SocketStream):
        sock = stream.socket
        while got < n:
            try:
                k = await sock.recv_into(view[got:], n - got)
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
            if k == 0:
                raise EOFError(f"connection closed {n - got} bytes into a chunk")
            got += k
        return
    while got < n:
        more = await stream.receive_some(n - got)
        if not more:
            raise EOFError(f"connection closed {n - got} bytes into a chunk")
        view[got : got + len(more)] = more
        got += len(more)


def _frame(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


async def _read_frame(stream: trio.abc.ReceiveStream) -> bytes:
    (n,) = _U32.unpack(await _read_exact(stream, 4))
    if n > MAX_FRAME:
        raise EOFError(f"control frame of {n} bytes (limit {MAX_FRAME})")
    return await _read_exact(stream, n)


def _seal(identity: Identity, message: TransferOffer | TransferAnswer, clock: Clock) -> bytes:
    return seal(identity, message, clock(), os.urandom(MSG_ID_BYTES))


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def _close(stream: trio.abc.AsyncResource) -> None:
    """Close gracefully within a second (TLS sends close_notify), forcefully after that."""
    with trio.move_on_after(1.0):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()
        return
    await trio.aclose_forcefully(stream)


def check_offer(offer: TransferOffer) -> str | None:
    """Why an offer is malformed (a refusal reason), or None if its fields are well formed."""
    if not _TRANSFER_ID.fullmatch(offer.transfer_id):
        return "bad-offer: the transfer id must be 1-64 of [A-Za-z0-9_-]"
    if not _NAME.fullmatch(offer.name) or offer.name.endswith(".part"):
        return f"bad-name: {offer.name[:80]!r} is not a plain file name"
    if not _SHA256.fullmatch(offer.sha256):
        return "bad-offer: sha256 must be 64 lowercase hex digits"
    if offer.size < 0:
        return "bad-offer: negative size"
    return None


# -- verdicts (carried in TransferAnswer.reason) ------------------------------------------------


def _verdict_reason(error: BulkError) -> str:
    if isinstance(error, TransferMismatch):
        return f"{error.field}-mismatch: expected={error.expected} actual={error.actual}"
    if isinstance(error, TransferRefused):
        return error.reason
    return f"aborted: {error}"


def _error_from_verdict(reason: str, offer: TransferOffer) -> BulkError:
    tid = offer.transfer_id
    match = _MISMATCH.fullmatch(reason)
    if match and match.group(1) == "size" and match.group(3).isdigit():
        return TransferMismatch("size", offer.size, int(match.group(3)), transfer_id=tid)
    if match and match.group(1) == "sha256":
        return TransferMismatch("sha256", offer.sha256, match.group(3), transfer_id=tid)
    if reason.startswith("aborted: "):
        return TransferAborted(f"the receiver aborted: {reason[9:]}", transfer_id=tid)
    return TransferRefused(reason, transfer_id=tid)


# -- sender ------------------------------------------------------------------------------------


async def file_sha256(path: str | os.PathLike[str], *, chunk_size: int = 4 * MiB) -> str:
    """The hex SHA-256 of a file, hashed in a worker thread, cancellable between chunks."""
    digest = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)

    def step(fd: int) -> int:
        n = os.readv(fd, [buf])
        digest.update(view[:n])
        return n

    fd = os.open(path, os.O_RDONLY)
    try:
        while await trio.to_thread.run_sync(step, fd):
            pass
    finally:
        os.close(fd)
    return digest.hexdigest()


def new_transfer_id() -> str:
    """128 random bits as 32 hex digits."""
    return os.urandom(16).hex()


async def send_file(
    path: str | os.PathLike[str],
    *,
    to: str | Address,
    identity: Identity,
    peer: PeerId | None = None,
    tls: TlsFiles | None = None,
    name: str | None = None,
    purpose: str = "",
    sha256: str | None = None,
    transfer_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    depth: int = DEFAULT_DEPTH,
    idle_timeout: float = 60.0,
    clock: Clock = wall_clock,
    progress: Callable[[int], None] | None = None,
) -> SentFile:
    """Send the file at ``path`` to the bulk server at ``to``; return once it is verified and stored.

    Args:
        path: the file to send; its size when the offer is made is what is offered.
        to: the receiver's bulk address (``tcp://``, ``tls+tcp://``, ``ipc://``).
        identity: our node key; the offer is signed with it.
        peer: the receiver's peer id; answers signed by anyone else are refused. ``None``
            accepts any signer (named in the result): only for an address you trust.
        tls: certificate, key and trust bundle; required for ``tls+tcp://``.
        name: the name the receiver stores the file under (default: the name of ``path``); a
            plain file name of letters, digits and ``._+-``, not starting with a dot.
        purpose: a label for the receiver's policy (``"pseudo-gradient"``, ``"artifact"``, …).
        sha256: the file's hex SHA-256 if known (e.g. computed when it was written);
            otherwise the file is hashed first, which reads it twice.
        transfer_id: defaults to 128 random bits.
        chunk_size: bytes per chunk (at most ``MAX_CHUNK``); with ``depth`` the sender holds
            about ``depth`` x ``chunk_size`` bytes.
        depth: chunk buffers in flight (reading the file overlaps with sending).
        idle_timeout: seconds without progress (connecting, the answer, a chunk, the verdict).
        clock: wall clock for envelope timestamps.
        progress: called with the total bytes sent after each chunk.

    Raises:
        TransferRefused: the receiver declined; nothing was sent (or, code ``exists``, the name
            was taken by the time the file was complete).
        TransferMismatch: the receiver got another size or SHA-256 than offered (e.g. the file
            changed while it was being sent).
        TransferAborted: the connection broke, the receiver gave up, or a timeout expired.
        PeerAuthError: the receiver's envelopes or its TLS certificate did not check out, or
            it refused our certificate.
        OSError: ``path`` cannot be opened.
        TlsSetupError: ``tls+tcp://`` without ``tls``, or its PEM files cannot be loaded.
    """
    source = Path(path)
    if sha256 is None:
        sha256 = await file_sha256(source)
    fd = os.open(source, os.O_RDONLY)
    try:
        offer = TransferOffer(
            transfer_id=transfer_id or new_transfer_id(),
            name=name or source.name,
            size=os.fstat(fd).st_size,
            sha256=sha256,
            purpose=purpose,
        )
        tid = offer.transfer_id
        try:
            with trio.fail_after(idle_timeout):
                stream = await open_stream(to, tls)
        except trio.TooSlowError:
            raise TransferAborted(f"connecting to {to} timed out", transfer_id=tid) from None
        except trio.BrokenResourceError as exc:
            raise PeerAuthError(
                f"TLS handshake with {to} failed: {_ssl_cause(exc) or exc}", transfer_id=tid
            ) from exc
        except OSError as exc:
            raise TransferAborted(f"cannot connect to {to}: {exc}", transfer_id=tid) from exc
        try:
            return await send_over(
                stream,
                fd,
                offer,
                identity=identity,
                peer=peer,
                chunk_size=chunk_size,
                depth=depth,
                idle_timeout=idle_timeout,
                clock=clock,
                progress=progress,
            )
        finally:
            await _close(stream)
    finally:
        os.close(fd)


async def send_over(
    stream: trio.abc.Stream,
    fd: int,
    offer: TransferOffer,
    *,
    identity: Identity,
    peer: PeerId | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    depth: int = DEFAULT_DEPTH,
    idle_timeout: float = 60.0,
    clock: Clock = wall_clock,
    progress: Callable[[int], None] | None = None,
) -> SentFile:
    """The sender's half of the protocol on a connected ``stream``, reading ``fd`` from its position.

    ``offer`` is sent as given and its size and SHA-256 are what the receiver checks; at most
    ``offer.size`` bytes are read (fewer if the file ends first). See ``send_file``.
    """
    if not 0 < chunk_size <= MAX_CHUNK or depth < 1:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK} and depth at least 1")
    bad = check_offer(offer)
    if bad is not None:
        raise ValueError(bad)
    tid = offer.transfer_id
    opener = Opener()
    receiver: list[PeerId] = []

    async def read_answer(what: str) -> TransferAnswer:
        try:
            data = await _read_frame(stream)
        except (EOFError, trio.BrokenResourceError) as exc:
            cause = _ssl_cause(exc)
            if cause is not None:
                raise PeerAuthError(
                    f"TLS refused by the receiver: {cause}", transfer_id=tid
                ) from exc
            raise TransferAborted(f"no {what} from the receiver: {exc}", transfer_id=tid) from exc
        opened = opener.open(data, clock(), expect_sender=peer)
        if isinstance(opened, Rejection):
            raise PeerAuthError(
                f"the receiver's {what} was rejected: {opened.reason} ({opened.detail})",
                transfer_id=tid,
            )
        msg = opened.message
        if isinstance(msg, TransferAnswer) and not msg.transfer_id and not msg.accepted:
            # The receiver could not verify our envelope (e.g. our clock is off): it says why.
            raise PeerAuthError(f"the receiver rejected our offer: {msg.reason}", transfer_id=tid)
        if not isinstance(msg, TransferAnswer) or msg.transfer_id != tid:
            raise PeerAuthError(f"the {what} is not for transfer {tid}", transfer_id=tid)
        receiver[:] = [opened.sender]
        return msg

    try:
        with trio.fail_after(idle_timeout):
            await stream.send_all(MAGIC + _frame(_seal(identity, offer, clock)))
            answer = await read_answer("answer")
    except trio.TooSlowError:
        raise TransferAborted("the receiver did not answer in time", transfer_id=tid) from None
    except trio.BrokenResourceError as exc:
        cause = _ssl_cause(exc)
        if cause is not None:
            raise PeerAuthError(f"TLS refused by the receiver: {cause}", transfer_id=tid) from exc
        raise TransferAborted(
            f"connection lost sending the offer: {exc}", transfer_id=tid
        ) from exc
    if not answer.accepted:
        raise TransferRefused(answer.reason, transfer_id=tid)

    # Send the bytes while watching for the verdict, which may come early.
    outcome: list[TransferAnswer | BulkError] = []
    send_error: BulkError | None = None
    arrived = trio.Event()
    sending = trio.CancelScope()

    async def watch() -> None:
        try:
            outcome.append(await read_answer("verdict"))
        except BulkError as exc:
            outcome.append(exc)
        arrived.set()
        sending.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        grace = idle_timeout  # how long to wait for the verdict once sending stops
        with sending:
            try:
                await _send_chunks(
                    stream, fd, offer.size, chunk_size, depth, idle_timeout, progress
                )
            except trio.TooSlowError:
                send_error = TransferAborted(
                    f"no progress for {idle_timeout} s: the receiver stopped reading",
                    transfer_id=tid,
                )
                grace = 0.0
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                send_error = TransferAborted(
                    f"connection lost while sending: {exc}", transfer_id=tid
                )
                grace = min(idle_timeout, 2.0)  # the receiver may have said why before closing
            except OSError as exc:
                send_error = TransferAborted(f"cannot read the file: {exc}", transfer_id=tid)
                grace = 0.0
        with trio.move_on_after(grace):
            await arrived.wait()
        nursery.cancel_scope.cancel()
    verdict = outcome[0] if outcome else None
    if isinstance(verdict, TransferAnswer):
        if not verdict.accepted:
            raise _error_from_verdict(verdict.reason, offer)
        if send_error is None:
            return SentFile(tid, receiver[0], offer.size, offer.sha256)
    if send_error is not None:
        raise send_error
    if isinstance(verdict, BulkError):
        raise verdict
    raise TransferAborted(f"no verdict from the receiver within {idle_timeout} s", transfer_id=tid)


def _sendfile_batch(
    sock_fd: int, fd: int, offset: int, lengths: list[int], idle_timeout: float
) -> int:
    """In a worker thread: send one chunk per entry of ``lengths`` straight from the page cache.

    The socket is non-blocking (trio owns it), so a full send buffer means waiting in
    ``poll``; every wait checks whether the calling trio task was cancelled. Returns the file
    bytes sent; fewer than asked only if the file shrank (which breaks the framing, so the
    caller must abort).
    """
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    waited = 0.0

    def wait() -> None:
        nonlocal waited
        if not poller.poll(50):
            waited += 0.05
            if waited >= idle_timeout:
                raise TimeoutError(f"no progress for {idle_timeout} s")
        trio.from_thread.check_cancelled()

    sent = 0
    for n in lengths:
        header = memoryview(_U32.pack(n))
        while header:
            try:
                header = header[os.write(sock_fd, header) :]
                waited = 0.0
            except BlockingIOError:
                wait()
        done = 0
        while done < n:
            try:
                k = os.sendfile(sock_fd, fd, offset + sent + done, n - done)
            except BlockingIOError:
                wait()
                continue
            if k == 0:
                return sent + done
            done += k
            waited = 0.0
        sent += n
    return sent


async def _sendfile_chunks(
    stream: trio.SocketStream,
    fd: int,
    size: int,
    chunk_size: int,
    depth: int,
    idle_timeout: float,
    progress: Callable[[int], None] | None,
) -> None:
    """Like ``_send_chunks`` for a plain socket: the kernel copies file pages to the socket.

    No buffers in this process at all; a worker thread sends ``depth`` chunks per call.
    """
    sock_fd = stream.socket.fileno()
    start = os.lseek(fd, 0, os.SEEK_CUR)
    available = max(0, os.fstat(fd).st_size - start)
    total = min(size, available)  # a file shorter than offered: the receiver will say so
    sent = 0
    while sent < total:
        lengths: list[int] = []
        batch = 0
        while len(lengths) < depth and sent + batch < total:
            n = min(chunk_size, total - sent - batch)
            lengths.append(n)
            batch += n
        try:
            done = await trio.to_thread.run_sync(
                _sendfile_batch, sock_fd, fd, start + sent, lengths, idle_timeout
            )
        except TimeoutError:
            raise trio.TooSlowError from None
        except (BrokenPipeError, ConnectionError) as exc:
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
        if done < batch:
            raise OSError(f"the file shrank while being sent ({start + sent + done} bytes)")
        sent += batch
        if progress is not None:
            progress(sent)
    with trio.fail_after(idle_timeout):
        await stream.send_all(_U32.pack(0))


async def _send_chunks(
    stream: trio.abc.SendStream,
    fd: int,
    size: int,
    chunk_size: int,
    depth: int,
    idle_timeout: float,
    progress: Callable[[int], None] | None,
) -> None:
    """Send up to ``size`` bytes of ``fd`` as chunks, then the end mark.

    Plain sockets and regular files go through ``sendfile`` (``_sendfile_chunks``). Otherwise
    (TLS) a reader task fills buffers in a worker thread while this task sends them: at most
    ``depth`` buffers exist, and ``send_all`` blocks while the receiver is slow (backpressure).
    Each buffer keeps 4 bytes in front for the chunk header, so a chunk is one ``send_all``.
    """
    if isinstance(stream, trio.SocketStream) and stat.S_ISREG(os.fstat(fd).st_mode):
        return await _sendfile_chunks(stream, fd, size, chunk_size, depth, idle_timeout, progress)
    free_send, free_recv = trio.open_memory_channel[bytearray](depth)
    full_send, full_recv = trio.open_memory_channel[tuple[bytearray, int]](depth)
    for _ in range(depth):
        free_send.send_nowait(bytearray(4 + chunk_size))
    failure: list[OSError] = []

    def fill(buf: bytearray, want: int) -> int:
        view = memoryview(buf)[4 : 4 + want]
        got = 0
        while got < want:
            n = os.readv(fd, [view[got:]])
            if n == 0:
                break
            got += n
        return got

    async def reader() -> None:
        remaining = size
        async with full_send:
            while remaining > 0:
                buf = await free_recv.receive()
                try:
                    n = await trio.to_thread.run_sync(fill, buf, min(chunk_size, remaining))
                except OSError as exc:
                    failure.append(exc)
                    return
                if n == 0:
                    return  # the file is shorter than offered: the receiver will say so
                remaining -= n
                await full_send.send((buf, n))

    async def sender() -> None:
        sent = 0
        async with full_recv:
            async for buf, n in full_recv:
                _U32.pack_into(buf, 0, n)
                with trio.fail_after(idle_timeout):
                    await stream.send_all(memoryview(buf)[: 4 + n])
                sent += n
                if progress is not None:
                    progress(sent)
                free_send.send_nowait(buf)

    # Errors are caught inside the nursery so they leave it as themselves, not as groups.
    error: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        try:
            await sender()
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            error.append(exc)
            nursery.cancel_scope.cancel()
    if error or failure:
        raise (error or failure)[0]
    with trio.fail_after(idle_timeout):
        await stream.send_all(_U32.pack(0))


# -- receiver ----------------------------------------------------------------------------------


class _Sink:
    """The partial file and its running SHA-256; both methods run in worker threads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.digest = hashlib.sha256()

    def store(self, view: memoryview) -> None:
        """Append ``view`` to the file."""
        while view:
            view = view[os.write(self.fd, view) :]


class BulkServer:
    """Accepts authorized, verified file transfers into ``directory``.

    Start it with ``bound = await nursery.start(server.serve, "tls+tcp://0.0.0.0:7010")``
    (port 0 picks a free port; ``bound`` is the real address). Each finished transfer, good or
    bad, goes to ``on_result`` (a ``ReceivedFile`` or a ``BulkError``) and is counted in
    ``received`` / ``failed``; a failed transfer leaves no file and never stops the server.

    Args:
        directory: where verified files appear, under the offer's name.
        identity: this node's key; answers and verdicts are signed with it.
        authorize: ``(sender, offer) -> None | reason``: who may send what, e.g. only the
            job's workers, only ``purpose == "pseudo-gradient"``. It must not raise (an
            exception is a bug and stops the server).
        tls: certificate, key and trust bundle for ``tls+tcp://``.
        max_size: offers above this many bytes are refused before any byte is sent.
        max_concurrent: transfers at once; more are refused with ``busy``.
        depth: chunk buffers per transfer; memory <= ``depth`` x ``MAX_CHUNK`` per transfer
            (``depth`` x the sender's chunk size in practice).
        idle_timeout: seconds without progress before a transfer is dropped.
        fsync: flush each file to disk before reporting it stored.
        opener: envelope verifier (clock skew, replay memory); one per server by default.
        clock: wall clock for envelope timestamps and freshness.
        on_result: called with every outcome.
        place: ``(received) -> None | reason``, called once a file is verified and stored and
            before the sender is told so: it may move the file where it belongs; a reason
            removes the file and the sender hears ``not-placed: <reason>``. It must not raise.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        identity: Identity,
        authorize: Authorize,
        tls: TlsFiles | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
        max_concurrent: int = 8,
        depth: int = DEFAULT_DEPTH,
        idle_timeout: float = 60.0,
        fsync: bool = False,
        opener: Opener | None = None,
        clock: Clock = wall_clock,
        on_result: Callable[[ReceivedFile | BulkError], None] | None = None,
        place: Callable[[ReceivedFile], str | None] | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.directory = Path(directory)
        self.identity = identity
        self.authorize = authorize
        self.tls = tls
        self.max_size = max_size
        self.max_concurrent = max_concurrent
        self.depth = depth
        self.idle_timeout = idle_timeout
        self.fsync = fsync
        self.opener = opener or Opener()
        self.clock = clock
        self.on_result = on_result
        self.place = place
        self.address: Address | None = None
        self.received = 0
        self.failed: Counter[str] = Counter()
        self._active: set[str] = set()  # names being received

    def consider(self, sender: PeerId, offer: TransferOffer) -> TransferAnswer:
        """Check an offer against the limits and the policy, and return the answer to send.

        Used for every offer on a stream. A control-plane handler (an NNG request/response
        handler receiving a ``TransferOffer``) can call it too: the answer carries this
        server's ``address``, and the sender then presents a fresh signed offer there, which
        is checked again.
        """
        reason = check_offer(offer) or self._refusal(sender, offer)
        return TransferAnswer(
            transfer_id=offer.transfer_id,
            accepted=reason is None,
            reason=clip(reason or ""),
            address=str(self.address) if self.address is not None else "",
        )

    def _refusal(self, sender: PeerId, offer: TransferOffer) -> str | None:
        if offer.size > self.max_size:
            return f"too-large: {offer.size} bytes > limit {self.max_size}"
        if offer.name in self._active or (self.directory / offer.name).exists():
            return f"exists: {offer.name}"
        if len(self._active) >= self.max_concurrent:
            return f"busy: {self.max_concurrent} transfers in progress"
        why = self.authorize(sender, offer)
        if why is not None:
            return f"unauthorized: {why}"
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError as exc:
            return f"io-error: {self.directory}: {exc.strerror}"
        if offer.size > free:
            return f"no-space: {offer.size} bytes > {free} free"
        return None

    async def serve(
        self,
        address: str | Address,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``address`` and run each connection in its own task until cancelled.

        An ``ipc://`` socket file is removed when the server stops.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        listener, bound = await open_listener(address, self.tls)
        self.address = bound
        try:
            async with listener, trio.open_nursery() as nursery:
                task_status.started(bound)
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self.handle, stream)
        finally:
            if bound.scheme == "ipc":
                with contextlib.suppress(OSError):
                    os.unlink(bound.path)

    async def handle(self, stream: trio.abc.Stream) -> ReceivedFile | BulkError:
        """Run one transfer on an accepted stream, close it, and report the outcome."""
        outcome: ReceivedFile | BulkError
        try:
            outcome = await self.receive(stream)
        except BulkError as exc:
            outcome = exc
        finally:
            await _close(stream)
        if isinstance(outcome, BulkError):
            self.failed[type(outcome).__name__] += 1
        else:
            self.received += 1
        if self.on_result is not None:
            self.on_result(outcome)
        return outcome

    async def receive(self, stream: trio.abc.Stream) -> ReceivedFile:
        """The receiver's half of the protocol on ``stream``; raises ``BulkError`` on failure.

        On every failure, cancellation included, the partial file is removed.
        """
        try:
            with trio.fail_after(self.idle_timeout):
                if await _read_exact(stream, len(MAGIC)) != MAGIC:
                    raise PeerAuthError("not a bulk transfer (bad magic)")
                opened = self.opener.open(await _read_frame(stream), self.clock())
        except trio.TooSlowError:
            raise TransferAborted(f"no offer within {self.idle_timeout} s") from None
        except (EOFError, trio.BrokenResourceError) as exc:
            cause = _ssl_cause(exc)
            if cause is not None:
                raise PeerAuthError(f"TLS handshake failed: {cause}") from exc
            raise TransferAborted(f"connection lost before the offer: {exc}") from exc
        if isinstance(opened, Rejection) or not isinstance(opened.message, TransferOffer):
            why = (
                f"{opened.reason} ({opened.detail})"
                if isinstance(opened, Rejection)
                else f"expected a transfer offer, got {type(opened.message).__name__}"
            )
            # Say why, signed, without a transfer id: nothing in the envelope can be trusted.
            await self._reply(stream, _refuse("", f"rejected: {why}"))
            raise PeerAuthError(f"offer rejected: {why}")
        offer = opened.message
        tid = offer.transfer_id
        answer = self.consider(opened.sender, offer)
        final = self.directory / offer.name
        part = self.directory / f".{tid}.part"
        fd = -1
        if answer.accepted:
            try:
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as exc:
                answer = _refuse(tid, f"io-error: cannot create the file: {exc.strerror}")
        if not answer.accepted:
            await self._reply(stream, answer)
            raise TransferRefused(answer.reason, transfer_id=tid)

        self._active.add(offer.name)
        try:
            try:
                await self._reply(stream, answer)
                await self._store(stream, offer, fd, part, final)
            except BulkError as exc:
                await self._reply(stream, _failed(tid, exc), drain=True)
                raise
            except BaseException:
                # Cancelled (or worse): tell the sender if it can be done at once.
                with trio.CancelScope(shield=True, deadline=trio.current_time() + 0.5):
                    error = TransferAborted("the receiver cancelled the transfer")
                    await self._reply(stream, _failed(tid, error))
                raise
        finally:
            self._active.discard(offer.name)
            with contextlib.suppress(OSError):
                os.close(fd)
            part.unlink(missing_ok=True)
        received = ReceivedFile(final, opened.sender, offer)
        unplaced = self.place(received) if self.place is not None else None
        if unplaced is not None:
            final.unlink(missing_ok=True)
            refusal = _refuse(tid, f"not-placed: {unplaced}")
            await self._reply(stream, refusal)
            raise TransferRefused(refusal.reason, transfer_id=tid)
        await self._reply(stream, TransferAnswer(transfer_id=tid, accepted=True))
        return received

    async def _store(
        self, stream: trio.abc.Stream, offer: TransferOffer, fd: int, part: Path, final: Path
    ) -> None:
        """Receive into ``fd`` (the ``part`` file), check the SHA-256, link it as ``final``."""
        tid = offer.transfer_id
        sink = _Sink(fd)
        await self._receive_chunks(stream, sink, offer)
        if self.fsync:
            try:
                await trio.to_thread.run_sync(os.fsync, fd)
            except OSError as exc:
                raise TransferAborted(f"cannot flush the file: {exc}", transfer_id=tid) from exc
        actual = sink.digest.hexdigest()
        if actual != offer.sha256:
            raise TransferMismatch("sha256", offer.sha256, actual, transfer_id=tid)
        try:
            os.link(part, final)  # atomic, and never overwrites
        except FileExistsError:
            raise TransferRefused(f"exists: {offer.name}", transfer_id=tid) from None
        except OSError as exc:
            raise TransferAborted(f"cannot store {final}: {exc}", transfer_id=tid) from exc

    async def _reply(
        self, stream: trio.abc.Stream, answer: TransferAnswer, *, drain: bool = False
    ) -> None:
        """Send a signed answer or verdict, best effort: the sender may already be gone.

        With ``drain``, keep reading (and discarding) until the sender closes, so the verdict
        is not lost to a reset caused by unread data; bounded by a few seconds.
        """
        with trio.move_on_after(self.idle_timeout):
            try:
                await stream.send_all(_frame(_seal(self.identity, answer, self.clock)))
                if drain:
                    with trio.move_on_after(min(self.idle_timeout, 5.0)):
                        while await stream.receive_some(1 << 16):
                            pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _receive_chunks(
        self, stream: trio.abc.Stream, sink: _Sink, offer: TransferOffer
    ) -> None:
        """Read chunks into at most ``depth`` buffers while worker threads hash and write them.

        Hashing and writing are separate tasks, each with its own worker thread, so a chunk
        costs max(hash, write) rather than their sum. A buffer is reused once both are done
        with it. When either is slower than the network no buffer is free, this task stops
        reading, the TCP window closes and the sender's ``send_all`` blocks: backpressure.
        """
        tid = offer.transfer_id
        depth = self.depth
        free_send, free_recv = trio.open_memory_channel[bytearray](depth)
        to_hash_send, to_hash_recv = trio.open_memory_channel[tuple[bytearray, int]](depth)
        to_write_send, to_write_recv = trio.open_memory_channel[tuple[bytearray, int]](depth)
        pending: dict[int, int] = {}  # id(buffer) -> consumers still using it
        failure: list[BulkError] = []
        total = 0

        def release(buf: bytearray) -> None:
            pending[id(buf)] -= 1
            if pending[id(buf)] == 0:
                del pending[id(buf)]
                free_send.send_nowait(buf)

        async def consume(
            channel: trio.MemoryReceiveChannel[tuple[bytearray, int]],
            work: Callable[[memoryview], object],
        ) -> None:
            async with channel:
                async for buf, n in channel:
                    try:
                        await trio.to_thread.run_sync(work, memoryview(buf)[:n])
                    except OSError as exc:
                        failure.append(TransferAborted(f"cannot write: {exc}", transfer_id=tid))
                        nursery.cancel_scope.cancel()
                        return
                    release(buf)

        async def reader() -> None:
            nonlocal total
            buffers = 0
            async with to_hash_send, to_write_send:
                while True:
                    with trio.fail_after(self.idle_timeout):
                        (n,) = _U32.unpack(await _read_exact(stream, 4))
                    if n == 0:
                        return
                    if n > MAX_CHUNK:
                        raise TransferAborted(
                            f"protocol error: a chunk of {n} bytes (limit {MAX_CHUNK})",
                            transfer_id=tid,
                        )
                    if total + n > offer.size:
                        raise TransferMismatch("size", offer.size, total + n, transfer_id=tid)
                    try:
                        buf = free_recv.receive_nowait()
                    except trio.WouldBlock:
                        if buffers < depth:  # buffers are made lazily, at most ``depth``
                            buf = bytearray(n)
                            buffers += 1
                        else:
                            buf = await free_recv.receive()
                    if len(buf) < n:
                        buf = bytearray(n)  # the sender's chunks grew: replace, not add
                    with trio.fail_after(self.idle_timeout):
                        await _read_into(stream, memoryview(buf)[:n])
                    total += n
                    pending[id(buf)] = 2
                    await to_hash_send.send((buf, n))
                    await to_write_send.send((buf, n))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, to_hash_recv, sink.digest.update)
            nursery.start_soon(consume, to_write_recv, sink.store)
            try:
                await reader()
            except BulkError as exc:
                failure.append(exc)
            except trio.TooSlowError:
                failure.append(
                    TransferAborted(
                        f"no data for {self.idle_timeout} s after {total} of {offer.size} bytes",
                        transfer_id=tid,
                    )
                )
            except (EOFError, trio.BrokenResourceError) as exc:
                failure.append(
                    TransferAborted(
                        f"the sender went away after {total} of {offer.size} bytes ({exc})",
                        transfer_id=tid,
                    )
                )
            if failure:
                nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]
        if total != offer.size:
            raise TransferMismatch("size", offer.size, total, transfer_id=tid)


def _refuse(transfer_id: str, reason: str) -> TransferAnswer:
    return TransferAnswer(transfer_id=transfer_id, accepted=False, reason=clip(reason))


def _failed(transfer_id: str, error: BulkError) -> TransferAnswer:
    return _refuse(transfer_id, _verdict_reason(error))
