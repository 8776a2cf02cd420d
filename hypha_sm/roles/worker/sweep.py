"""Finding a job's processes wherever they went, and killing what a crashed node left.

A job can try to escape its node: fork twice, call ``setsid``, change to ``/`` and ignore
SIGTERM. Its processes are found by, strongest first:

- its **cgroup** (``hypha-<scope>-<work dir id>`` under the node's cgroup v2), which nothing
  inside can leave; ``cgroup.kill`` ends the whole tree at once;
- its **marker**: every job starts with ``HYPHA_SM_JOB=<scope>/<work dir id>`` in its environment,
  which children inherit (a process that scrubs its environment loses it);
- **adoption**: the node is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so an orphaned
  descendant of a job becomes the node's child instead of init's; a child of the node that is
  no job's main process escaped from some job and is killed with the next job that ends;
- the process group, the tree below the main process, and the cwd (``process.py``).

``scope`` ties cgroups to one node (one work dir): a restart kills its own leftovers, never
another node's live jobs on the same machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import psutil  # type: ignore[import-untyped]

log = logging.getLogger("hypha_sm.roles.worker.process")

#: The environment variable that marks every process of a job with its work dir id.
MARKER: Final = "HYPHA_SM_JOB"
_MARKER_PREFIX: Final = MARKER.encode() + b"="
_PR_SET_CHILD_SUBREAPER: Final = 36
#: Most bytes read of a process's environment when looking for the marker.
_ENVIRON_CAP: Final = 1 << 20


def become_subreaper(on: bool = True) -> bool:
    """Make this process adopt its orphaned descendants (Linux), or stop; False if it cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0)


def is_subreaper() -> bool:
    """Whether this process adopts orphaned descendants."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    value = ctypes.c_int(0)
    return bool(libc.prctl(37, ctypes.byref(value), 0, 0, 0) == 0 and value.value)


def marker_of(pid: int) -> str | None:
    """The job marker in a process's environment, if it has one (and we may read it)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read(_ENVIRON_CAP)
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(_MARKER_PREFIX):
            return entry[len(_MARKER_PREFIX) :].decode("ascii", "replace")
    return None


def adopted_children(known_mains: set[int]) -> list[psutil.Process]:
    """Children of this process that are no job's main process: escaped job processes."""
    with contextlib.suppress(psutil.Error):
        return [p for p in psutil.Process().children(recursive=False) if p.pid not in known_mains]
    return []


def reap_adopted(known_mains: set[int]) -> None:
    """Collect adopted children that have exited (zombies).

    Never a job's main process: its ``Popen`` collects its own exit code.
    """
    for child in adopted_children(known_mains):
        with contextlib.suppress(OSError):  # not ours any more, or already collected
            os.waitpid(child.pid, os.WNOHANG)


# -- cgroups ------------------------------------------------------------------------------------


def cgroup_scope(work_dir: Path) -> str:
    """A short name for one node (its work dir), in the names of its jobs' cgroups."""
    return hashlib.sha256(str(work_dir.absolute()).encode()).hexdigest()[:12]


def job_marker(work_dir: Path, work_dir_id: str) -> str:
    """A job's marker value: its node's scope and its work dir id (unique on the machine)."""
    return f"{cgroup_scope(work_dir)}/{work_dir_id}"


def cgroup_pids(path: Path) -> list[int]:
    """The processes in a cgroup (and its descendants)."""
    pids: list[int] = []
    for procs in path.glob("**/cgroup.procs"):  # ** matches no directory too: path's own
        # A child cgroup may go away while we read; a file that is not a pid list is skipped.
        with contextlib.suppress(OSError, ValueError):
            pids.extend(int(p) for p in procs.read_text().split())
    return sorted(set(pids))


def kill_cgroup(path: Path, *, timeout: float = 5.0) -> list[int]:
    """SIGKILL everything in the cgroup, wait until it is empty, remove it; the pids it held.

    ``cgroup.kill`` where there is one, else a SIGKILL per process. Raises OSError if it
    cannot be emptied within ``timeout``.
    """
    found = cgroup_pids(path)
    deadline = time.monotonic() + timeout
    while True:
        pids = cgroup_pids(path)
        if not pids:
            break
        if (path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (path / "cgroup.kill").write_text("1")
        else:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise OSError(f"cgroup {path} still holds {pids} after SIGKILL")
        time.sleep(0.02)
    for child in sorted(path.glob("**/"), key=lambda p: len(p.parts), reverse=True):
        if child != path:
            with contextlib.suppress(OSError):
                child.rmdir()
    path.rmdir()
    return found


def leftover_cgroups(parent: Path | None, scope: str) -> list[Path]:
    """The job cgroups a previous run of this node left under ``parent``."""
    if parent is None or not parent.is_dir():
        return []
    return sorted(p for p in parent.glob(f"hypha-{scope}-*") if p.is_dir())


# -- process sets: what a stop signals ---------------------------------------------------


def alive(p: psutil.Process) -> bool:
    """Running and not a zombie (an orphaned zombie may never be reaped in a container)."""
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def cwd_inside(p: psutil.Process, root: Path) -> bool:
    """Whether the process works in ``root`` or below (False once it is gone)."""
    try:
        cwd = Path(p.cwd())
    except (psutil.Error, OSError):
        return False
    return cwd == root or root in cwd.parents


def signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    """Send ``sig`` to each; one that is gone or not ours is skipped (psutil says which)."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def killpg(pgid: int | None, sig: int) -> None:
    """Signal a job's process group; never the node's own, init's (1) or everyone's (<= 0)."""
    if pgid is None or pgid <= 1 or pgid == os.getpgrp():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
