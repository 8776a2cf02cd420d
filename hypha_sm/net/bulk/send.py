"""Sending a file over the bulk protocol: ``send_file`` dials, ``send_over`` uses a stream."""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import trio

from hypha_sm.net.bulk.growing import GrowingFile
from hypha_sm.net.bulk.protocol import (
    DEFAULT_CHUNK,
    DEFAULT_DEPTH,
    MAGIC,
    MAX_CHUNK,
    U32,
    BulkError,
    Clock,
    DigestName,
    MiB,
    PeerAuthError,
    SentFile,
    TransferAborted,
    TransferRefused,
    check_offer,
    close_quietly,
    error_from_verdict,
    frame,
    new_hasher,
    read_frame,
    seal_message,
    ssl_cause,
    wall_clock,
)
from hypha_sm.net.bulk.pump import ThreadSocket
from hypha_sm.net.streams import Address, open_stream
from hypha_sm.net.tls import TlsFiles
from hypha_sm.wire.envelope import Opener, Rejection
from hypha_sm.wire.identity import Identity, PeerId
from hypha_sm.wire.messages import TransferAnswer, TransferOffer, TransferTrailer

# -- sender ------------------------------------------------------------------------------------


async def file_digest(
    path: str | os.PathLike[str], name: DigestName = "blake3", *, chunk_size: int = 4 * MiB
) -> str:
    """The hex digest of a file, hashed in a worker thread, cancellable between chunks."""
    digest = new_hasher(name)
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
    blake3: str | None = None,
    transfer_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    depth: int = DEFAULT_DEPTH,
    idle_timeout: float = 60.0,
    clock: Clock = wall_clock,
    progress: Callable[[int], None] | None = None,
    growing: GrowingFile | None = None,
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
        sha256: the file's hex SHA-256 if known (e.g. from a manifest); the offer names each
            digest given and the receiver checks each one.
        blake3: the file's hex BLAKE3 if known (e.g. computed when it was written). With
            neither digest, the file's BLAKE3 is computed first, which reads it twice.
        transfer_id: defaults to 128 random bits.
        chunk_size: bytes per chunk (at most ``MAX_CHUNK``); with ``depth`` the sender holds
            about ``depth`` x ``chunk_size`` bytes.
        depth: chunk buffers in flight (reading the file overlaps with sending).
        idle_timeout: seconds without progress (connecting, the answer, a chunk, the verdict).
        clock: wall clock for envelope timestamps.
        progress: called with the total bytes sent after each chunk.
        growing: the file is still being written (``path`` is ``growing.path``): its bytes go
            out as they are written, the offer names ``growing.size`` and no digest, and the
            BLAKE3 follows the bytes in a signed trailer. ``sha256`` and ``blake3`` must be None.

    Raises:
        TransferRefused: the receiver declined; nothing was sent (or, code ``exists``, the name
            was taken by the time the file was complete).
        TransferMismatch: the receiver got another size or digest than offered (e.g. the file
            changed while it was being sent).
        TransferAborted: the connection broke, the receiver gave up, or a timeout expired.
        PeerAuthError: the receiver's envelopes or its TLS certificate did not check out, or
            it refused our certificate.
        OSError: ``path`` cannot be opened.
        TlsSetupError: ``tls+tcp://`` without ``tls``, or its PEM files cannot be loaded.
    """
    source = Path(path)
    if growing is not None and (sha256 is not None or blake3 is not None):
        raise ValueError("a growing file's digest comes in the trailer, not the offer")
    if growing is None and sha256 is None and blake3 is None:
        blake3 = await file_digest(source, "blake3")
    fd = os.open(source, os.O_RDONLY)
    try:
        offer = TransferOffer(
            transfer_id=transfer_id or new_transfer_id(),
            name=name or source.name,
            size=growing.size if growing is not None else os.fstat(fd).st_size,
            sha256=sha256 or "",
            purpose=purpose,
            blake3=blake3 or "",
            trailer="blake3" if growing is not None else "",
        )
        tid = offer.transfer_id
        try:
            with trio.fail_after(idle_timeout):
                stream = await open_stream(to, tls)
        except trio.TooSlowError:
            raise TransferAborted(f"connecting to {to} timed out", transfer_id=tid) from None
        except trio.BrokenResourceError as exc:
            raise PeerAuthError(
                f"TLS handshake with {to} failed: {ssl_cause(exc) or exc}", transfer_id=tid
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
                growing=growing,
            )
        finally:
            await close_quietly(stream)
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
    growing: GrowingFile | None = None,
) -> SentFile:
    """The sender's half of the protocol on a connected ``stream``, reading ``fd`` from its position.

    ``offer`` is sent as given and its size and digests are what the receiver checks; at most
    ``offer.size`` bytes are read (fewer if the file ends first). An offer with a trailer needs
    ``growing``, whose digest is sent after the bytes. See ``send_file``.
    """
    if not 0 < chunk_size <= MAX_CHUNK or depth < 1:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK} and depth at least 1")
    bad = check_offer(offer)
    if bad is not None:
        raise ValueError(bad)
    if bool(offer.trailer) != (growing is not None):
        raise ValueError("an offer with a trailer goes with a growing file, and only then")
    tid = offer.transfer_id
    opener = Opener()
    receiver: list[PeerId] = []

    async def read_answer(what: str) -> TransferAnswer:
        try:
            data = await read_frame(stream)
        except (EOFError, trio.BrokenResourceError) as exc:
            cause = ssl_cause(exc)
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
            await stream.send_all(MAGIC + frame(seal_message(identity, offer, clock)))
            answer = await read_answer("answer")
    except trio.TooSlowError:
        raise TransferAborted("the receiver did not answer in time", transfer_id=tid) from None
    except trio.BrokenResourceError as exc:
        cause = ssl_cause(exc)
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
                    stream, fd, offer.size, chunk_size, depth, idle_timeout, progress, growing
                )
                if growing is not None:
                    digest = await _written(growing.digest(), idle_timeout)
                    trailer = TransferTrailer(transfer_id=tid, blake3=digest)
                    with trio.fail_after(idle_timeout):
                        await stream.send_all(frame(seal_message(identity, trailer, clock)))
                    offer = msgspec.structs.replace(offer, blake3=digest)
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
            raise error_from_verdict(verdict.reason, offer)
        if send_error is None:
            return SentFile(tid, receiver[0], offer.size, offer.sha256, offer.blake3)
    if send_error is not None:
        raise send_error
    if isinstance(verdict, BulkError):
        raise verdict
    raise TransferAborted(f"no verdict from the receiver within {idle_timeout} s", transfer_id=tid)


_T = TypeVar("_T")


async def _written(wait: Awaitable[_T], idle_timeout: float) -> _T:
    """What a growing file's writer produces next, or ``OSError`` if it stalls or failed."""
    with trio.move_on_after(idle_timeout):
        return await wait
    raise OSError(f"the writer added nothing for {idle_timeout} s")


