"""Encoding of the event log: a JSON header line, then one JSON line per input.

Pure (no file I/O). Floats round-trip exactly. JSON has no NaN or infinity, yet hostile
advertisements carry them and must be logged as they came, so an entry whose event holds a
non-finite float writes it as the string ``"nan"``, ``"inf"`` or ``"-inf"`` and sets
``"nonfinite": true``; such entries are decoded in msgspec's lax mode, which reads those strings
back as floats. Every other entry is decoded strictly.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from hypha_sm.core.effects import Effect
from hypha_sm.core.events import AdvertisementReceived, Event, Now
from hypha_sm.core.policy import Policy

FORMAT = "hypha-sm/event-log"
VERSION = 1


class LogFormatError(ValueError):
    """The log is not a hypha-sm event log this version can read; the message says where."""


class Header(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The first line: what produced the log and what a replay needs to start."""

    format: str
    version: int
    machines_hash: str
    engine_version: str
    seed: str
    policy: Policy


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
_entry_decoder = msgspec.json.Decoder(Entry)
_lax_entry_decoder = msgspec.json.Decoder(Entry, strict=False)


def encode_header(header: Header) -> bytes:
    """The header line, newline-terminated."""
    return _encoder.encode(header) + b"\n"


def decode_header(line: bytes) -> Header:
    """Parse the header line; LogFormatError if it is not one this version reads."""
    try:
        header = _header_decoder.decode(line)
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: msgspec #714 (bad UTF-8)
        raise LogFormatError(f"line 1: not an event-log header: {exc}") from exc
    if header.format != FORMAT:
        raise LogFormatError(f"line 1: format is {header.format!r}, expected {FORMAT!r}")
    if header.version != VERSION:
        raise LogFormatError(
            f"line 1: version {header.version} is not supported (reads {VERSION})"
        )
    return header


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
    try:
        entry = _entry_decoder.decode(line)
    except msgspec.ValidationError:
        try:
            entry = _lax_entry_decoder.decode(line)
        except (msgspec.DecodeError, ValueError) as exc:
            raise LogFormatError(f"line {lineno}: {exc}") from exc
        if not entry.nonfinite:
            raise LogFormatError(f"line {lineno}: entry does not match the schema") from None
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: msgspec #714 (bad UTF-8)
        raise LogFormatError(f"line {lineno}: {exc}") from exc
    return entry
