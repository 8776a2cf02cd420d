"""Sessions: one signed handshake, then requests and answers sealed with a shared key.

The high-rate point-to-point requests (lease renewals, job status, progress, data slices)
would otherwise cost two Ed25519 signatures and two verifications per round trip. A session
replaces them with an AEAD (ChaCha20-Poly1305) under keys both sides derive once
(specs/protocol.md §5.1):

1. The client sends a signed ``SessionOpen`` (an ordinary envelope: fresh, not replayed, signed
   by the client) carrying an ephemeral X25519 public key and the server's peer id.
2. The server answers a signed ``SessionAccept`` with its own ephemeral key, a session id, the
   id of the ``SessionOpen`` it answers and the client's peer id.
3. Both derive two keys (one per direction) with HKDF-SHA-256 from the X25519 secret, salted
   with the SHA-256 of both signed envelopes, so the keys belong to exactly this handshake
   between exactly these two peer ids.

A sealed frame is ``[2, session, seq, box]`` (msgpack): ``box`` is the message's msgpack
payload sealed under the direction's key with the sequence number as nonce; the session id and
the sequence number are authenticated too. The answer to request ``seq`` is sealed with the
other key and the same ``seq``, so an answer cannot be moved to another request. The server
accepts each ``seq`` once (a sliding window), so a frame cannot be replayed; a session ends
after its lifetime or message budget, and the client then opens a new one (re-keying).

Everything here is pure: keys, randomness and the clock come from the caller.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hypha_sm.net.errors import NetworkError
from hypha_sm.wire import messages as m
from hypha_sm.wire.bounds import msgpack_problem
from hypha_sm.wire.envelope import Rejection
from hypha_sm.wire.identity import PeerId

FRAME_VERSION = 2
DOMAIN = b"hypha-sm/session/v1\x00"
KEY_BYTES = 32
SESSION_ID_BYTES = 16
#: The first byte of every sealed frame: a msgpack array of four (an envelope is one of six).
FRAME_MARKER = 0x94
#: Sequence numbers a server still accepts below the highest it has seen (requests in flight
#: at once may arrive out of order).
WINDOW = 1024
#: How long a server keeps a session, and how many requests it accepts in one, by default.
LIFETIME = 600.0
MAX_MESSAGES = 1 << 20
#: Sessions a server keeps; the least recently used is forgotten first (its client re-opens).
CAPACITY = 4096
#: Largest sealed frame a server or client opens (the same bound as an envelope).
MAX_FRAME = 1 << 20
#: Every reason a sealed frame can be refused for (besides ``oversized`` and ``malformed``).
REASONS = ("unknown_session", "bad_seal", "replayed", "exhausted")
_WINDOW_MASK = (1 << WINDOW) - 1

#: Requests that go through a session when the caller names the peer it expects. Everything
#: a third party stores, relays or is shown (advertisements, offers, records, dispatches,
#: transfer offers) stays a signed envelope.
SESSION_KINDS: frozenset[type[m.Message]] = frozenset(
    {
        m.RenewLease,
        m.JobStatus,
        m.Progress,
        m.DataSliceRequest,
        m.SliceDoneReport,
        m.Health,
    }
)


class Frame(msgspec.Struct, array_like=True, frozen=True):
    """A sealed request or answer. An empty ``box`` from a server: "no such session"."""

    v: int
    session: bytes
    seq: int
    box: bytes


_frame_encoder = msgspec.msgpack.Encoder()
_frame_decoder = msgspec.msgpack.Decoder(Frame)


class SessionError(NetworkError):
    """A handshake answer that does not set up a session (the reason says why)."""


def _nonce(seq: int) -> bytes:
    return seq.to_bytes(12, "big")


def _aad(session: bytes, seq: int) -> bytes:
    return DOMAIN + session + seq.to_bytes(8, "big")


def _seal(key: ChaCha20Poly1305, session: bytes, seq: int, payload: bytes) -> bytes:
    """The frame of ``payload`` sealed under ``key`` as message ``seq`` of ``session``."""
    box = key.encrypt(_nonce(seq), payload, _aad(session, seq))
    return _frame_encoder.encode(Frame(FRAME_VERSION, session, seq, box))


def _unseal(key: ChaCha20Poly1305, frame: Frame) -> bytes | None:
    """The payload of ``frame`` if it opens under ``key``, else None."""
    try:
        return key.decrypt(_nonce(frame.seq), frame.box, _aad(frame.session, frame.seq))
    except InvalidTag:
        return None


def derive_keys(
    private: X25519PrivateKey, their_public: bytes, open_envelope: bytes, accept_envelope: bytes
) -> tuple[bytes, bytes]:
    """The client-to-server and server-to-client keys of one handshake.

    Raises:
        SessionError: the other side's key is not a usable X25519 key (wrong size or a
            low-order point, which gives an all-zero secret).
    """
    if len(their_public) != KEY_BYTES:
        raise SessionError("ephemeral key is not 32 bytes")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(their_public))
    except ValueError as exc:  # OpenSSL refuses an all-zero shared secret
        raise SessionError(f"ephemeral key refused: {exc}") from None
    salt = hashlib.sha256(open_envelope + accept_envelope).digest()
    okm = HKDF(algorithm=hashes.SHA256(), length=2 * KEY_BYTES, salt=salt, info=DOMAIN).derive(
        shared
    )
    return okm[:KEY_BYTES], okm[KEY_BYTES:]


def new_private_key(seed: bytes) -> X25519PrivateKey:
    """An ephemeral X25519 key from 32 random bytes (the caller draws them)."""
    return X25519PrivateKey.from_private_bytes(seed)


def public_bytes(private: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``private``'s public key."""
    return private.public_key().public_bytes_raw()


