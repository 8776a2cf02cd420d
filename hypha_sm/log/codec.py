"""Encoding of the event log: a JSON header line, then one JSON line per input.

The log is role-generic: the header names the role that wrote it (``role``, omitted for the
worker, so logs written before there were roles read unchanged) and carries that role's
configuration and, for a later segment, its snapshot; each entry holds one of the role's events
and the effects it produced. The role's ``Role`` value gives the types; this module knows none.

Pure (no file I/O). Floats round-trip exactly. JSON has no NaN or infinity, yet hostile
advertisements carry them and must be logged as they came, so an entry whose event holds a
non-finite float (the role's ``nonfinite_event`` says) writes it as the string ``"nan"``,
``"inf"`` or ``"-inf"`` and sets ``"nonfinite": true``; such entries are decoded in msgspec's lax
mode, which reads those strings back as floats. Every other entry is decoded strictly. A header
carrying a state snapshot (a later segment of a rotated log) does the same with the snapshot's
floats (deadlines are often ``inf``; the role's ``spell_snapshot``) and the header's own
``nonfinite`` flag.

Version 1 headers describe a log that starts from the initial state. Version 2 adds optional
fields for rotated logs (``run``, ``segment``, ``previous``, ``after_seq``, ``snapshot``); a
header uses version 2 exactly when it sets one of them, so v1 logs stay valid and a v1 reader
refuses a segment it cannot replay with a clear "version 2" message.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from hypha_sm.core.errors import HyphaSMError
from hypha_sm.core.role import Role
from hypha_sm.core.trace import Now
from hypha_sm.wire.bounds import MAX_JSON_DEPTH, json_problem

FORMAT = "hypha-sm/event-log"
#: A log that starts from the initial state and is not part of a rotated series.
VERSION = 1
#: A segment of a rotated log: adds run, segment, previous, after_seq and the snapshot.
VERSION_SEGMENT = 2
VERSIONS = (VERSION, VERSION_SEGMENT)
#: The role of a log whose header names none (every log written before roles existed).
DEFAULT_ROLE = "worker"

C = TypeVar("C")
Snap = TypeVar("Snap")
Ev = TypeVar("Ev")
Ef = TypeVar("Ef")


class LogFormatError(HyphaSMError, ValueError):
    """The log is not a hypha-sm event log this version can read; the message says where."""


class Header(
    msgspec.Struct,
    Generic[C, Snap],
    frozen=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    kw_only=True,
):
    """The first line: what produced the log and what a replay needs to start.

    ``policy`` is the role's configuration (the worker's ``Policy``, the scheduler's plan). The
    fields after it are version 2 (rotated logs) and are omitted when unset.
    """

    format: str
    version: int
    #: The role that wrote the log; omitted for the worker (older logs have no such field).
    role: str = DEFAULT_ROLE
    machines_hash: str
    engine_version: str
    seed: str
    policy: C
    #: The recording run this segment belongs to (the same in every segment of a series).
    run: str | None = None
    #: This segment's number within the run: 1, 2, 3, ...
    segment: int | None = None
    #: The file name of the run's previous segment (None for segment 1).
    previous: str | None = None
    #: The seq of the last entry before this segment: the first entry here is ``after_seq + 1``.
    after_seq: int = 0
    #: The state after entry ``after_seq``; None means the initial state from seed and policy.
    snapshot: Snap | None = None
    #: True when the snapshot holds NaN or infinities, written as strings (see module doc).
    nonfinite: bool = False


class Entry(
    msgspec.Struct, Generic[Ev, Ef], frozen=True, forbid_unknown_fields=True, omit_defaults=True
):
    """One input: its sequence number, its time, the event, and the effects it produced.

    ``effects`` is None when they were not recorded (for example the step that raised in a
    saved failing example).
    """

    seq: int
    mono: float
    wall: float
    event: Ev
    effects: list[Ef] | None = None
    nonfinite: bool = False

    @property
    def now(self) -> Now:
        """The input's time."""
        return Now(self.mono, self.wall)


class _RoleOnly(msgspec.Struct):
    """The one header field read before the role's own types are known."""

    role: str = DEFAULT_ROLE


@dataclass(frozen=True)
class _Decoders:
    header: msgspec.json.Decoder[Any]
    lax_header: msgspec.json.Decoder[Any]
    entry: msgspec.json.Decoder[Any]
    lax_entry: msgspec.json.Decoder[Any]


_encoder = msgspec.json.Encoder()
_role_decoder = msgspec.json.Decoder(_RoleOnly)
#: Decoders per role, built on first use (building one compiles the role's schema).
_decoders: dict[str, _Decoders] = {}


def _decoders_of(role: Role[Any, Any, Any]) -> _Decoders:
    found = _decoders.get(role.name)
    if found is None:
        header = Header[role.config_type, role.snapshot_type]  # type: ignore[name-defined]
        entry = Entry[role.event_type, role.effect_type]  # type: ignore[name-defined]
        found = _Decoders(
            msgspec.json.Decoder(header),
            msgspec.json.Decoder(header, strict=False),
            msgspec.json.Decoder(entry),
            msgspec.json.Decoder(entry, strict=False),
        )
        _decoders[role.name] = found
    return found


