"""A file sent while it is still being written: its size is known now, its digest at the end.

The parameter server writes the round's update tensor by tensor; sending it only once it is
complete (the offer names the digest) makes a round cost the outer step plus the transfer.
With a ``GrowingFile`` the offer names the final size and ``trailer = "blake3"``, each sender
sends bytes as soon as they are in the file, and the signed ``TransferTrailer`` with the digest
follows the last byte. The receiver keeps the bytes in its ``.part`` file until the trailer
checks out, exactly as it does for an offer that names its digest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio


class GrowingFile:
    """The file at ``path``, ``size`` bytes once complete, that a writer is filling in order.

    The writer reports progress with ``advance`` (bytes now in the file, from the start), then
    ``finish`` with the BLAKE3 of all of them, or ``fail``. These run on the trio loop's
    thread; a writer in another thread uses ``reporter(token)``. Any number of senders wait in
    ``readable`` and ``digest``.
    """

    def __init__(self, path: Path, size: int) -> None:
        if size < 0:
            raise ValueError("size must not be negative")
        self.path = path
        self.size = size
        self.written = 0
        self.blake3: str | None = None
        self.failure: str | None = None
        self._changed = trio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def advance(self, written: int) -> None:
        """``written`` bytes (from the start) are in the file and readable."""
        if written > self.written:
            self.written = min(written, self.size)
            self._wake()

    def finish(self, blake3: str) -> None:
        """Every byte is written; ``blake3`` is their digest."""
        self.written = self.size
        self.blake3 = blake3
        self._wake()

    def fail(self, reason: str) -> None:
        """The writer gave up: every sender aborts its transfer."""
        self.failure = reason or "the writer failed"
        self._wake()

    def reporter(self, token: trio.lowlevel.TrioToken) -> Callable[[int], None]:
        """``advance`` for a writer in another thread: it queues the call, it never blocks."""

        def report(written: int) -> None:
            token.run_sync_soon(self.advance, written)

        return report

    def _check(self) -> None:
        if self.failure is not None:
            raise OSError(f"the file was not completed: {self.failure}")

    async def readable(self, offset: int, want: int = 1) -> int:
        """Bytes in the file once ``want`` past ``offset`` are, or up to the end, or all.

        Returns ``written``; a result not above ``offset`` means the file ends there. Raises
        ``OSError`` if the writer failed. A sender asks for whole chunks (``want``): fewer,
        fuller sends than one per report.
        """
        target = min(offset + max(want, 1), self.size)
        while True:
            self._check()
            if self.written >= target or self.blake3 is not None:
                return self.written
            await self._changed.wait()

    async def digest(self) -> str:
        """The BLAKE3 of the complete file, once the writer has it; ``OSError`` if it failed."""
        while True:
            self._check()
            if self.blake3 is not None:
                return self.blake3
            await self._changed.wait()