def is_frame(data: bytes) -> bool:
    """Whether ``data`` is shaped as a sealed frame rather than a signed envelope."""
    return bool(data) and data[0] == FRAME_MARKER


def unknown_session(session: bytes, seq: int) -> bytes:
    """The server's unauthenticated notice that it has no such session.

    Anyone could forge it; all it makes a client do is open a new session with a signed
    handshake, which is what a dropped frame would lead to anyway.
    """
    return _frame_encoder.encode(Frame(FRAME_VERSION, session[:SESSION_ID_BYTES], seq, b""))


def _decode(data: bytes) -> Frame | Rejection:
    if len(data) > MAX_FRAME:
        return Rejection("oversized", f"{len(data)} bytes")
    problem = msgpack_problem(data)  # the shape first, as for an envelope (bounds.py)
    if problem is not None:
        return Rejection("malformed", problem)
    try:
        frame = _frame_decoder.decode(data)
    except Exception as exc:  # remote bytes: whatever the decoder raises is a rejection
        return Rejection("malformed", f"{type(exc).__name__}: {str(exc)[:120]}")
    if frame.v != FRAME_VERSION:
        return Rejection("malformed", f"frame version {frame.v}")
    if len(frame.session) != SESSION_ID_BYTES or not 0 <= frame.seq < 1 << 63:
        return Rejection("malformed", "session id or sequence number out of range")
    return frame


@dataclass(slots=True)
class ClientSession:
    """The client's half: seals requests, opens their answers."""

    session: bytes
    expires: float
    remaining: int
    _send: ChaCha20Poly1305 = field(repr=False)
    _receive: ChaCha20Poly1305 = field(repr=False)
    next_seq: int = 0

    @classmethod
    def from_keys(
        cls, session: bytes, keys: tuple[bytes, bytes], expires: float, remaining: int
    ) -> ClientSession:
        """A session from ``derive_keys``' output (client-to-server first)."""
        return cls(
            session,
            expires,
            remaining,
            ChaCha20Poly1305(keys[0]),
            ChaCha20Poly1305(keys[1]),
        )

    def usable(self, now_wall: float) -> bool:
        """Whether another request may still go through this session."""
        return self.remaining > 0 and now_wall < self.expires

    def seal(self, payload: bytes) -> tuple[int, bytes]:
        """The next sequence number and the sealed request frame for ``payload``."""
        if self.remaining <= 0:
            raise RuntimeError("session exhausted: open a new one")  # callers check usable()
        seq = self.next_seq
        self.next_seq += 1
        self.remaining -= 1
        return seq, _seal(self._send, self.session, seq, payload)

    def open_answer(self, data: bytes, seq: int) -> bytes | Rejection:
        """The payload of the answer to request ``seq``; never raises for bad input.

        ``Rejection("unknown_session")`` when the server no longer has the session.
        """
        frame = _decode(data)
        if isinstance(frame, Rejection):
            return frame
        if frame.session != self.session or frame.seq != seq:
            return Rejection("bad_seal", "answer for another session or request")
        if not frame.box:
            return Rejection("unknown_session", self.session.hex())
        payload = _unseal(self._receive, frame)
        return Rejection("bad_seal", "answer does not open") if payload is None else payload


