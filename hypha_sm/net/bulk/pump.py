"""The receiver's data phase in threads: read (and decrypt), write and hash side by side.

``pump_chunks`` runs in one worker thread: it reads each chunk into a buffer, straight from
the socket (``tcp://``, ``ipc://``) or decrypted by the TLS connection's own ``SSLObject``
(``tls+tcp://``), and hands the buffer to one thread per step (the file write, each digest); a
buffer is reused once every step is done with it, and at most ``depth`` exist. When a step is
slower than the network no buffer is free, the reader stops reading, the TCP window closes and
the sender blocks: backpressure, as before. The loop-driven reader it replaces read on the loop
(decrypting one TLS record per step there) and hopped to a thread per step and chunk
(docs/network-bulk.md has the figures); a stream no thread can read directly is read through
the loop, one call per read, by the same pipeline.
"""

from __future__ import annotations

import os
import queue
import select
import ssl
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import cast

import trio

from hypha_sm.net.bulk.protocol import MAX_CHUNK, U32, TransferAborted, TransferMismatch

#: How often a waiting reader looks at its task's cancellation and its idle time, seconds.
_TICK = 0.05

Step = Callable[[memoryview], object]


class ThreadSocket:
    """A trio-owned (non-blocking) socket used from a worker thread, waiting in ``poll``.

    Every wait checks whether the calling trio task was cancelled (``trio.Cancelled``) and
    raises ``TimeoutError`` after ``idle_timeout`` seconds of waiting without progress. A
    broken connection is the ``ConnectionError`` the system call raised.
    """

    def __init__(self, fd: int, idle_timeout: float) -> None:
        self.fd = fd
        self.idle_timeout = idle_timeout
        self._idle = 0.0
        self._pollers: dict[int, select.poll] = {}

    def _wait(self, event: int) -> None:
        poller = self._pollers.get(event)
        if poller is None:
            poller = self._pollers[event] = select.poll()
            poller.register(self.fd, event)
        if not poller.poll(int(_TICK * 1000)):
            self._idle += _TICK
            if self._idle >= self.idle_timeout:
                raise TimeoutError(f"no progress for {self.idle_timeout} s")
        trio.from_thread.check_cancelled()

    def _retry(self, event: int, call: Callable[[], int]) -> int:
        while True:
            try:
                n = call()
            except BlockingIOError:
                self._wait(event)
                continue
            self._idle = 0.0
            return n

    def read_into(self, view: memoryview) -> int:
        """Some bytes into ``view`` (0 at EOF), waiting for them."""
        return self._retry(select.POLLIN, lambda: os.readv(self.fd, [view]))

    def write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[self._retry(select.POLLOUT, partial(os.write, self.fd, view)) :]

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """Up to ``count`` bytes of file ``fd`` from ``offset``, page cache to socket."""
        return self._retry(select.POLLOUT, lambda: os.sendfile(self.fd, fd, offset, count))


class _PlainReader:
    """Exact reads from the socket itself."""

    def __init__(self, sock: ThreadSocket) -> None:
        self._sock = sock

    def fill(self, view: memoryview) -> None:
        """Read exactly ``len(view)`` bytes into ``view``; EOFError if the peer closes first."""
        got = 0
        while got < len(view):
            n = self._sock.read_into(view[got:])
            if n == 0:
                raise EOFError(f"connection closed {len(view) - got} bytes short")
            got += n