def _sendfile_batch(
    sock_fd: int, fd: int, offset: int, lengths: list[int], idle_timeout: float
) -> int:
    """In a worker thread: send one chunk per entry of ``lengths`` straight from the page cache.

    The socket is trio's (non-blocking): ``ThreadSocket`` waits in ``poll`` and checks for the
    calling task's cancellation. Returns the file bytes sent; fewer than asked only if the file
    shrank (which breaks the framing, so the caller must abort).
    """
    sock = ThreadSocket(sock_fd, idle_timeout)
    sent = 0
    for n in lengths:
        sock.write_all(U32.pack(n))
        done = 0
        while done < n:
            k = sock.sendfile(fd, offset + sent + done, n - done)
            if k == 0:
                return sent + done
            done += k
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
    growing: GrowingFile | None,
) -> None:
    """Like ``_send_chunks`` for a plain socket: the kernel copies file pages to the socket.

    No buffers in this process at all; a worker thread sends ``depth`` chunks per call.
    """
    sock_fd = stream.socket.fileno()
    start = os.lseek(fd, 0, os.SEEK_CUR)
    available = max(0, os.fstat(fd).st_size - start)
    # A file shorter than offered: the receiver will say so. A growing one is offered whole.
    total = size if growing is not None else min(size, available)
    sent = 0
    while sent < total:
        if growing is not None:
            whole = depth * chunk_size  # a full batch, as from a finished file
            ready = await _written(growing.readable(start + sent, whole), idle_timeout) - start
            if ready <= sent:
                raise OSError(f"the file ended after {start + sent} of {size} bytes")
            batch_end = min(total, ready)
        else:
            batch_end = total
        lengths: list[int] = []
        batch = 0
        while len(lengths) < depth and sent + batch < batch_end:
            n = min(chunk_size, batch_end - sent - batch)
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
        await stream.send_all(U32.pack(0))


async def _send_chunks(
    stream: trio.abc.SendStream,
    fd: int,
    size: int,
    chunk_size: int,
    depth: int,
    idle_timeout: float,
    progress: Callable[[int], None] | None,
    growing: GrowingFile | None = None,
) -> None:
    """Send up to ``size`` bytes of ``fd`` as chunks, then the end mark.

    With ``growing``, each chunk waits until its bytes are in the file.
    Plain sockets and regular files go through ``sendfile`` (``_sendfile_chunks``). Otherwise
    (TLS) a reader task fills buffers in a worker thread while this task sends them: at most
    ``depth`` buffers exist, and ``send_all`` blocks while the receiver is slow (backpressure).
    Each buffer keeps 4 bytes in front for the chunk header, so a chunk is one ``send_all``.
    """
    if isinstance(stream, trio.SocketStream) and stat.S_ISREG(os.fstat(fd).st_mode):
        return await _sendfile_chunks(
            stream, fd, size, chunk_size, depth, idle_timeout, progress, growing
        )
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

    start = os.lseek(fd, 0, os.SEEK_CUR)

    async def reader() -> None:
        remaining = size
        async with full_send:
            while remaining > 0:
                buf = await free_recv.receive()
                want = min(chunk_size, remaining)
                try:
                    if growing is not None:
                        offset = start + size - remaining
                        ready = await _written(growing.readable(offset, want), idle_timeout)
                        want = min(want, ready - offset)
                        if want <= 0:
                            return  # the file ended early: the receiver will say so
                    n = await trio.to_thread.run_sync(fill, buf, want)
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
                U32.pack_into(buf, 0, n)
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
        await stream.send_all(U32.pack(0))