@dataclass(slots=True)
class ServerSession:
    """The server's half: who the client is, its keys, the sequence numbers already seen."""

    client: PeerId
    session: bytes
    expires: float
    remaining: int
    _receive: ChaCha20Poly1305 = field(repr=False)
    _send: ChaCha20Poly1305 = field(repr=False)
    highest: int = -1
    #: Bit i set: sequence number ``highest - i`` was accepted.
    seen: int = 0

    def _accept(self, seq: int) -> str | None:
        """None and remember ``seq`` if it is new; otherwise why not."""
        if seq > self.highest:
            shift = seq - self.highest
            # A jump past the window forgets it all (never shift by a huge count).
            kept = (self.seen << shift) & _WINDOW_MASK if shift < WINDOW else 0
            self.seen = kept | 1
            self.highest = seq
            return None
        back = self.highest - seq
        if back >= WINDOW or self.seen >> back & 1:
            return "replayed"
        self.seen |= 1 << back
        return None

    def seal_answer(self, seq: int, payload: bytes) -> bytes:
        """The sealed answer to request ``seq``."""
        return _seal(self._send, self.session, seq, payload)


@dataclass(frozen=True, slots=True)
class OpenedFrame:
    """A request that opened: its session, sequence number and payload (msgpack)."""

    session: ServerSession
    seq: int
    payload: bytes


class SessionTable:
    """A server's sessions, bounded (least recently used forgotten first)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._sessions: OrderedDict[bytes, ServerSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def add(
        self,
        client: PeerId,
        session: bytes,
        keys: tuple[bytes, bytes],
        expires: float,
        remaining: int,
    ) -> ServerSession:
        """Keep a new session from ``derive_keys``' output (client-to-server first)."""
        entry = ServerSession(
            client,
            session,
            expires,
            remaining,
            ChaCha20Poly1305(keys[0]),
            ChaCha20Poly1305(keys[1]),
        )
        self._sessions[session] = entry
        while len(self._sessions) > self.capacity:
            self._sessions.popitem(last=False)
        return entry

    def open(self, data: bytes, now_wall: float) -> OpenedFrame | tuple[Rejection, Frame | None]:
        """The request inside a sealed frame, or why not (and the frame, if it decoded).

        Never raises for bad input. A frame whose seal does not open changes nothing: the
        sequence number is only taken once the frame is known to come from the client.
        """
        frame = _decode(data)
        if isinstance(frame, Rejection):
            return frame, None
        entry = self._sessions.get(frame.session)
        if entry is None or now_wall >= entry.expires:
            if entry is not None:
                del self._sessions[frame.session]
            return Rejection("unknown_session", frame.session.hex()), frame
        if entry.remaining <= 0:
            del self._sessions[frame.session]
            return Rejection("exhausted", frame.session.hex()), frame
        payload = _unseal(entry._receive, frame)
        if payload is None:
            return Rejection("bad_seal", f"{frame.session.hex()}#{frame.seq}"), frame
        verdict = entry._accept(frame.seq)
        if verdict is not None:
            return Rejection(verdict, f"{frame.session.hex()}#{frame.seq}"), frame
        entry.remaining -= 1
        self._sessions.move_to_end(frame.session)
        return OpenedFrame(entry, frame.seq, payload)
