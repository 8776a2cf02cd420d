"""Work dirs after their jobs: failed ones kept (newest ``keep``), orphans of a crash cleaned."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psutil  # type: ignore[import-untyped]  # types-psutil is not a dev dependency yet
import trio

from hypha_sm.roles.worker.limits import find_cgroup_parent
from hypha_sm.roles.worker.sweep import (
    alive,
    cgroup_scope,
    cwd_inside,
    job_marker,
    kill_cgroup,
    killpg,
    leftover_cgroups,
    marker_of,
    signal_all,
)

log = logging.getLogger("hypha_sm.roles.worker.process")

DIR_PREFIX: Final = "hypha-"
#: Present in a work dir kept after a failure; holds the exit code. Retention prunes by it.
FAILED_MARK: Final = ".hypha-failed"
#: How often the orphan sweep looks again while it waits for processes to die.
POLL: Final = 0.05

# --------------------------------------------------------------------------- retention


def prune_failed(work_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` failed work dirs (those marked ``.hypha-failed``)."""
    failed = []
    for d in work_dir.glob(f"{DIR_PREFIX}*"):
        with contextlib.suppress(OSError):
            failed.append(((d / FAILED_MARK).stat().st_mtime, d))
    failed.sort(reverse=True)
    removed = []
    for _, d in failed[max(keep, 0) :]:
        shutil.rmtree(d, ignore_errors=True)
        log.info("removed old failed work dir %s (keeping the newest %d)", d, keep)
        removed.append(d)
    return removed


# --------------------------------------------------------------------------- orphans


def _job_dirs(work_dir: Path) -> list[Path]:
    base = work_dir.absolute()
    if not base.is_dir():
        log.info("orphans: no work dir %s; nothing to clean", base)
        return []
    return sorted(d for d in base.glob(f"{DIR_PREFIX}*") if d.is_dir())


@dataclass
class OrphanReport:
    """What :func:`clean_orphans` found and did."""

    dirs_found: list[Path] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    dirs_removed: list[Path] = field(default_factory=list)
    dirs_kept: list[Path] = field(default_factory=list)
    cgroups_removed: list[Path] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{len(self.dirs_found)} job dirs found, {len(self.cgroups_removed)} leftover "
            f"cgroups emptied and removed, {len(self.killed)} processes killed"
            + (f" ({len(self.survivors)} survived SIGKILL)" if self.survivors else "")
            + f", {len(self.dirs_removed)} dirs removed, {len(self.dirs_kept)} failed dirs kept"
        )


async def clean_orphans(
    work_dir: Path,
    *,
    grace: float = 2.0,
    keep_failed: bool = True,
    cgroup_parent: Path | None = None,
) -> OrphanReport:
    """Kill what a previous run of the node left in ``<work_dir>`` and remove its job dirs.

    First every leftover job cgroup of this node (``hypha-<scope>-*`` under ``cgroup_parent``,
    by default the node's own cgroup) is emptied with SIGKILL and removed: nothing inside can
    have escaped it. Then a process is an orphan when it carries the marker of a job dir found
    in ``<work_dir>/hypha-*`` or its cwd is inside one; it and its process group get SIGTERM,
    then after ``grace`` seconds SIGKILL. Dirs kept after a failure (``.hypha-failed``) stay
    when ``keep_failed``; every other ``hypha-*`` dir is removed. Call it before any job
    starts: it cannot tell a live job's dir from an orphaned one.
    """
    report = OrphanReport()
    parent = cgroup_parent if cgroup_parent is not None else find_cgroup_parent()
    for cgroup in leftover_cgroups(parent, cgroup_scope(work_dir)):
        try:
            pids = await trio.to_thread.run_sync(kill_cgroup, cgroup)
        except OSError as exc:
            log.warning("orphans: leftover cgroup %s: %s", cgroup, exc)
            continue
        log.info("orphans: leftover cgroup %s: killed %s and removed it", cgroup, pids or "none")
        report.killed.extend(pids)
        report.cgroups_removed.append(cgroup)
    report.dirs_found = _job_dirs(work_dir)
    by_marker = {job_marker(work_dir, d.name[len(DIR_PREFIX) :]): d for d in report.dirs_found}
    me, my_group = os.getpid(), os.getpgrp()
    procs: dict[int, psutil.Process] = {}
    groups: set[int] = set()
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        marker = marker_of(p.pid)
        where = next((d for d in report.dirs_found if cwd_inside(p, d)), None)
        if where is None and marker is not None:
            where = by_marker.get(marker)
        if where is None:
            continue
        log.info("orphans: pid %d belongs to %s: killing it", p.pid, where)
        procs[p.pid] = p
        with contextlib.suppress(psutil.Error):
            procs.update((c.pid, c) for c in p.children(recursive=True))
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(p.pid))
    groups.discard(my_group)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for g in groups:
            killpg(g, sig)
        signal_all(procs.values(), sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
        # Polling: there is no event for the exit of a process that is not our child.
        while any(alive(p) for p in procs.values()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await trio.sleep(POLL)
        if not any(alive(p) for p in procs.values()):
            break
        log.info("orphans: still alive after SIGTERM: SIGKILL")
    report.killed.extend(sorted(procs))
    for pid, p in procs.items():
        if alive(p):
            log.warning("orphans: pid %d survived SIGKILL", pid)
            report.survivors.append(pid)
    for d in report.dirs_found:
        if keep_failed and (d / FAILED_MARK).exists():
            log.info("orphans: keeping failed work dir %s", d)
            report.dirs_kept.append(d)
            continue
        shutil.rmtree(d, ignore_errors=True)
        log.info("orphans: removed work dir %s", d)
        report.dirs_removed.append(d)
    return report
