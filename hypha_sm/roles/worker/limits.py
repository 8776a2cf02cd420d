"""How a job's limits are enforced: cgroup, CPU affinity, rlimits, its user and its GPUs."""

from __future__ import annotations

import logging
import math
import os
import re
import resource
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hypha_sm.roles.worker.users import Credentials

log = logging.getLogger("hypha_sm.roles.worker.process")

# --------------------------------------------------------------------------- enforcement


def find_cgroup_parent() -> Path | None:
    """The node's own cgroup v2 directory when cgroup2 is mounted and it is writable, else None."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
        own = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    mount = next(
        (line.split()[1] for line in mounts.splitlines() if line.split()[2:3] == ["cgroup2"]),
        None,
    )
    rel = next((line[3:] for line in own.splitlines() if line.startswith("0::")), None)
    if mount is None or rel is None:
        return None
    parent = Path(mount) / rel.lstrip("/")
    if not (parent / "cgroup.procs").exists() or not os.access(parent, os.W_OK):
        return None
    return parent


def slow_cgroup_migrations(mounts: str | None = None) -> bool:
    """Whether moving a job into its cgroup will wait for an RCU grace period.

    Each job start writes the job's pid to its cgroup's ``cgroup.procs``. Unless cgroup2 is
    mounted with ``favordynmods`` (Linux 6.0+), the kernel's threadgroup lock then waits for a
    grace period when it was idle: 7-10 ms per job start on the CI VM against 0.25 ms with the
    option (docs/operations.md). ``mounts``: the text of ``/proc/self/mounts`` (read if None).
    """
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return False
    for line in mounts.splitlines():
        fields = line.split()
        if fields[2:3] == ["cgroup2"] and len(fields) > 3:
            return "favordynmods" not in fields[3].split(",")
    return False


def nvidia_devices() -> list[int]:
    return sorted(
        int(m.group(1))
        for p in Path("/dev").glob("nvidia*")
        if (m := re.fullmatch(r"nvidia(\d+)", p.name))
    )


#: Cores handed to live jobs, so that concurrent jobs prefer different cores.
cores_in_use: dict[str, frozenset[int]] = {}


def pick_cores(job_id: str, cpu: float) -> frozenset[int] | None:
    available = sorted(os.sched_getaffinity(0))
    want = math.ceil(cpu)
    if cpu <= 0 or want >= len(available):
        return None
    busy = set().union(*cores_in_use.values()) if cores_in_use else set()
    ordered = [c for c in available if c not in busy] + [c for c in available if c in busy]
    cores = frozenset(ordered[:want])
    cores_in_use[job_id] = cores
    return cores


@dataclass
class Limits:
    cores: frozenset[int] | None = None
    rlimit_as: int | None = None
    cgroup: Path | None = None
    cuda_visible: str = ""
    unenforced: list[str] = field(default_factory=list)


#: util-linux's ``setpriv`` sets the parent-death signal and then execs the job; it keeps
#: Python out of the child between fork and exec (a ``preexec_fn`` runs every at-fork handler
#: registered in the node, e.g. exporter threads, in the child, and can deadlock there).
SETPRIV = shutil.which("setpriv")
#: util-linux's ``prlimit`` sets a job's memory limit before ``setpriv`` drops to its user.
PRLIMIT = shutil.which("prlimit")
#: The shell that holds a job until it is in its cgroup (``read`` from a pipe, then ``exec``).
SH = shutil.which("sh") or "/bin/sh"


def drop(user: Credentials) -> list[str]:
    """``setpriv`` options that run the job as ``user``.

    Its uid and gid, no supplementary groups, no way back to privileges, death with the node.
    """
    return [
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        "--clear-groups",
        "--no-new-privs",
        "--pdeathsig",
        "KILL",
    ]


def apply_limits(pid: int, limits: Limits) -> list[str]:
    """Put a just-started child in its cgroup, apply its affinity and memory limit.

    Returns what could not be applied (the job runs on; the list goes in its "not enforced"
    line). Done from the node right after the spawn returns, while the child is normally still
    exec'ing ``setpriv`` and then the job. That is a window of microseconds, not a guarantee: a
    native program could fork in it, and such a child would be outside the cgroup (the stop's
    tree sweep still finds it). Raises ProcessLookupError if the child is already gone.
    """
    problems = []
    if limits.cgroup is not None:
        try:
            (limits.cgroup / "cgroup.procs").write_text(str(pid))
        except ProcessLookupError:
            raise
        except OSError as exc:
            problems.append(f"cgroup: could not move the job into it ({exc.strerror})")
    if limits.cores is not None:
        try:
            os.sched_setaffinity(pid, limits.cores)
        except ProcessLookupError:
            raise
        except OSError as exc:
            problems.append(f"cpu: affinity not set ({exc.strerror})")
    if limits.rlimit_as is not None:
        try:
            resource.prlimit(pid, resource.RLIMIT_AS, (limits.rlimit_as, limits.rlimit_as))
        except ProcessLookupError:
            raise
        except OSError as exc:
            problems.append(f"memory: RLIMIT_AS not set ({exc.strerror})")
    return problems
