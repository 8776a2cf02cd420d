"""Writing event logs to files: the recorder every role's loop appends to, and saving test inputs.

The recorder only appends: the runtime loop (``hypha_sm.runtime.loop``) owns the state, steps it
and hands the recorder each input with the effects it produced. The recorder knows no role; the
``Role`` it is given supplies the header's configuration type and the snapshot encoding.

Durability. Each entry reaches the operating system (one ``write`` of the whole line, no
user-space buffer) before the step's effects are performed, so a ``kill -9`` of the node never
loses an entry of something the outside saw. Whether it also reaches the disk (surviving a
power cut or a kernel crash) is the ``fsync`` policy: ``never``; ``batch`` (the node calls
``Recorder.sync`` once per loop wake-up that produced effects, before performing them; the
default); ``always`` (after every entry). Segment files are created mode 0600 in a 0700
directory: they hold the id seed and job specs.

A node's log rotates by size (``Recorder.open_rotating`` or ``Recorder(RotatingLog(...), ...)``):
it is a series of segment files ``<prefix>-<run>-<NNNNNN>.jsonl`` in one directory, where
``<run>`` is ``<UTC start, YYYYmmddTHHMMSS.ffffffZ>-<8 hex digits>`` drawn when the log opens
(names sort in time order). Every later segment
starts with a header holding a snapshot of the core state, so each segment replays on its own
(specs/event-log.md, "Rotation").
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, get_args

from hypha_sm import __version__
from hypha_sm.core.engine import Engine
from hypha_sm.core.role import Role, StepResult
from hypha_sm.core.trace import Now
from hypha_sm.log.codec import (
    DEFAULT_ROLE,
    FORMAT,
    VERSION,
    VERSION_SEGMENT,
    Entry,
    Header,
    encode_entry,
    encode_header,
)

log = logging.getLogger(__name__)

#: A segment is closed once it holds this many bytes (64 MiB) ...
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: ... and this many segments are kept in the directory (for the prefix), the oldest deleted.
DEFAULT_KEEP = 8

#: Entries held in memory while the disk refuses them; beyond this they are dropped.
MAX_PENDING_BYTES = 16 * 1024 * 1024

FsyncPolicy = Literal["never", "batch", "always"]
FSYNC_POLICIES: tuple[str, ...] = get_args(FsyncPolicy)
#: Segment files hold the id seed and job specs: only the node's user may read them.
FILE_MODE = 0o600
DIR_MODE = 0o700

_SEGMENT_NAME = re.compile(
    r"(?P<run>(?P<ts>\d{8}T\d{6}\.\d{6}Z)-[0-9a-f]{8})-(?P<index>\d{6,})\.jsonl"
)


def make_header(
    machines_hash: str, policy: Any, seed: bytes, role: str = DEFAULT_ROLE
) -> Header[Any, Any]:
    """The header for a log of a role started with this configuration and seed."""
    return Header(
        format=FORMAT,
        version=VERSION,
        role=role,
        machines_hash=machines_hash,
        engine_version=__version__,
        seed=seed.hex(),
        policy=policy,
    )


def segment_header(
    machines_hash: str,
    policy: Any,
    seed: bytes,
    *,
    run: str,
    segment: int,
    previous: str | None,
    after_seq: int,
    snapshot: Any | None,
    role: str = DEFAULT_ROLE,
) -> Header[Any, Any]:
    """The header of one segment of a rotated log (version 2)."""
    return Header(
        format=FORMAT,
        version=VERSION_SEGMENT,
        role=role,
        machines_hash=machines_hash,
        engine_version=__version__,
        seed=seed.hex(),
        policy=policy,
        run=run,
        segment=segment,
        previous=previous,
        after_seq=after_seq,
        snapshot=snapshot,
    )


def new_run_id() -> str:
    """A run id: the UTC time now to the microsecond, and 8 random hex digits."""
    ns = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 1_000_000_000))
    return f"{stamp}.{ns // 1000 % 1_000_000:06d}Z-{secrets.token_hex(4)}"


def _segment_key(path: Path, prefix: str) -> tuple[str, int] | None:
    """(run id, index) if ``path`` is a segment of ``prefix``, else None; sorts in time order."""
    name = path.name
    if not name.startswith(prefix + "-"):
        return None
    match = _SEGMENT_NAME.fullmatch(name, len(prefix) + 1)
    if match is None:
        return None
    return match["run"], int(match["index"])


def list_segments(directory: Path, prefix: str = "worker", run: str | None = None) -> list[Path]:
    """The segment files of ``prefix`` in ``directory``, oldest first (by run start, then index).

    With ``run``, only that run's segments: the series ``replay_series`` takes, in order.
    """
    found = []
    for path in directory.iterdir() if directory.is_dir() else ():
        key = _segment_key(path, prefix)
        if key is not None and (run is None or path.name.startswith(f"{prefix}-{run}-")):
            found.append((key, path))
    return [path for _, path in sorted(found)]


def newest_run(directory: Path, prefix: str = "worker") -> list[Path]:
    """The segments of the most recent run in ``directory``, oldest first.

    The run is the newest segment's; the list is what is left of it on disk, ready for
    ``read_series`` and ``replay.replay_series``.
    """
    segments = list_segments(directory, prefix)
    if not segments:
        return []
    key = _segment_key(segments[-1], prefix)
    assert key is not None
    return list_segments(directory, prefix, run=key[0])


def newest_run_of(directory: Path, prefixes: Iterable[str]) -> list[Path]:
    """The segments of the most recent run in ``directory`` among several prefixes (roles).

    A directory may hold a worker's and a scheduler's logs side by side; runs are compared by
    their ids, which start with their UTC start time.
    """
    runs = [segments for prefix in prefixes if (segments := newest_run(directory, prefix))]
    if not runs:
        return []
    return max(runs, key=lambda segments: _SEGMENT_NAME.search(segments[-1].name)["run"])  # type: ignore[index]


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (a short write, e.g. at ENOSPC, is continued)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # not seen for regular files; never spin
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def sync_fd(fd: int) -> None:
    """Push a file's data to the disk (``fdatasync`` where there is one)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def make_private_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) if needed, and make it mode 0700."""
    directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if directory.stat().st_mode & 0o777 != DIR_MODE:
        directory.chmod(DIR_MODE)


