"""Receiving files over the bulk protocol: ``BulkServer`` checks, stores and places them."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import trio

from hypha_sm.net.bulk.protocol import (
    DEFAULT_DEPTH,
    DEFAULT_MAX_SIZE,
    HEX_DIGEST,
    MAGIC,
    Authorize,
    BulkError,
    Clock,
    DigestName,
    PeerAuthError,
    ReceivedFile,
    TransferAborted,
    TransferMismatch,
    TransferRefused,
    check_offer,
    close_quietly,
    frame,
    new_hasher,
    offered_digests,
    read_exact,
    read_frame,
    seal_message,
    ssl_cause,
    verdict_reason,
    wall_clock,
)
from hypha_sm.net.bulk.pump import pump_chunks, thread_reader
from hypha_sm.net.streams import Address, open_listener
from hypha_sm.net.tls import TlsFiles
from hypha_sm.wire.envelope import Opener, Rejection
from hypha_sm.wire.identity import Identity, PeerId
from hypha_sm.wire.messages import TransferAnswer, TransferOffer, TransferTrailer, clip

# -- receiver ----------------------------------------------------------------------------------


class _Sink:
    """The partial file and a running hash of each digest the offer names (worker threads)."""

    def __init__(self, fd: int, digests: Iterable[DigestName]) -> None:
        self.fd = fd
        self.hashers = {name: new_hasher(name) for name in digests}

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
            await close_quietly(stream)
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
                if await read_exact(stream, len(MAGIC)) != MAGIC:
                    raise PeerAuthError("not a bulk transfer (bad magic)")
                opened = self.opener.open(await read_frame(stream), self.clock())
        except trio.TooSlowError:
            raise TransferAborted(f"no offer within {self.idle_timeout} s") from None
        except (EOFError, trio.BrokenResourceError) as exc:
            cause = ssl_cause(exc)
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
                checked = await self._store(stream, opened.sender, offer, fd, part, final)
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
        received = ReceivedFile(final, opened.sender, offer, checked.get("blake3", ""))
        unplaced = self.place(received) if self.place is not None else None
        if unplaced is not None:
            final.unlink(missing_ok=True)
            refusal = _refuse(tid, f"not-placed: {unplaced}")
            await self._reply(stream, refusal)
            raise TransferRefused(refusal.reason, transfer_id=tid)
        await self._reply(stream, TransferAnswer(transfer_id=tid, accepted=True))
        return received

    async def _store(
        self,
        stream: trio.abc.Stream,
        sender: PeerId,
        offer: TransferOffer,
        fd: int,
        part: Path,
        final: Path,
    ) -> dict[DigestName, str]:
        """Receive into ``fd`` (the ``part`` file), check its digests, link it as ``final``.

        Returns the digests checked (the offer's, or its trailer's).
        """
        tid = offer.transfer_id
        expected = offered_digests(offer)
        sink = _Sink(fd, ["blake3"] if offer.trailer else expected)
        await self._receive_chunks(stream, sink, offer)
        if offer.trailer:
            expected = {"blake3": await self._trailer(stream, sender, tid)}
        if self.fsync:
            try:
                await trio.to_thread.run_sync(os.fsync, fd)
            except OSError as exc:
                raise TransferAborted(f"cannot flush the file: {exc}", transfer_id=tid) from exc
        for name, hasher in sink.hashers.items():
            actual = hasher.hexdigest()
            if actual != expected[name]:
                raise TransferMismatch(name, expected[name], actual, transfer_id=tid)
        try:
            os.link(part, final)  # atomic, and never overwrites
        except FileExistsError:
            raise TransferRefused(f"exists: {offer.name}", transfer_id=tid) from None
        except OSError as exc:
            raise TransferAborted(f"cannot store {final}: {exc}", transfer_id=tid) from exc
        return expected

    async def _trailer(self, stream: trio.abc.Stream, sender: PeerId, tid: str) -> str:
        """The BLAKE3 in the signed trailer that follows a growing file's bytes."""
        try:
            with trio.fail_after(self.idle_timeout):
                data = await read_frame(stream)
        except trio.TooSlowError:
            raise TransferAborted(
                f"no trailer within {self.idle_timeout} s", transfer_id=tid
            ) from None
        except (EOFError, trio.BrokenResourceError) as exc:
            raise TransferAborted(
                f"the sender went away before the trailer ({exc})", transfer_id=tid
            ) from exc
        opened = self.opener.open(data, self.clock(), expect_sender=sender)
        if isinstance(opened, Rejection):
            raise PeerAuthError(
                f"trailer rejected: {opened.reason} ({opened.detail})", transfer_id=tid
            )
        trailer = opened.message
        if not isinstance(trailer, TransferTrailer) or trailer.transfer_id != tid:
            raise PeerAuthError(f"expected the trailer of transfer {tid}", transfer_id=tid)
        if not HEX_DIGEST.fullmatch(trailer.blake3):
            raise PeerAuthError("the trailer's blake3 is not 64 hex digits", transfer_id=tid)
        return trailer.blake3

    async def _reply(
        self, stream: trio.abc.Stream, answer: TransferAnswer, *, drain: bool = False
    ) -> None:
        """Send a signed answer or verdict, best effort: the sender may already be gone.

        With ``drain``, keep reading (and discarding) until the sender closes, so the verdict
        is not lost to a reset caused by unread data; bounded by a few seconds.
        """
        with trio.move_on_after(self.idle_timeout):
            try:
                await stream.send_all(frame(seal_message(self.identity, answer, self.clock)))
                if drain:
                    with trio.move_on_after(min(self.idle_timeout, 5.0)):
                        while await stream.receive_some(1 << 16):
                            pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _receive_chunks(
        self, stream: trio.abc.Stream, sink: _Sink, offer: TransferOffer
    ) -> None:
        """Read the chunks, write and hash them in worker threads (``pump.pump_chunks``).

        The size must come out as offered.
        """
        steps: list[Callable[[memoryview], object]] = [sink.store]
        steps += [hasher.update for hasher in sink.hashers.values()]
        total = await trio.to_thread.run_sync(
            partial(
                pump_chunks,
                thread_reader(stream, self.idle_timeout),
                steps,
                offer.size,
                depth=self.depth,
                idle_timeout=self.idle_timeout,
                transfer_id=offer.transfer_id,
            )
        )
        # Cancelled while the last chunks went through: abort, never store.
        await trio.lowlevel.checkpoint_if_cancelled()
        if total != offer.size:
            raise TransferMismatch("size", offer.size, total, transfer_id=offer.transfer_id)


def _refuse(transfer_id: str, reason: str) -> TransferAnswer:
    return TransferAnswer(transfer_id=transfer_id, accepted=False, reason=clip(reason))


def _failed(transfer_id: str, error: BulkError) -> TransferAnswer:
    return _refuse(transfer_id, verdict_reason(error))
