"""Who a job runs as: a user of its own when the node runs as root.

A job run as the node's user can read the node's key, its event log, ``/proc/<node>/environ``
and every other job's files, and talk to other jobs' bridges. So a node started as root gives
each job a uid and gid of its own (``job_user = "auto"``, from ``job_uid_range``; ids that name
an account on the machine are skipped, and ids go round the range so that the next job does
not get the uid of the one before): the work dir (0700) and the bridge socket (0600) belong to
that uid, everything of the node's stays root's, and ``setpriv`` drops to it (no supplementary
groups, no new privileges) right before the job's program runs. ``job_user`` may instead name
one user (or uid) for every job, or ``"node"`` to run jobs as the node's own user.

Files the node places in a job's dir (fetched artifacts, files from peers) are given to the
owner of the dir they land in (``give``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    """The uid and gid a job runs as."""

    uid: int
    gid: int


def running_as_root() -> bool:
    """Whether the node may give jobs other users."""
    return os.geteuid() == 0


def _fixed_user(name: str) -> Credentials:
    """A named user or a numeric uid (its primary group, else the same number)."""
    try:
        entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        if name.isdigit():
            return Credentials(int(name), int(name))
        raise ValueError(f"job_user = {name!r}: no such user") from None
    return Credentials(entry.pw_uid, entry.pw_gid)


def _is_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


@dataclass
class JobUsers:
    """Hands out the credentials each job runs as (None: the node's own user)."""

    mode: str = "auto"
    uid_range: tuple[int, int] = (64000, 64999)
    as_root: bool = field(default_factory=running_as_root)
    _in_use: dict[str, int] = field(default_factory=dict)
    _next: int = -1

    @property
    def isolated(self) -> bool:
        """Whether each job gets a user of its own."""
        return self.mode == "auto" and self.as_root

    @property
    def shared(self) -> Credentials | None:
        """The one user every job runs as, when ``job_user`` names one."""
        if self.mode in ("auto", "node"):
            return None
        return _fixed_user(self.mode)

    def describe(self) -> str:
        """One line for the start-up log."""
        if self.isolated:
            low, high = self.uid_range
            return f"each job runs as a user of its own (uids {low}-{high})"
        shared = self.shared
        if shared is not None:
            return f"every job runs as uid {shared.uid} (job_user = {self.mode!r})"
        return f"jobs run as this node's user (uid {os.geteuid()})"

    def warning(self) -> str | None:
        """The start-up warning when jobs are not isolated from the node, or None."""
        if self.isolated:
            return None
        if self.shared is not None:
            return (
                "every job runs as the same user: jobs can read each other's files; "
                'job_user = "auto" as root gives each its own'
            )
        if self.as_root:
            return (
                'job_user = "node": jobs run as root and can read the node key, the event log '
                "and other jobs' files"
            )
        return (
            f"the node is not root, so jobs run as its user (uid {os.geteuid()}): they can "
            "read its key, its event log, /proc/<node>/environ and other jobs' files; start "
            "the node as root to give each job a user of its own (docs/operations.md)"
        )

    def allocate(self, job_id: str) -> Credentials | None:
        """The credentials for a new job (None: run it as the node's user)."""
        if not self.isolated:
            return self.shared if self.as_root else None
        low, high = self.uid_range
        size = high - low + 1
        taken = set(self._in_use.values())
        start = self._next if low <= self._next <= high else low
        for step in range(size):
            uid = low + (start - low + step) % size
            if uid not in taken and not _is_account(uid):
                self._in_use[job_id] = uid
                self._next = uid + 1
                return Credentials(uid, uid)
        raise RuntimeError(f"no free uid in job_uid_range {low}-{high}")

    def release(self, job_id: str) -> None:
        """The job's processes are gone: its uid may be used again (later)."""
        self._in_use.pop(job_id, None)


def unreachable(path: Path) -> Path | None:
    """The first of ``path`` and its parents that other users cannot pass, or None.

    Passing needs the execute bit for others on every directory (and on the file itself).
    """
    current = path.absolute()
    for step in [*reversed(current.parents), current]:
        try:
            mode = step.stat().st_mode
        except OSError:
            return step
        if not mode & stat.S_IXOTH:
            return step
    return None


def check_reachable(cmds: list[str], work_dir: Path) -> list[str]:
    """Why jobs running as other users could not start: one line per problem."""
    problems = []
    for cmd in dict.fromkeys(cmds):  # each command once, in order
        found = shutil.which(cmd) if os.sep not in cmd else cmd
        if found is None:
            continue  # a missing command is reported when a job starts
        real = Path(os.path.realpath(found))
        blocked = unreachable(real)
        if blocked is not None:
            problems.append(f"executor cmd {cmd} ({real}): {blocked} is not open to other users")
    existing = work_dir  # not made yet (check-config): what the node will make it in
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    blocked = unreachable(existing)
    if blocked is not None:
        problems.append(f"work_dir {work_dir}: {blocked} is not open to other users")
    return problems


def give(path: Path, like: Path) -> None:
    """Give ``path`` to the owner of ``like`` (a job's dir), when the node may and they differ."""
    if not running_as_root():
        return
    with contextlib.suppress(OSError):
        owner = like.stat()
        st = path.lstat()
        if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
            os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)