class RotatingLog:
    """A log as a series of segment files in ``directory``: the Recorder's sink when rotating.

    The ``Recorder`` writes each segment's header with ``begin`` and its entries with ``write``;
    it starts the next segment (with a snapshot header) before the first input that finds the
    current one full, i.e. holding at least ``limit`` bytes: ``max_bytes``, or twice the
    header's size if that is more, so that a large snapshot is never rewritten more often than
    entries of the same size are logged. Starting a segment deletes segment files of ``prefix``
    in the directory beyond the newest ``keep`` (earlier runs' first, then this run's oldest),
    and logs each deletion at INFO. The current segment is never deleted; other files are never
    touched. Disk use is thus at most about ``keep`` x ``max_bytes`` per directory and prefix,
    across restarts.

    Every ``write`` goes straight to the file descriptor (no user-space buffer); ``sync``
    pushes the current segment to the disk. Segments are created mode 0600, the directory 0700.

    Not thread-safe; one log per directory and prefix at a time (one node per work dir).
    """

    def __init__(
        self,
        directory: Path,
        prefix: str = "worker",
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        if not prefix or "/" in prefix or "\\" in prefix or prefix.startswith("."):
            raise ValueError(f"prefix {prefix!r}: expected a plain file-name prefix")
        if max_bytes < 1 or keep < 1:
            raise ValueError(f"max_bytes {max_bytes} and keep {keep}: expected both >= 1")
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.keep = keep
        #: This log's run id: in every segment's name and header.
        self.run = new_run_id()
        #: The number of the current segment (0 before the first ``begin``).
        self.index = 0
        #: The current segment's file (None before the first ``begin``).
        self.path: Path | None = None
        #: Bytes written to the current segment, header included.
        self.size = 0
        #: The current segment is full once ``size >= limit``.
        self.limit = max_bytes
        #: Segment files deleted by this log, oldest first.
        self.deleted: list[Path] = []
        self._fd: int | None = None

    def segment_name(self, index: int) -> str:
        """The file name of segment ``index`` of this run."""
        return f"{self.prefix}-{self.run}-{index:06d}.jsonl"

    @property
    def full(self) -> bool:
        """The current segment holds ``limit`` bytes or more: the next input starts a new one."""
        return self.size >= self.limit

    def write(self, data: bytes) -> int:
        """Append to the current segment: every byte reaches the OS before this returns.

        Raises:
            OSError: the write failed (e.g. ENOSPC); bytes already written stay written.
            ValueError: there is no segment yet (``begin`` was never called) or it is closed.
        """
        if self._fd is None:
            raise ValueError("the event log has no open segment")
        try:
            write_all(self._fd, data)
        except OSError:
            # Never leave half a line: the next entry would follow it on the same line.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: writes are not buffered (kept for the file-like interface)."""

    def sync(self) -> None:
        """Push the current segment's data to the disk."""
        if self._fd is not None:
            sync_fd(self._fd)

    def begin(self, header: bytes) -> Path:
        """Start the next segment with this header line, close the current one, prune old ones.

        The new file is created (exclusively, mode 0600) and its header written before the
        current segment is closed: if that fails, the new file is removed, the error
        propagates and the log goes on in the current segment.
        """
        make_private_dir(self.directory)
        path = self.directory / self.segment_name(self.index + 1)
        new = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        try:
            write_all(new, header)
        except BaseException:
            os.close(new)
            path.unlink(missing_ok=True)
            raise
        old, self._fd = self._fd, new
        if old is not None:
            os.close(old)
        self.index += 1
        self.path = path
        self.size = len(header)
        self.limit = max(self.max_bytes, 2 * len(header))
        self._prune()
        return path

    def _prune(self) -> None:
        # Earlier runs' segments go first, then this run's oldest: this run counts as the newest
        # even if the wall clock went back since an earlier run (names start with start times).
        mine = f"{self.prefix}-{self.run}-"
        segments = list_segments(self.directory, self.prefix)
        ordered = [p for p in segments if not p.name.startswith(mine)]
        ordered += [p for p in segments if p.name.startswith(mine) and p != self.path]
        for path in ordered[: max(0, len(ordered) + 1 - self.keep)]:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("event log: could not delete old segment %s: %s", path, exc)
                continue
            self.deleted.append(path)
            log.info("event log: deleted old segment %s (keeping %d)", path, self.keep)

    def close(self) -> None:
        """Close the current segment (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> RotatingLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Recorder:
    """Appends every input, its time and its effects to a role's log; it holds no state.

    The loop calls ``append`` after ``step`` computed the effects and before anyone performs
    them, so a crash never leaves an effect performed but unlogged: the entry reaches the OS
    inside ``append`` (a killed process loses nothing), and the disk per ``fsync`` (module
    docstring).

    ``sink`` is a binary file (the caller owns it; the log is one version 1 file) or a
    ``RotatingLog`` (the recorder writes version 2 segments and closes it in ``close``). With a
    rotating log the loop asks ``due`` before each step and, if a segment is full, calls
    ``rotate`` with a snapshot of the state before the input: rotation happens between steps,
    and the entry then goes to the new segment, still before its effects are performed.
    """

    def __init__(
        self,
        sink: BinaryIO | RotatingLog,
        role: Role[Any, Any, Any],
        machines_hash: str,
        policy: Any,
        seed: bytes,
        *,
        fsync: FsyncPolicy = "batch",
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync {fsync!r}: expected one of {', '.join(FSYNC_POLICIES)}")
        self.sink = sink
        self.role = role
        self.fsync = fsync
        #: Entries written since the last ``sync`` (what a ``batch`` sync would push).
        self.unsynced = 0
        #: How many times the log was pushed to the disk.
        self.syncs = 0
        #: Entries the disk refused, in order, waiting to be written (see ``append``).
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        #: (first, last) seq of entries dropped because too many waited; None if none.
        self.lost_seqs: tuple[int, int] | None = None
        #: The last write error, until a write succeeds again.
        self.error: OSError | None = None
        self._next_retry = -math.inf
        #: A snapshot of the state as of the last entry, for a rotation the recorder starts
        #: itself (after lost entries); the loop sets it (``snapshot_source``).
        self.snapshot_source: Callable[[], Any] | None = None
        self.machines_hash = machines_hash
        self.policy = policy
        self.seed = seed
        self.seq = 0
        #: The rotating log, if the sink is one.
        self.rotating = sink if isinstance(sink, RotatingLog) else None
        if self.rotating is None:
            sink.write(encode_header(make_header(machines_hash, policy, seed, role.name), role))
            sink.flush()
        elif self.rotating.index:
            raise ValueError("this RotatingLog already has segments: give each recorder its own")
        else:
            self.rotating.begin(encode_header(self._header(None), role))

    @classmethod
    def open_rotating(
        cls,
        directory: Path,
        role: Role[Any, Any, Any],
        machines_hash: str,
        policy: Any,
        seed: bytes,
        *,
        prefix: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        fsync: FsyncPolicy = "batch",
    ) -> Recorder:
        """A recorder writing a size-rotated log into ``directory`` (created if missing).

        Segment names start with ``prefix``, by default the role's name. Only roles with
        snapshots rotate (a later segment starts from one).
        """
        if role.capture is None:
            raise ValueError(f"a {role.name}'s log does not rotate: it has no snapshots")
        return cls(
            RotatingLog(directory, prefix or role.name, max_bytes, keep),
            role,
            machines_hash,
            policy,
            seed,
            fsync=fsync,
        )

    @property
    def path(self) -> Path | None:
        """The file being written: the current segment of a rotating log (None otherwise)."""
        return None if self.rotating is None else self.rotating.path

    def due(self) -> bool:
        """The current segment is full: the loop should ``rotate`` before the next step."""
        rotating = self.rotating
        return rotating is not None and rotating.size >= rotating.limit and not self.pending

    def append(self, event: Any, now: Now, result: StepResult) -> None:
        """Record one input the loop has just stepped, with its effects.

        Never raises for a failed write (a full disk, an I/O error): the step has happened,
        so its entry waits in memory (``pending``, up to ``MAX_PENDING_BYTES``) and is
        written, in order, once the disk takes it again; ``failing`` says so meanwhile.
        Past the bound the waiting entries are dropped, and the log goes on in a new segment
        that starts from a snapshot, so what is on disk still replays.
        """
        self.seq += 1
        entry = Entry(
            self.seq, now.mono, now.wall, self.role.logged(event, result), list(result.effects)
        )
        line = encode_entry(entry, self.role)
        if self.pending or self.lost_seqs is not None or not self._try(self._write, line):
            self._hold(line, now.mono)
        self.unsynced += 1
        if self.fsync == "always":
            self.sync()

    @property
    def failing(self) -> bool:
        """Entries are waiting for the disk (or were lost): the log is behind the state."""
        return bool(self.pending) or self.lost_seqs is not None

    def _write(self, line: bytes) -> None:
        self.sink.write(line)
        if self.rotating is None:
            self.sink.flush()  # a plain file object may buffer: hand the line to the OS now

    def _try(self, action: Callable[..., object], *args: object) -> bool:
        """Run a write; on OSError remember it and say False (the node goes on)."""
        try:
            action(*args)
        except OSError as exc:
            if self.error is None:
                log.error("event log: %s: entries wait in memory until it succeeds", exc)
            self.error = exc
            return False
        if self.error is not None and not self.failing:
            log.info("event log: writing again")
            self.error = None
        return True

    def _hold(self, line: bytes, mono: float) -> None:
        if self.lost_seqs is None:
            self.pending.append(line)
            self.pending_bytes += len(line)
            if self.pending_bytes > MAX_PENDING_BYTES:
                first = self.seq - len(self.pending) + 1
                self.lost_seqs = (first, self.seq)
                self.pending.clear()
                self.pending_bytes = 0
        else:
            self.lost_seqs = (self.lost_seqs[0], self.seq)
        if mono >= self._next_retry:
            self.retry(mono)

    def retry(self, mono: float | None = None) -> bool:
        """Write what waits, in order; True once nothing waits.

        ``feed`` tries at most once a second (``mono`` given); the disk monitor calls it after
        freeing space.
        """
        if mono is not None:
            self._next_retry = mono + 1.0
        while self.pending:
            if not self._try(self._write, self.pending[0]):
                return False
            self.pending_bytes -= len(self.pending.pop(0))
        if self.lost_seqs is not None:
            if self.rotating is None or not self._try(self.rotate):
                return False
            first, last = self.lost_seqs
            log.warning(
                "event log: entries %d-%d were lost to a failed disk; it goes on in %s, "
                "which starts from a snapshot and replays on its own",
                first,
                last,
                self.rotating.path,
            )
            self.lost_seqs = None
        if self.error is not None:
            log.info("event log: writing again")
            self.error = None
        return True

    def sync(self) -> None:
        """Push every entry written so far to the disk (a no-op with ``fsync = never``).

        The node calls it once per loop wake-up whose steps produced effects, before it
        performs them (``fsync = batch``); with ``always`` ``feed`` calls it after each entry.
        A failed sync is remembered like a failed write (``error``), never raised.
        """
        if self.fsync == "never" or not self.unsynced:
            return
        if self.rotating is not None:
            if not self._try(self.rotating.sync):
                return
        else:
            self.sink.flush()
            fileno = getattr(self.sink, "fileno", None)
            if fileno is not None:
                try:
                    fd = fileno()
                except (OSError, io.UnsupportedOperation):
                    fd = None
                if fd is not None:
                    sync_fd(fd)
        self.unsynced = 0
        self.syncs += 1

    def rotate(self, snapshot: Any | None = None) -> Path:
        """Start the next segment now, with ``snapshot`` (by default from ``snapshot_source``)."""
        if self.rotating is None:
            raise ValueError("this recorder writes to a plain file; it cannot rotate")
        if snapshot is None:
            if self.snapshot_source is None:
                raise ValueError("rotate needs the state's snapshot")
            snapshot = self.snapshot_source()
        return self.rotating.begin(encode_header(self._header(snapshot), self.role))

    def rotate_quietly(self) -> bool:
        """``rotate``, a failure remembered like a failed write (the entry then waits); True if done."""
        return self._try(self.rotate)

    def _header(self, snapshot: Any | None) -> Header[Any, Any]:
        rotating = self.rotating
        assert rotating is not None
        return segment_header(
            self.machines_hash,
            self.policy,
            self.seed,
            run=rotating.run,
            segment=rotating.index + 1,
            previous=None if rotating.path is None else rotating.path.name,
            after_seq=self.seq,
            snapshot=snapshot,
            role=self.role.name,
        )

    def flush(self) -> None:
        """Hand any buffered bytes to the OS (the node's rotating log has none)."""
        self.sink.flush()

    def close(self) -> None:
        """Sync (per the policy), then close a rotating log or flush a plain sink."""
        self.sync()
        if self.rotating is not None:
            self.rotating.close()
        else:
            self.sink.flush()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_inputs(
    path: Path,
    role: Role[Any, Any, Any],
    engine: Engine,
    machines_hash: str,
    policy: Any,
    seed: bytes,
    inputs: Iterable[tuple[Now, Any]],
) -> None:
    """Save a sequence of inputs as a log (used to keep failing property-test examples).

    Effects are recorded for each step that completes; the step that raises, if any, is
    written without effects, so replaying the log reproduces the failure at that entry.
    """
    with path.open("wb") as sink:
        sink.write(encode_header(make_header(machines_hash, policy, seed, role.name), role))
        state = role.initial(engine, policy, seed)
        failed = False
        for seq, (now, event) in enumerate(inputs, start=1):
            effects = None
            if not failed:
                try:
                    effects = list(role.step(state, event, now).effects)
                except Exception:
                    failed = True
            sink.write(encode_entry(Entry(seq, now.mono, now.wall, event, effects), role))


def read_lines(path: Path) -> Iterator[bytes]:
    """The log's lines, read lazily."""
    with path.open("rb") as f:
        yield from f


def read_series(paths: Iterable[Path]) -> Iterator[tuple[str, Iterator[bytes]]]:
    """(file name, lazy lines) for each path: the input of ``replay.replay_series``."""
    for path in paths:
        yield path.name, read_lines(path)
