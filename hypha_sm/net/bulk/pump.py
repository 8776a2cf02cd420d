"""The receiver's data phase on a plain socket, in threads: read, write and hash side by side.

Over ``tcp://`` and ``ipc://`` the bytes need no decryption, so the event loop need not touch
them. ``pump_chunks`` runs in one worker thread: it reads each chunk straight from the socket
into a buffer and hands the buffer to one thread per step (the file write, each digest); a
buffer is reused once every step is done with it, and at most ``depth`` exist. When a step is
slower than the network no buffer is free, the reader stops reading, the TCP window closes and
the sender blocks: backpressure, as before. The loop-driven reader it replaces read on the
loop and hopped to a thread per step and chunk (docs/network-bulk.md has both figures). TLS
streams keep that reader: their bytes are decrypted by trio's ``SSLStream`` on the loop.
"""

from __future__ import annotations

import os
import queue
import select
import threading
from collections.abc import Callable, Sequence

import trio

from hypha_sm.net.bulk.protocol import MAX_CHUNK, U32, TransferAborted, TransferMismatch

#: How often a waiting reader looks at its task's cancellation and its idle time, seconds.
_TICK = 0.05

Step = Callable[[memoryview], object]


class _Reader:
    """Exact reads from a non-blocking socket, waiting in ``poll``; cancellable, with a timeout."""

    def __init__(self, fd: int, idle_timeout: float) -> None:
        self.fd = fd
        self.idle_timeout = idle_timeout
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        self._idle = 0.0

    def wait(self) -> None:
        """Until the socket is readable (or ``_TICK``): raises on cancellation and idleness."""
        if not self._poller.poll(int(_TICK * 1000)):
            self._idle += _TICK
            if self._idle >= self.idle_timeout:
                raise TimeoutError
        trio.from_thread.check_cancelled()

    def fill(self, view: memoryview) -> None:
        """Read exactly ``len(view)`` bytes into ``view``; EOFError if the peer closes first."""
        got = 0
        while got < len(view):
            try:
                n = os.readv(self.fd, [view[got:]])
            except BlockingIOError:
                self.wait()
                continue
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise EOFError(str(exc)) from exc
            if n == 0:
                raise EOFError(f"connection closed {len(view) - got} bytes short")
            got += n
            self._idle = 0.0


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
    fd: int,
    steps: Sequence[Step],
    size: int,
    *,
    depth: int,
    idle_timeout: float,
    transfer_id: str,
) -> int:
    """In a worker thread: read ``chunk* end`` from socket ``fd``, each chunk through ``steps``.

    Returns the bytes received once the end mark came and every step finished. Raises
    ``TransferMismatch`` (more than ``size`` bytes), ``TransferAborted`` (a chunk over
    ``MAX_CHUNK``, the sender gone or idle for ``idle_timeout`` s, a step's ``OSError``), or
    ``trio.Cancelled`` when the calling task is cancelled.
    """
    reader = _Reader(fd, idle_timeout)
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
    except TimeoutError:
        raise TransferAborted(
            f"no data for {idle_timeout} s after {total} of {size} bytes",
            transfer_id=transfer_id,
        ) from None
    except EOFError as exc:
        raise TransferAborted(
            f"the sender went away after {total} of {size} bytes ({exc})",
            transfer_id=transfer_id,
        ) from None
    finally:
        lanes.close()
    if lanes.failure:
        raise TransferAborted(f"cannot write: {lanes.failure[0]}", transfer_id=transfer_id)
    return total