class _TlsReader:
    """Exact reads of decrypted bytes, driving trio's ``SSLStream``'s TLS object from here.

    The stream's ``SSLObject`` and memory BIOs are trio's (private attributes): this is only
    safe while no task uses the stream, which holds for the receiver's data phase (nothing is
    sent until the bytes are in). Bytes read past the data phase stay in the incoming BIO, where
    the stream finds them next.
    """

    #: Bytes taken from the socket per read: several TLS records per wake-up.
    PULL = 256 * 1024

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], sock: ThreadSocket) -> None:
        self._tls: ssl.SSLObject = stream._ssl_object
        self._incoming: ssl.MemoryBIO = stream._incoming
        self._outgoing: ssl.MemoryBIO = stream._outgoing
        # With a buffer, SSLObject.read returns the count it read into it (typeshed says bytes).
        self._read_into = cast(Callable[[int, memoryview], int], self._tls.read)
        self._sock = sock
        self._raw = bytearray(self.PULL)

    def fill(self, view: memoryview) -> None:
        """Read exactly ``len(view)`` decrypted bytes into ``view``; EOFError if it ends first."""
        got = 0
        try:
            while got < len(view):
                try:
                    n = self._read_into(len(view) - got, view[got:])
                except ssl.SSLWantReadError:
                    self._flush()  # e.g. a key update's answer
                    self._pull()
                    continue
                if n == 0:
                    raise EOFError(f"TLS closed {len(view) - got} bytes short")
                got += n
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError) as exc:
            raise EOFError(f"TLS closed {len(view) - got} bytes short") from exc
        except ssl.SSLError as exc:
            raise EOFError(f"TLS error: {exc}") from exc
        self._flush()

    def _pull(self) -> None:
        n = self._sock.read_into(memoryview(self._raw))
        if n == 0:
            self._incoming.write_eof()
        else:
            self._incoming.write(memoryview(self._raw)[:n])

    def _flush(self) -> None:
        if self._outgoing.pending:
            self._sock.write_all(self._outgoing.read())


class _StreamReader:
    """Exact reads from any trio stream, each one a call into the loop (slow, but any stream).

    For streams the other readers cannot drive from a thread (a TLS stream over something
    other than a socket, or a trio whose internals moved); the node's own streams never need it.
    """

    def __init__(self, stream: trio.abc.ReceiveStream, idle_timeout: float) -> None:
        self._stream = stream
        self._idle_timeout = idle_timeout

    async def _receive(self, n: int) -> bytes | bytearray:
        with trio.move_on_after(self._idle_timeout):
            return await self._stream.receive_some(n)
        raise TimeoutError(f"no progress for {self._idle_timeout} s")

    def fill(self, view: memoryview) -> None:
        """Read exactly ``len(view)`` bytes into ``view``; EOFError if the peer closes first."""
        got = 0
        while got < len(view):
            try:
                data = trio.from_thread.run(self._receive, len(view) - got)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise EOFError(f"connection broken: {exc}") from exc
            if not data:
                raise EOFError(f"connection closed {len(view) - got} bytes short")
            view[got : got + len(data)] = data
            got += len(data)


Reader = _PlainReader | _TlsReader | _StreamReader


def thread_reader(stream: trio.abc.Stream, idle_timeout: float) -> Reader:
    """The reader ``pump_chunks`` uses on ``stream``: straight from the socket where it can."""
    if isinstance(stream, trio.SocketStream):
        return _PlainReader(ThreadSocket(stream.socket.fileno(), idle_timeout))
    if isinstance(stream, trio.SSLStream) and isinstance(
        stream.transport_stream, trio.SocketStream
    ):
        parts = ("_ssl_object", "_incoming", "_outgoing")
        if all(hasattr(stream, part) for part in parts):  # trio's internals, as of 0.35
            sock = ThreadSocket(stream.transport_stream.socket.fileno(), idle_timeout)
            return _TlsReader(stream, sock)
    return _StreamReader(stream, idle_timeout)


