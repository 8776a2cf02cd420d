"""Signed envelopes: every message travels as (version, sender, timestamp, id, payload, signature).

The signature covers a domain tag, the sender, the timestamp, the message id and the payload
bytes, so none of them can be changed or moved to another context. ``Opener.open`` turns any
bytes into either an ``Opened`` message or a ``Rejection`` with a counted reason; it never
raises for bad input. It keeps, in bounded memory, the ids it accepted within the allowed clock
skew, so a replayed envelope is refused; anything older than the skew is refused as stale.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

from hypha_sm.wire.bounds import msgpack_problem
from hypha_sm.wire.identity import Identity, IdentityError, PeerId
from hypha_sm.wire.messages import Message

VERSION = 1
DOMAIN = b"hypha-sm/envelope/v1\x00"
MSG_ID_BYTES = 16
#: Default largest envelope accepted on a control socket (bulk bytes travel elsewhere).
MAX_ENVELOPE = 1 << 20

#: Every reason an envelope can be refused for.
REASONS = (
    "oversized",
    "malformed",
    "too_deep",
    "unknown_version",
    "bad_sender",
    "bad_signature",
    "sender_mismatch",
    "stale",
    "replayed",
    "unknown_message",
    "malformed_payload",
)


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    """The signed frame. ``ts`` is milliseconds since the epoch."""

    v: int
    sender: bytes
    ts: int
    id: bytes
    payload: bytes
    sig: bytes


class Rejection(NamedTuple):
    """Why bytes were refused: a reason from ``REASONS`` and a short detail for the debug log."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified message, who sent it, and the envelope it came in (to store or relay as signed)."""

    sender: PeerId
    message: Message
    msg_id: bytes
    ts_ms: int
    envelope: bytes = field(default=b"", repr=False)


_envelope_encoder = msgspec.msgpack.Encoder()
_payload_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_payload_decoder = msgspec.msgpack.Decoder(Message)


def signing_bytes(sender: bytes, ts: int, msg_id: bytes, payload: bytes) -> bytes:
    """Exactly what the signature covers."""
    return DOMAIN + sender + ts.to_bytes(8, "big") + msg_id + payload


def encode_payload(message: Message) -> bytes:
    """The message alone, as msgpack (what goes inside an envelope)."""
    return _payload_encoder.encode(message)


def seal(identity: Identity, message: Message, now_wall: float, msg_id: bytes) -> bytes:
    """Sign ``message`` as ``identity`` at ``now_wall``; ``msg_id`` is 16 fresh random bytes."""
    if len(msg_id) != MSG_ID_BYTES:
        raise ValueError("message ids are 16 bytes")
    payload = _payload_encoder.encode(message)
    sender = identity.peer_id.raw
    ts = int(now_wall * 1000)
    sig = identity.sign(signing_bytes(sender, ts, msg_id, payload))
    return _envelope_encoder.encode(Envelope(VERSION, sender, ts, msg_id, payload, sig))


class ReplayGuard:
    """Message ids accepted within the skew window, in bounded memory.

    Ids older than the window are forgotten (such envelopes are refused as stale anyway). When
    ``capacity`` ids are held, the oldest is evicted and everything at or before its timestamp
    is refused from then on, so eviction can never let a replay through.
    """

    def __init__(self, window_ms: int, capacity: int) -> None:
        self.window_ms = window_ms
        self.capacity = capacity
        self.floor_ms = -1
        self._seen: set[tuple[bytes, bytes]] = set()
        self._order: list[tuple[int, bytes, bytes]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, sender: bytes, msg_id: bytes, ts: int, now_ms: int) -> str | None:
        """None and remember it if new; otherwise ``"replayed"`` or ``"stale"``."""
        order = self._order
        horizon = now_ms - self.window_ms
        while order and order[0][0] < horizon:
            _, s, i = heapq.heappop(order)
            self._seen.discard((s, i))
        if ts <= self.floor_ms:
            return "stale"
        key = (sender, msg_id)
        if key in self._seen:
            return "replayed"
        if len(self._seen) >= self.capacity:
            oldest, s, i = heapq.heappop(order)
            self._seen.discard((s, i))
            self.floor_ms = max(self.floor_ms, oldest)
            if ts <= self.floor_ms:
                return "stale"
        self._seen.add(key)
        heapq.heappush(order, (ts, sender, msg_id))
        return None


#: An envelope whose signature verified, and its sender (``Opener.check_signature``).
Signed = tuple[Envelope, PeerId]


