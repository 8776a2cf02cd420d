"""A job's output: each line forwarded to the log and kept in its work dir, capped in size."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, Final

import trio

log = logging.getLogger("hypha_sm.roles.worker.process")
#: Job output is forwarded here, one record per line.
job_log = logging.getLogger("hypha_sm.job")
#: Longest line forwarded to the logger; longer lines are cut.
MAX_LOG_LINE: Final = 16 * 1024

# --------------------------------------------------------------------------- output


class CappedLog:
    """Write up to ``cap`` bytes to a file, then one truncation note; forward lines to a logger."""

    def __init__(self, path: Path, cap: int, job_id: str, stream: str) -> None:
        self._file: IO[bytes] = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._cap = cap
        self._written = 0
        self._truncated = False
        self._partial = b""
        self._job_id = job_id
        self._stream = stream

    @property
    def truncated(self) -> bool:
        return self._truncated

    def feed(self, data: bytes) -> None:
        if not self._truncated:
            room = self._cap - self._written
            self._file.write(data[:room])
            self._written += min(room, len(data))
            if len(data) > room:
                self._truncated = True
                self._file.write(f"\n[hypha: output truncated at {self._cap} bytes]\n".encode())
                job_log.warning(
                    "job %s %s: output over %d bytes; the rest is dropped",
                    self._job_id,
                    self._stream,
                    self._cap,
                    extra={"job_id": self._job_id},
                )
                self._forward(data[:room])
                return
            self._file.flush()
            self._forward(data)

    def _forward(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LOG_LINE:
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            self._emit(line)

    def _emit(self, line: bytes) -> None:
        text = line[:MAX_LOG_LINE].decode("utf-8", "replace").rstrip("\r")
        job_log.info(
            "job %s %s: %s", self._job_id, self._stream, text, extra={"job_id": self._job_id}
        )

    def close(self) -> None:
        if self._partial and not self._truncated:
            self._emit(self._partial)
        self._partial = b""
        self._file.close()


async def pump(stream: trio.lowlevel.FdStream, sink: CappedLog) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            sink.feed(data)