class _Lanes:
    """One thread per step, each taking every buffer in order; a buffer is free once all did."""

    def __init__(self, steps: Sequence[Step], depth: int) -> None:
        self.free: queue.Queue[bytearray] = queue.Queue()
        self.made = 0
        self.depth = depth
        self.failure: list[OSError] = []
        self._users: dict[int, int] = {}
        self._lock = threading.Lock()
        self._queues: list[queue.Queue[tuple[bytearray, int] | None]] = []
        self._threads: list[threading.Thread] = []
        for step in steps:
            lane: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
            thread = threading.Thread(
                target=self._run, args=(lane, step), name="bulk-receive", daemon=True
            )
            self._queues.append(lane)
            self._threads.append(thread)
            thread.start()

    def _run(self, lane: queue.Queue[tuple[bytearray, int] | None], step: Step) -> None:
        while (item := lane.get()) is not None:
            buf, n = item
            if not self.failure:  # after a failure the rest only hands the buffers back
                try:
                    step(memoryview(buf)[:n])
                except OSError as exc:
                    self.failure.append(exc)
            self._release(buf)

    def _release(self, buf: bytearray) -> None:
        with self._lock:
            self._users[id(buf)] -= 1
            if self._users[id(buf)] == 0:
                del self._users[id(buf)]
                self.free.put(buf)

    def take(self, n: int) -> bytearray:
        """A buffer of at least ``n`` bytes: a free one, a new one (up to ``depth``), or wait."""
        while True:
            try:
                buf = self.free.get_nowait()
            except queue.Empty:
                if self.made < self.depth:
                    self.made += 1
                    return bytearray(n)
                try:
                    buf = self.free.get(timeout=_TICK)
                except queue.Empty:
                    trio.from_thread.check_cancelled()
                    continue
            return buf if len(buf) >= n else bytearray(n)  # chunks grew: replace, not add

    def hand_out(self, buf: bytearray, n: int) -> None:
        with self._lock:
            self._users[id(buf)] = len(self._queues)
        for lane in self._queues:
            lane.put((buf, n))

    def close(self) -> None:
        """Let every step finish what it was given, and end the threads."""
        for lane in self._queues:
            lane.put(None)
        for thread in self._threads:
            thread.join()


def pump_chunks(
    reader: Reader,
    steps: Sequence[Step],
    size: int,
    *,
    depth: int,
    idle_timeout: float,
    transfer_id: str,
) -> int:
    """In a worker thread: read ``chunk* end`` with ``reader``, each chunk through ``steps``.

    Returns the bytes received once the end mark came and every step finished. Raises
    ``TransferMismatch`` (more than ``size`` bytes), ``TransferAborted`` (a chunk over
    ``MAX_CHUNK``, the sender gone or idle for ``idle_timeout`` s, a step's ``OSError``), or
    ``trio.Cancelled`` when the calling task is cancelled.
    """
    lanes = _Lanes(steps, depth)
    total = 0
    header = memoryview(bytearray(4))
    try:
        while True:
            reader.fill(header)
            (n,) = U32.unpack(header)
            if n == 0:
                break
            if n > MAX_CHUNK:
                raise TransferAborted(
                    f"protocol error: a chunk of {n} bytes (limit {MAX_CHUNK})",
                    transfer_id=transfer_id,
                )
            if total + n > size:
                raise TransferMismatch("size", size, total + n, transfer_id=transfer_id)
            buf = lanes.take(n)
            reader.fill(memoryview(buf)[:n])
            total += n
            lanes.hand_out(buf, n)
            if lanes.failure:
                break
            # A reader that never waits never looks at its task otherwise: a receiver stopped
            # mid-transfer must abort it, not store the rest.
            trio.from_thread.check_cancelled()
    except TimeoutError:
        raise TransferAborted(
            f"no data for {idle_timeout} s after {total} of {size} bytes",
            transfer_id=transfer_id,
        ) from None
    except (EOFError, ConnectionError) as exc:
        raise TransferAborted(
            f"the sender went away after {total} of {size} bytes ({exc})",
            transfer_id=transfer_id,
        ) from None
    finally:
        lanes.close()
    if lanes.failure:
        raise TransferAborted(f"cannot write: {lanes.failure[0]}", transfer_id=transfer_id)
    return total