def role_of(line: bytes) -> str:
    """The role named by a header line (the worker if it names none); LogFormatError if unreadable."""
    _check_depth(line, 1)
    try:
        return _role_decoder.decode(line).role
    except Exception as exc:  # a damaged file: whatever the decoder raises names the line
        raise LogFormatError(f"line 1: not an event-log header: {exc}") from exc


def encode_header(header: Header[Any, Any], role: Role[Any, Any, Any]) -> bytes:
    """The header line, newline-terminated."""
    if header.snapshot is None:
        return _encoder.encode(header) + b"\n"
    spelled, nonfinite = role.spell_snapshot(header.snapshot)
    header = msgspec.structs.replace(header, snapshot=spelled, nonfinite=nonfinite)
    return _encoder.encode(header) + b"\n"


def encode_snapshot(snapshot: Any, role: Role[Any, Any, Any]) -> bytes:
    """A canonical encoding of a snapshot (non-finite floats spelled), for comparing states."""
    return _encoder.encode(role.spell_snapshot(snapshot)[0])


def decode_header(line: bytes, role: Role[Any, Any, Any]) -> Header[Any, Any]:
    """Parse the header line of ``role``'s log; LogFormatError if it is not one this reads.

    A log written by another role is refused by name (``role_of`` tells which to use).
    """
    named = role_of(line)
    if named != role.name:
        raise LogFormatError(f"line 1: this is a {named}'s log, not a {role.name}'s")
    decoders = _decoders_of(role)
    header: Header[Any, Any]
    try:
        header = decoders.header.decode(line)
    except msgspec.ValidationError as exc:
        lax: Header[Any, Any] | None = None
        with contextlib.suppress(msgspec.DecodeError, ValueError):
            lax = decoders.lax_header.decode(line)
        if lax is None or not lax.nonfinite:
            raise LogFormatError(f"line 1: not an event-log header: {exc}") from exc
        header = lax
    except Exception as exc:  # a damaged file: whatever the decoder raises names the line
        raise LogFormatError(f"line 1: not an event-log header: {exc}") from exc
    if header.format != FORMAT:
        raise LogFormatError(f"line 1: format is {header.format!r}, expected {FORMAT!r}")
    if header.version not in VERSIONS:
        raise LogFormatError(
            f"line 1: version {header.version} is not supported "
            f"(reads {', '.join(map(str, VERSIONS))})"
        )
    _check_header(header, role)
    return header


def _check_header(header: Header[Any, Any], role: Role[Any, Any, Any]) -> None:
    problem = role.config_problem(header.policy)  # a damaged policy is a format error
    if problem is not None:
        raise LogFormatError(f"line 1: the policy cannot run: {problem}")
    segment_fields = (
        header.run is not None
        or header.segment is not None
        or header.previous is not None
        or header.after_seq != 0
        or header.snapshot is not None
        or header.nonfinite
    )
    if header.version == VERSION:
        if segment_fields:
            raise LogFormatError("line 1: a version 1 header has version 2 (segment) fields")
        return
    if header.run is None or header.segment is None:
        raise LogFormatError("line 1: a version 2 header needs run and segment")
    if header.segment < 1 or header.after_seq < 0:
        raise LogFormatError(
            f"line 1: segment {header.segment} / after_seq {header.after_seq} out of range"
        )
    if header.snapshot is None and header.after_seq != 0:
        raise LogFormatError(
            f"line 1: entries start after seq {header.after_seq} but there is no snapshot"
        )
    if header.nonfinite and header.snapshot is None:
        raise LogFormatError("line 1: nonfinite is set but there is no snapshot")


def _spell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _spell(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_spell(v) for v in value]
    return value


def encode_entry(entry: Entry[Any, Any], role: Role[Any, Any, Any]) -> bytes:
    """One log line, newline-terminated."""
    if not role.nonfinite_event(entry.event):
        return _encoder.encode(entry) + b"\n"
    raw = msgspec.to_builtins(msgspec.structs.replace(entry, nonfinite=True))
    raw["event"] = _spell(raw["event"])
    return _encoder.encode(raw) + b"\n"


def decode_entry(line: bytes, lineno: int, role: Role[Any, Any, Any]) -> Entry[Any, Any]:
    """Parse one entry line of ``role``'s log; LogFormatError naming the line if it is malformed."""
    _check_depth(line, lineno)
    decoders = _decoders_of(role)
    entry: Entry[Any, Any]
    try:
        entry = decoders.entry.decode(line)
    except msgspec.ValidationError:
        try:
            entry = decoders.lax_entry.decode(line)
        except Exception as exc:
            raise LogFormatError(f"line {lineno}: {exc}") from exc
        if not entry.nonfinite:
            raise LogFormatError(f"line {lineno}: entry does not match the schema") from None
    except Exception as exc:  # a damaged file: whatever the decoder raises names the line
        raise LogFormatError(f"line {lineno}: {exc}") from exc
    return entry


def _check_depth(line: bytes, lineno: int) -> None:
    """Refuse a line nested deeper than any real entry before the decoder recurses into it."""
    if json_problem(line) is not None:
        raise LogFormatError(
            f"line {lineno}: nested deeper than {MAX_JSON_DEPTH} levels; not an event-log line"
        )