class Opener:
    """Verifies envelopes for one socket or node, counting rejections by reason."""

    def __init__(
        self,
        *,
        max_skew: float = 30.0,
        max_size: int = MAX_ENVELOPE,
        replay_capacity: int = 100_000,
    ) -> None:
        self.max_skew_ms = int(max_skew * 1000)
        self.max_size = max_size
        self.guard = ReplayGuard(self.max_skew_ms, replay_capacity)
        self.rejected: Counter[str] = Counter()
        self.accepted = 0

    def open(
        self, data: bytes, now_wall: float, expect_sender: PeerId | None = None
    ) -> Opened | Rejection:
        """Verify ``data`` at ``now_wall``. Never raises for bad input."""
        return self.admit(data, self.check_signature(data, expect_sender), now_wall)

    def check_signature(self, data: bytes, expect: PeerId | None = None) -> Signed | Rejection:
        """The first half of ``open``: size, shape, version, sender and signature.

        Pure and thread-safe (it touches no state of the opener), so a backlog can be checked
        in a worker thread (the Ed25519 check releases the GIL); ``admit`` does the rest.
        """
        return _verified(data, self.max_size, expect)

    def admit(
        self, data: bytes, signed: Signed | Rejection, now_wall: float
    ) -> Opened | Rejection:
        """The second half of ``open``, on the caller's thread: freshness, replay, payload."""
        result = signed if isinstance(signed, Rejection) else self._admit(data, signed, now_wall)
        if isinstance(result, Rejection):
            self.rejected[result.reason] += 1
        else:
            self.accepted += 1
        return result

    def _admit(self, data: bytes, signed: Signed, now_wall: float) -> Opened | Rejection:
        env, sender = signed
        now_ms = int(now_wall * 1000)
        if abs(now_ms - env.ts) > self.max_skew_ms:
            return Rejection("stale", f"timestamp {env.ts} vs now {now_ms}")
        verdict = self.guard.check(env.sender, env.id, env.ts, now_ms)
        if verdict is not None:
            return Rejection(verdict, env.id.hex())
        return _decoded(env, sender, data)


def open_record(data: bytes, *, max_size: int = MAX_ENVELOPE) -> Opened | Rejection:
    """Verify a stored record (a signed envelope handed on by a gateway); never raises.

    Unlike ``Opener.open`` there is no freshness or replay check: a record is legitimately
    older than the clock skew and is meant to be read many times. The record's own ``expires``
    bounds how long it may be believed; checking it is the caller's job.
    """
    signed = _verified(data, max_size, None)
    if isinstance(signed, Rejection):
        return signed
    return _decoded(*signed, data)


def _verified(
    data: bytes, max_size: int, expect: PeerId | None
) -> tuple[Envelope, PeerId] | Rejection:
    """Size, shape, version, sender and signature: everything but freshness and the payload."""
    if len(data) > max_size:
        return Rejection("oversized", f"{len(data)} bytes > {max_size}")
    problem = msgpack_problem(data)
    if problem is not None:
        return Rejection("too_deep" if problem == "too_deep" else "malformed", problem)
    try:
        env = _envelope_decoder.decode(data)
    except Exception as exc:  # remote bytes: whatever the decoder raises is a rejection
        return Rejection("malformed", f"{type(exc).__name__}: {str(exc)[:200]}")
    if env.v != VERSION:
        return Rejection("unknown_version", f"version {env.v}")
    try:
        sender = PeerId.from_bytes(env.sender)
    except IdentityError as exc:
        return Rejection("bad_sender", str(exc))
    if len(env.id) != MSG_ID_BYTES or not 0 <= env.ts < 1 << 63:
        return Rejection("malformed", "bad message id or timestamp")
    if not sender.verify(env.sig, signing_bytes(env.sender, env.ts, env.id, env.payload)):
        return Rejection("bad_signature", str(sender))
    if expect is not None and sender != expect:
        return Rejection("sender_mismatch", f"{sender} is not {expect}")
    return env, sender


def decode_payload(payload: bytes) -> Message | Rejection:
    """A message's msgpack bytes as a ``Message``, or why not; never raises for bad input."""
    problem = msgpack_problem(payload)
    if problem is not None:
        return Rejection("malformed_payload", f"{problem} (checked before decoding)")
    try:
        message: Message = _payload_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        text = str(exc)
        reason = (
            "unknown_message"
            if "Invalid value" in text and "`$.t`" in text
            else "malformed_payload"
        )
        return Rejection(reason, text[:200])
    except Exception as exc:
        # Remote bytes: whatever the decoder raises is a rejection, never the caller's problem.
        # (msgspec raises UnicodeDecodeError, a ValueError, for invalid UTF-8: its issue #714.)
        return Rejection("malformed_payload", f"{type(exc).__name__}: {str(exc)[:200]}")
    return message


def _decoded(env: Envelope, sender: PeerId, data: bytes) -> Opened | Rejection:
    message = decode_payload(env.payload)
    if isinstance(message, Rejection):
        return message
    return Opened(sender, message, env.id, env.ts, data)
