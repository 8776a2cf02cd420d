"""Encoding of the event log: a JSON header line, then one JSON line per input.

Pure (no file I/O). Floats round-trip exactly. JSON has no NaN or infinity, yet hostile
advertisements carry them and must be logged as they came, so an entry whose event holds a
non-finite float writes it as the string ``"nan"``, ``"inf"`` or ``"-inf"`` and sets
``"nonfinite": true``; such entries are decoded in msgspec's lax mode, which reads those strings
back as floats. Every other entry is decoded strictly. A header carrying a state snapshot (a
later segment of a rotated log) does the same with the snapshot's floats (deadlines are often
``inf``) and the header's own ``nonfinite`` flag.

Version 1 headers describe a log that starts from the initial state. Version 2 adds optional
fields for rotated logs (``run``, ``segment``, ``previous``, ``after_seq``, ``snapshot``); a
header uses version 2 exactly when it sets one of them, so v1 logs stay valid and a v1 reader
refuses a segment it cannot replay with a clear "version 2" message.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import msgspec

from hypha_sm.core.resources import Amounts, Resources
from hypha_sm.roles.worker.core.effects import Effect
from hypha_sm.roles.worker.core.events import AdvertisementReceived, Event, Now
from hypha_sm.roles.worker.core.policy import (
    ExecutorRef,
    ExecutorSpec,
    Policy,
    PolicyError,
    policy_from_config,
)
from hypha_sm.wire.bounds import MAX_JSON_DEPTH, json_problem

FORMAT = "hypha-sm/event-log"
#: A log that starts from the initial state and is not part of a rotated series.
VERSION = 1
#: A segment of a rotated log: adds run, segment, previous, after_seq and the snapshot.
VERSION_SEGMENT = 2
VERSIONS = (VERSION, VERSION_SEGMENT)


class LogFormatError(ValueError):
    """The log is not a hypha-sm event log this version can read; the message says where."""


class RecordSnapshot(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    """One live record in a snapshot: every slot of its class, tagged by machine kind."""

    key: str
    phase: str
    #: Monotonic time of the record's deadline; ``inf`` when it has none.
    deadline: float


class NodeSnapshot(RecordSnapshot, tag="node", frozen=True):
    """A ``NodeRec``."""

    stop_reason: str


class BatchSnapshot(RecordSnapshot, tag="batch", frozen=True):
    """A ``BatchRec``: the request ids held in the window, in arrival order."""

    pending: list[str]


class RequestSnapshot(RecordSnapshot, tag="request", frozen=True):
    """A ``RequestRec`` (held in the window; its floats may be non-finite if it was hostile)."""

    scheduler: str
    reply_address: str
    amounts: Amounts
    executors: tuple[ExecutorRef, ...]
    bid: float
    expires_mono: float
    arrival: int
    requested: Resources | None
    offer_price: float
    offer_resources: Resources | None
    score: float


class LeaseSnapshot(RecordSnapshot, tag="lease", frozen=True):
    """A ``LeaseRec``."""

    owner: str
    request_id: str
    resources: Resources
    price: float
    job_id: str | None
    end_reason: str


class JobSnapshot(RecordSnapshot, tag="job", frozen=True):
    """A ``JobRec``."""

    lease_id: str
    scheduler: str
    executor: ExecutorSpec
    spec: str
    reply_to: int | None
    started: bool
    outcome: str
    reason: str
    exit_code: int | None


AnyRecordSnapshot = NodeSnapshot | BatchSnapshot | RequestSnapshot | LeaseSnapshot | JobSnapshot


class Snapshot(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The core state between two steps, exactly.

    It is what ``WorkerState`` holds besides the engine, the policy and the seed (which the
    header carries) and the per-step scratch (empty between steps). Dicts and lists keep their
    order; ``timers`` and ``seen_heap`` are the heaps as laid out in memory, stale entries
    included, so a restored state pops them in the same order.
    """

    #: ``state.now``: the time of the last step (the next input may not go back before it).
    mono: float
    wall: float
    #: How many ids the seeded generator has issued (its counter).
    ids_issued: int
    accepting: bool
    arrivals: int
    reserved: Resources
    reservations: dict[str, Resources]
    #: Every live record, kind by kind (node, batch, request, lease, job), in insertion order.
    records: list[AnyRecordSnapshot]
    timer_seq: int
    #: The deadline heap: (at, seq, kind, key).
    timers: list[tuple[float, int, str, str]]
    seen_ads: dict[str, float]
    #: The forget-by heap of remembered advertisement ids: (forget_at, request_id).
    seen_heap: list[tuple[float, str]]
    counters: dict[str, int]
    storage_full: bool = False
    #: Scheduler -> (offers in a row it let lapse, mono time its backoff ends); finite.
    lapses: dict[str, tuple[int, float]] = {}


