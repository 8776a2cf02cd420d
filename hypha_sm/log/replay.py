"""Replay: fold a log's inputs through ``step`` and check each step's effects against the record.

A log starts from the initial state (seed and policy from the header) or, for a later segment
of a rotated log, from the snapshot in its header; ``replay`` handles both, so any one segment
replays on its own. ``replay_series`` replays a run's segments in order as one log, checking at
each boundary that the next segment continues this one and that its snapshot is the state the
replay reached.

Role-generic: the ``Role`` given (the log's header names it; ``codec.role_of``) supplies the
types, ``step`` and the snapshot functions. Pure: it takes the log's lines and an engine, and
never reads a clock or a file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from hypha_sm.core.engine import Engine
from hypha_sm.core.errors import HyphaSMError, SnapshotError
from hypha_sm.core.role import Role, StepResult
from hypha_sm.log.codec import (
    Entry,
    Header,
    LogFormatError,
    decode_entry,
    decode_header,
    encode_snapshot,
)


@dataclass(frozen=True)
class Divergence:
    """The first input whose effects differ from the recorded ones."""

    seq: int
    event: Any
    expected: Any
    actual: Any

    def to_builtins(self) -> dict[str, Any]:
        """A JSON-ready form: ``{"seq", "event", "expected", "actual"}``."""
        return {
            "seq": self.seq,
            "event": msgspec.to_builtins(self.event),
            "expected": msgspec.to_builtins(self.expected),
            "actual": msgspec.to_builtins(self.actual),
        }


class ReplayDivergence(HyphaSMError):
    """Replaying a log produced different effects than were recorded."""

    def __init__(self, divergence: Divergence) -> None:
        self.divergence = divergence
        super().__init__(f"replay diverged at seq {divergence.seq}")


@dataclass
class ReplayReport:
    """How a replay went."""

    header: Header[Any, Any]
    #: The role's state as the replay left it.
    state: Any
    machines_match: bool
    events: int = 0
    last_seq: int = 0
    divergence: Divergence | None = None
    #: (seq, exception) if a step raised; replay stops there.
    error: tuple[int, BaseException] | None = None
    unchecked: int = 0
    stopped_at: int | None = field(default=None)
    #: How many segments were replayed (``replay_series``); 1 for a single log.
    segments: int = 1
    #: The line number of a last line cut short (the node stopped mid-write); it is not
    #: replayed, every complete entry before it is.
    partial_line: int | None = None
    #: Whether the node announced that it stopped (a clean exit) in what was replayed.
    node_stopped: bool = False

    @property
    def ok(self) -> bool:
        """No divergence and no error."""
        return self.divergence is None and self.error is None


class LogEntries(Iterator[Entry[Any, Any]]):
    """A log's entries, decoded lazily (LogFormatError on a bad line).

    Every entry is written as one line ending in a newline, so a last line without one was cut
    short by a crash: it is not decoded, and ``partial_line`` says where it was.
    """

    def __init__(self, lines: Iterator[bytes], after_seq: int, role: Role[Any, Any, Any]) -> None:
        self._lines = enumerate(lines, start=2)
        self._role = role
        self._previous = after_seq
        #: The line number of a partial last line, once iteration reached it.
        self.partial_line: int | None = None

    def __next__(self) -> Entry[Any, Any]:
        for lineno, line in self._lines:
            if not line.endswith(b"\n"):
                self.partial_line = lineno
                raise StopIteration
            if not line.strip():
                continue
            entry = decode_entry(line, lineno, self._role)
            if entry.seq != self._previous + 1:
                raise LogFormatError(
                    f"line {lineno}: seq {entry.seq} follows {self._previous}; entries are missing"
                )
            self._previous = entry.seq
            return entry
        raise StopIteration


def split_log(
    lines: Iterable[bytes], role: Role[Any, Any, Any]
) -> tuple[Header[Any, Any], LogEntries]:
    """The header, and a lazy iterator over the entries (raising LogFormatError on bad lines)."""
    it = iter(lines)
    try:
        first = next(it)
    except StopIteration:
        raise LogFormatError("the log is empty: no header line") from None
    try:
        header = decode_header(first, role)
    except LogFormatError:
        if not first.endswith(b"\n"):
            raise LogFormatError(
                "line 1: the header is partial (the node stopped while writing it)"
            ) from None
        raise
    return header, LogEntries(it, header.after_seq, role)


def start_state(header: Header[Any, Any], role: Role[Any, Any, Any], engine: Engine) -> Any:
    """The state a log starts from: its snapshot if it has one, else the initial state."""
    seed = bytes.fromhex(header.seed)
    if header.snapshot is None:
        return role.initial(engine, header.policy, seed)
    if role.restore is None:
        raise LogFormatError(f"line 1: a {role.name}'s log has no snapshots")
    try:
        return role.restore(header.snapshot, engine, header.policy, seed)
    except SnapshotError as exc:
        raise LogFormatError(str(exc)) from None


def replay(
    lines: Iterable[bytes],
    engine: Engine,
    machines_hash: str,
    *,
    role: Role[Any, Any, Any],
    until: int | None = None,
    check_effects: bool = True,
    observe: Callable[[Entry[Any, Any], StepResult], None] | None = None,
) -> ReplayReport:
    """Re-run a log from its header; stop at the first divergence or error.

    The header gives the policy and seed, and for a later segment of a rotated log the
    snapshot to start from. ``until`` stops after the entry with that sequence number (it may
    not be before the segment's ``after_seq``). ``observe`` sees every step.
    """
    header, entries = split_log(lines, role)
    if until is not None and until < header.after_seq:
        raise LogFormatError(
            f"until {until}: this segment starts after seq {header.after_seq}; "
            "replay an earlier segment"
        )
    report = ReplayReport(
        header, start_state(header, role, engine), header.machines_hash == machines_hash
    )
    report.last_seq = header.after_seq
    _fold(report, role, entries, until, check_effects, observe)
    report.partial_line = entries.partial_line
    return report


def replay_series(
    segments: Iterable[tuple[str, Iterable[bytes]]],
    engine: Engine,
    machines_hash: str,
    *,
    role: Role[Any, Any, Any],
    until: int | None = None,
    check_effects: bool = True,
    observe: Callable[[Entry[Any, Any], StepResult], None] | None = None,
) -> ReplayReport:
    """Replay a run's segments, given as (file name, lines) oldest first, as one log.

    The first segment starts from its header (initial state or snapshot); each later one must
    continue it (same run, next segment number, ``previous`` naming the segment before,
    ``after_seq`` equal to the last seq replayed; LogFormatError otherwise) and its snapshot
    must equal the state the replay reached (reported as a divergence at ``after_seq``
    otherwise). Replay goes on with the replayed state, so the series checks the snapshots
    rather than trusting them. Stops at the first divergence or error, or after ``until``.
    """
    report: ReplayReport | None = None
    previous = ""
    for name, lines in segments:
        header, entries = split_log(lines, role)
        if report is None:
            if until is not None and until < header.after_seq:
                raise LogFormatError(
                    f"until {until}: the series starts after seq {header.after_seq}"
                )
            report = ReplayReport(
                header, start_state(header, role, engine), header.machines_hash == machines_hash
            )
            report.last_seq = header.after_seq
        else:
            _check_link(report, previous, header, name)
            report.segments += 1
            assert header.snapshot is not None  # _check_link
            divergence = _boundary(role, report.state, header.snapshot, header.after_seq, name)
            if divergence is not None:
                report.divergence = divergence
                break
        _fold(report, role, entries, until, check_effects, observe)
        report.partial_line = entries.partial_line
        if not report.ok or report.stopped_at is not None:
            break
        previous = name
    if report is None:
        raise LogFormatError("no segments to replay")
    return report


def _check_link(report: ReplayReport, previous: str, header: Header[Any, Any], name: str) -> None:
    first = report.header
    problems = []
    if header.run is None or header.run != first.run:
        problems.append(f"run {header.run!r} is not {first.run!r}")
    if header.seed != first.seed or header.policy != first.policy:
        problems.append("seed or policy differ from the first segment's")
    if header.machines_hash != first.machines_hash:
        problems.append("machines_hash differs from the first segment's")
    if first.segment is not None and header.segment != first.segment + report.segments:
        problems.append(f"segment {header.segment} follows {first.segment + report.segments - 1}")
    if header.previous != previous:
        problems.append(f"previous is {header.previous!r}, not {previous!r}")
    if header.after_seq != report.last_seq:
        problems.append(f"starts after seq {header.after_seq}, the replay is at {report.last_seq}")
    if header.snapshot is None:
        problems.append("no snapshot")
    if problems:
        raise LogFormatError(
            f"{name}: does not continue the previous segment: {'; '.join(problems)}"
        )


def _boundary(
    role: Role[Any, Any, Any], state: Any, expected: Any, seq: int, name: str
) -> Divergence | None:
    """None if the state is the snapshot (but for stale deadline entries); else what differs."""
    if role.capture is None:
        raise LogFormatError(f"{name}: a {role.name}'s log has no snapshots")
    actual = role.capture(state)
    if encode_snapshot(actual, role) == encode_snapshot(expected, role):
        return None
    actual, expected = role.effective(actual), role.effective(expected)
    if encode_snapshot(actual, role) == encode_snapshot(expected, role):
        return None
    want = msgspec.json.decode(encode_snapshot(expected, role))
    got = msgspec.json.decode(encode_snapshot(actual, role))
    differs = sorted(k for k in want if want[k] != got.get(k))
    return Divergence(
        seq,
        {"segment": name, "check": "snapshot", "fields": differs},
        {k: want[k] for k in differs},
        {k: got.get(k) for k in differs},
    )


def _fold(
    report: ReplayReport,
    role: Role[Any, Any, Any],
    entries: Iterator[Entry[Any, Any]],
    until: int | None,
    check_effects: bool,
    observe: Callable[[Entry[Any, Any], StepResult], None] | None,
) -> None:
    state = report.state
    for entry in entries:
        if until is not None and entry.seq > until:
            report.stopped_at = until
            break
        try:
            result = role.step(state, entry.event, entry.now)
        except Exception as exc:  # a saved failing example ends in the exception it reproduces
            report.error = (entry.seq, exc)
            break
        report.events += 1
        report.last_seq = entry.seq
        if role.stopped(result.effects):
            report.node_stopped = True
        if observe is not None:
            observe(entry, result)
        if entry.effects is None:
            report.unchecked += 1
        elif check_effects and list(result.effects) != entry.effects:
            report.divergence = Divergence(
                entry.seq, entry.event, entry.effects, list(result.effects)
            )
            break
