"""Replay: fold a log's inputs through ``step`` and check each step's effects against the record.

Pure: it takes the log's lines and an engine, and never reads a clock or a file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from hypha_sm.core.engine import Engine
from hypha_sm.core.errors import HyphaSMError
from hypha_sm.core.reducer import Step, initial_state, step
from hypha_sm.core.state import WorkerState
from hypha_sm.log.codec import Entry, Header, LogFormatError, decode_entry, decode_header


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

    header: Header
    state: WorkerState
    machines_match: bool
    events: int = 0
    last_seq: int = 0
    divergence: Divergence | None = None
    #: (seq, exception) if a step raised; replay stops there.
    error: tuple[int, BaseException] | None = None
    unchecked: int = 0
    stopped_at: int | None = field(default=None)

    @property
    def ok(self) -> bool:
        """No divergence and no error."""
        return self.divergence is None and self.error is None


def split_log(lines: Iterable[bytes]) -> tuple[Header, Iterator[Entry]]:
    """The header, and a lazy iterator over the entries (raising LogFormatError on bad lines)."""
    it = iter(lines)
    try:
        first = next(it)
    except StopIteration:
        raise LogFormatError("the log is empty: no header line") from None
    header = decode_header(first)

    def entries() -> Iterator[Entry]:
        previous = 0
        for lineno, line in enumerate(it, start=2):
            if not line.strip():
                continue
            entry = decode_entry(line, lineno)
            if entry.seq != previous + 1:
                raise LogFormatError(
                    f"line {lineno}: seq {entry.seq} follows {previous}; entries are missing"
                )
            previous = entry.seq
            yield entry

    return header, entries()


def replay(
    lines: Iterable[bytes],
    engine: Engine,
    machines_hash: str,
    *,
    until: int | None = None,
    check_effects: bool = True,
    observe: Callable[[Entry, Step], None] | None = None,
) -> ReplayReport:
    """Re-run a log from its header's policy and seed; stop at the first divergence or error.

    ``until`` stops after the entry with that sequence number. ``observe`` sees every step.
    """
    header, entries = split_log(lines)
    state = initial_state(engine, header.policy, bytes.fromhex(header.seed))
    report = ReplayReport(header, state, header.machines_hash == machines_hash)
    for entry in entries:
        if until is not None and entry.seq > until:
            report.stopped_at = until
            break
        try:
            result = step(state, entry.event, entry.now)
        except Exception as exc:  # a saved failing example ends in the exception it reproduces
            report.error = (entry.seq, exc)
            break
        report.events += 1
        report.last_seq = entry.seq
        if observe is not None:
            observe(entry, result)
        if entry.effects is None:
            report.unchecked += 1
        elif check_effects and list(result.effects) != entry.effects:
            report.divergence = Divergence(
                entry.seq, entry.event, entry.effects, list(result.effects)
            )
            break
    return report