class Header(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The first line: what produced the log and what a replay needs to start.

    The fields after ``policy`` are version 2 (rotated logs) and are omitted when unset.
    """

    format: str
    version: int
    machines_hash: str
    engine_version: str
    seed: str
    policy: Policy
    #: The recording run this segment belongs to (the same in every segment of a series).
    run: str | None = None
    #: This segment's number within the run: 1, 2, 3, ...
    segment: int | None = None
    #: The file name of the run's previous segment (None for segment 1).
    previous: str | None = None
    #: The seq of the last entry before this segment: the first entry here is ``after_seq + 1``.
    after_seq: int = 0
    #: The state after entry ``after_seq``; None means the initial state from seed and policy.
    snapshot: Snapshot | None = None
    #: True when the snapshot holds NaN or infinities, written as strings (see module doc).
    nonfinite: bool = False


class Entry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One input: its sequence number, its time, the event, and the effects it produced.

    ``effects`` is None when they were not recorded (for example the step that raised in a
    saved failing example).
    """

    seq: int
    mono: float
    wall: float
    event: Event
    effects: list[Effect] | None = None
    nonfinite: bool = False

    @property
    def now(self) -> Now:
        """The input's time."""
        return Now(self.mono, self.wall)


_encoder = msgspec.json.Encoder()
_header_decoder = msgspec.json.Decoder(Header)
_lax_header_decoder = msgspec.json.Decoder(Header, strict=False)
_entry_decoder = msgspec.json.Decoder(Entry)
_lax_entry_decoder = msgspec.json.Decoder(Entry, strict=False)


def encode_header(header: Header) -> bytes:
    """The header line, newline-terminated."""
    if header.snapshot is None:
        return _encoder.encode(header) + b"\n"
    spelled, nonfinite = _spell_snapshot(header.snapshot)
    header = msgspec.structs.replace(header, snapshot=spelled, nonfinite=nonfinite)
    return _encoder.encode(header) + b"\n"


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """A canonical encoding of a snapshot (non-finite floats spelled), for comparing states."""
    return _encoder.encode(_spell_snapshot(snapshot)[0])


def _word(value: float) -> str:
    return "nan" if value != value else ("inf" if value > 0 else "-inf")


def _float_fields(cls: type[msgspec.Struct]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(float fields, Amounts fields) of a snapshot struct; no float may hide anywhere else."""
    floats, nested = [], []
    for info in msgspec.structs.fields(cls):
        if info.type is float:
            floats.append(info.name)
        elif info.type is Amounts:
            nested.append(info.name)
        elif "float" in repr(info.type) and info.name not in _SNAPSHOT_CONTAINERS:
            raise TypeError(f"{cls.__name__}.{info.name}: teach _spell_snapshot this float")
    return tuple(floats), tuple(nested)


#: Snapshot fields holding floats inside containers, spelled one by one in _spell_snapshot.
_SNAPSHOT_CONTAINERS = ("timers", "seen_ads", "seen_heap", "lapses")
_AMOUNT_FLOATS = _float_fields(Amounts)[0]
_RECORD_FLOATS = {
    cls: _float_fields(cls)
    for cls in (NodeSnapshot, BatchSnapshot, RequestSnapshot, LeaseSnapshot, JobSnapshot)
}
_SNAPSHOT_FLOATS = _float_fields(Snapshot)[0]


def _spelled(value: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: _word(v) for n in names if not math.isfinite(v := getattr(value, n))}


def _spell_snapshot(snapshot: Snapshot) -> tuple[Snapshot, bool]:
    """A copy for encoding only, non-finite floats replaced by their words; and whether any were.

    Checks just the float-typed fields (a full ``to_builtins`` walk is 5x slower on a large
    state); the copy's float fields may hold strings, so it is never handed to anyone else.
    """
    isfinite = math.isfinite
    changes: dict[str, Any] = _spelled(snapshot, _SNAPSHOT_FLOATS)
    records: list[Any] | None = None
    for i, rec in enumerate(snapshot.records):
        floats, nested = _RECORD_FLOATS[type(rec)]
        fixes = _spelled(rec, floats)
        for name in nested:
            inner = _spelled(getattr(rec, name), _AMOUNT_FLOATS)
            if inner:
                fixes[name] = msgspec.structs.replace(getattr(rec, name), **inner)
        if fixes:
            records = list(snapshot.records) if records is None else records
            records[i] = msgspec.structs.replace(rec, **fixes)
    if records is not None:
        changes["records"] = records
    if not all(isfinite(t[0]) for t in snapshot.timers):
        changes["timers"] = [
            (t if isfinite(t[0]) else (_word(t[0]), *t[1:])) for t in snapshot.timers
        ]
    if not all(isfinite(t[0]) for t in snapshot.seen_heap):
        changes["seen_heap"] = [
            (t if isfinite(t[0]) else (_word(t[0]), t[1])) for t in snapshot.seen_heap
        ]
    if not all(isfinite(v) for v in snapshot.seen_ads.values()):
        changes["seen_ads"] = {
            k: v if isfinite(v) else _word(v) for k, v in snapshot.seen_ads.items()
        }
    if not changes:
        return snapshot, False
    return msgspec.structs.replace(snapshot, **changes), True


def decode_header(line: bytes) -> Header:
    """Parse the header line; LogFormatError if it is not one this version reads."""
    _check_depth(line, 1)
    try:
        header = _header_decoder.decode(line)
    except msgspec.ValidationError as exc:
        lax: Header | None = None
        with contextlib.suppress(msgspec.DecodeError, ValueError):
            lax = _lax_header_decoder.decode(line)
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
    _check_header(header)
    return header


def _check_header(header: Header) -> None:
    try:  # the same checks as a node's own config: a damaged policy is a format error
        policy_from_config(msgspec.to_builtins(header.policy))
    except PolicyError as exc:
        raise LogFormatError(f"line 1: the policy cannot run: {exc}") from None
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


def _nonfinite(event: Event) -> bool:
    if isinstance(event, AdvertisementReceived):
        r = event.resources
        values = (event.bid, event.expires_wall, r.gpu, r.cpu, r.memory, r.storage)
        return not all(math.isfinite(v) for v in values)
    return False


def _spell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _spell(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_spell(v) for v in value]
    return value


def encode_entry(entry: Entry) -> bytes:
    """One log line, newline-terminated."""
    if not _nonfinite(entry.event):
        return _encoder.encode(entry) + b"\n"
    raw = msgspec.to_builtins(msgspec.structs.replace(entry, nonfinite=True))
    raw["event"] = _spell(raw["event"])
    return _encoder.encode(raw) + b"\n"


def decode_entry(line: bytes, lineno: int) -> Entry:
    """Parse one entry line; LogFormatError naming the line if it is malformed."""
    _check_depth(line, lineno)
    try:
        entry = _entry_decoder.decode(line)
    except msgspec.ValidationError:
        try:
            entry = _lax_entry_decoder.decode(line)
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
