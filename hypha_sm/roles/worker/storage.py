"""The node's disk monitor: jobs within their lease's storage, and a node that survives a full disk.

Every ``interval`` seconds (and at once when the event log fails to write) it:

1. measures each running job's work dir (blocks actually used, in a worker thread) and reports
   a job over its lease's storage to the core (``JobOverLimit(storage_exceeded)``), which stops
   it and reports it failed with the figures; its dir is then removed, not kept;
2. checks the file system of the work dir. When less than ``reserve`` bytes are free, or the
   event log cannot write, it frees what is the node's to free (the kept dirs of failed jobs,
   oldest first, all of them), lets the log write what waits, and checks again. If that was not
   enough it tells the core (``StorageLow``: no new offers) and stops the job using the most
   disk (``JobOverLimit(disk_full)``), one at a time. Once twice the reserve is free and the log
   writes, it says so (``StorageRecovered``).

A lease with no storage (0 GB) is not measured against: nothing was promised, and killing the
job for its first byte would help nobody; the full-disk guard still applies to it.
The monitor only measures and reports; the core decides (docs/operations.md, "Disk").
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from hypha_sm.log.store import Recorder
from hypha_sm.roles.worker.core.events import Event, JobOverLimit, StorageLow, StorageRecovered
from hypha_sm.roles.worker.workdirs import prune_failed

log = logging.getLogger(__name__)

_GB = 1_000_000_000
DEFAULT_INTERVAL = 2.0
DEFAULT_RESERVE = 256 * 1024 * 1024


@dataclass(frozen=True)
class JobDisk:
    """A running job's work dir and the bytes its lease allows (0: not limited)."""

    job_id: str
    work_dir: Path
    limit: int


def dir_usage(path: Path) -> int:
    """Bytes of disk the tree under ``path`` uses (allocated blocks; links not followed)."""
    total = 0
    stack = [path]
    seen: set[tuple[int, int]] = set()
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1:  # a hard link counts once
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(entry.path))
    return total


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _gb(n: int) -> str:
    return f"{n / _GB:.3g} GB"


@dataclass
class StorageMonitor:
    """Measures job dirs and free space; reports to the core through ``submit``."""

    work_dir: Path
    recorder: Recorder
    jobs: Callable[[], Sequence[JobDisk]]
    submit: Callable[[Event], Awaitable[None]]
    #: Called with a job id before it is reported over a limit: its dir is removed at its end.
    discard: Callable[[str], None] = lambda job_id: None
    interval: float = DEFAULT_INTERVAL
    reserve: int = DEFAULT_RESERVE
    full: bool = False
    reported: set[str] = field(default_factory=set)
    freed: int = 0
    _wake: trio.Event = field(default_factory=trio.Event)

    def alarm(self) -> None:
        """Check now (the event log failed to write)."""
        self._wake.set()

    async def run(self) -> None:
        """Check, then wait ``interval`` (longer if measuring is slow) or an alarm; forever."""
        while True:
            started = time.monotonic()
            await self.check()
            took = time.monotonic() - started
            with trio.move_on_after(max(self.interval, 5 * took)):
                await self._wake.wait()
            self._wake = trio.Event()

    async def check(self) -> None:
        """One round: job dirs against their limits, then the file system."""
        usage: dict[str, int] = {}
        jobs = self.jobs()
        self.reported &= {job.job_id for job in jobs}  # ended jobs are forgotten
        for job in jobs:
            if job.job_id in self.reported:
                continue
            used = await trio.to_thread.run_sync(dir_usage, job.work_dir)
            usage[job.job_id] = used
            if 0 < job.limit < used:
                detail = f"{_gb(used)} used of {_gb(job.limit)}"
                await self._over(job.job_id, "storage_exceeded", detail)
        free = await self._free()
        if free >= self.reserve and not self.recorder.failing and self.recorder.error is None:
            if self.full and free >= 2 * self.reserve:
                self.full = False
                log.info("disk: %s free again", _gb(free))
                await self.submit(StorageRecovered(free))
            return
        removed = await trio.to_thread.run_sync(prune_failed, self.work_dir, 0)
        if removed:
            log.warning("disk: %s free; removed %d kept failed job dirs", _gb(free), len(removed))
        self.recorder.retry()
        free = await self._free()
        if free >= self.reserve and not self.recorder.failing:
            return
        detail = (
            f"the event log cannot write: {self.recorder.error}"
            if self.recorder.error is not None
            else f"less than the {_gb(self.reserve)} reserve"
        )
        if not self.full:
            self.full = True
            log.error("disk: %s free (%s): no new offers", _gb(free), detail)
            await self.submit(StorageLow(free, detail))
        live = [j for j in self.jobs() if j.job_id not in self.reported]
        if not live:
            return
        for job in live:
            if job.job_id not in usage:
                usage[job.job_id] = await trio.to_thread.run_sync(dir_usage, job.work_dir)
        biggest = max(live, key=lambda j: usage[j.job_id])
        if usage[biggest.job_id] > 0:
            await self._over(
                biggest.job_id,
                "disk_full",
                f"{_gb(free)} left on the disk; the job used {_gb(usage[biggest.job_id])}",
            )

    async def _over(self, job_id: str, reason: str, detail: str) -> None:
        self.reported.add(job_id)
        self.discard(job_id)
        log.warning("job %s: %s (%s): stopping it", job_id, reason, detail)
        await self.submit(JobOverLimit(job_id, reason, detail))

    async def _free(self) -> int:
        try:
            return await trio.to_thread.run_sync(free_bytes, self.work_dir)
        except OSError as exc:
            log.warning("disk: cannot read the free space of %s: %s", self.work_dir, exc)
            return 0


def limit_of(storage_gb: float) -> int:
    """A lease's storage in bytes (0 when none was asked)."""
    return max(0, int(storage_gb * _GB))
