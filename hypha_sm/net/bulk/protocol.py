"""The bulk protocol: constants, errors, results, framing, offers and verdicts (see the package doc)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import blake3
import trio

from hypha_sm.net.errors import NetworkError
from hypha_sm.wire.envelope import MSG_ID_BYTES, seal
from hypha_sm.wire.identity import Identity, PeerId
from hypha_sm.wire.messages import TransferAnswer, TransferOffer, TransferTrailer

MAGIC = b"HSMBULK1"
MiB = 1 << 20
#: Bytes per chunk the sender uses by default.
DEFAULT_CHUNK = 1 * MiB
#: Largest chunk in the protocol; a receiver holds at most ``depth`` x this per transfer.
MAX_CHUNK = 4 * MiB
#: Chunk buffers per side and transfer: file I/O and hashing overlap with the network.
DEFAULT_DEPTH = 4
#: Largest file a server accepts unless configured otherwise.
DEFAULT_MAX_SIZE = 64 << 30
MAX_FRAME = 64 * 1024

U32 = struct.Struct(">I")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
_TRANSFER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_MISMATCH = re.compile(r"(size|sha256|blake3)-mismatch: expected=(\S+) actual=(\S+)")

#: The digests an offer may name, each as 64 hex digits. BLAKE3 is what senders compute
#: (2.4x SHA-256's speed on one core here, docs/network-bulk.md); SHA-256 is for files whose
#: digest is already published that way (a dataset manifest names each slice's SHA-256).
DigestName = Literal["sha256", "blake3"]
DIGESTS: tuple[DigestName, ...] = ("sha256", "blake3")


class Hasher(Protocol):
    def update(self, data: memoryview | bytes, /) -> object: ...
    def hexdigest(self) -> str: ...


def new_hasher(name: DigestName) -> Hasher:
    """A fresh hasher for ``name``; both release the GIL for large buffers."""
    return hashlib.sha256() if name == "sha256" else blake3.blake3()


def offered_digests(offer: TransferOffer) -> dict[DigestName, str]:
    """The digests ``offer`` names, the receiver checks every one (empty with a trailer)."""
    named = {"sha256": offer.sha256, "blake3": offer.blake3}
    return {name: named[name] for name in DIGESTS if named[name]}


Clock = Callable[[], float]
#: ``authorize(sender, offer)`` returns None to accept, or a short reason to refuse.
Authorize = Callable[[PeerId, TransferOffer], str | None]


def wall_clock() -> float:
    """Seconds since the epoch, for envelope timestamps."""
    return time.time()


# -- errors ------------------------------------------------------------------------------------


class BulkError(NetworkError):
    """A bulk transfer failed; the subclass says how. ``transfer_id`` is set when known."""

    def __init__(self, message: str, *, transfer_id: str = "") -> None:
        super().__init__(message)
        self.transfer_id = transfer_id


class TransferRefused(BulkError):
    """The receiver declined the transfer.

    Before any byte was sent (too large, unauthorized, …), or at the end with code ``exists``
    (a file of that name appeared meanwhile).
    """

    def __init__(self, reason: str, *, transfer_id: str = "") -> None:
        super().__init__(
            f"transfer {transfer_id or '?'} refused: {reason}", transfer_id=transfer_id
        )
        self.reason = reason

    @property
    def code(self) -> str:
        """The reason's code: ``too-large``, ``unauthorized``, ``exists``, ``busy``, …."""
        return self.reason.split(":", 1)[0]


class TransferMismatch(BulkError):
    """The bytes do not match the signed offer: ``field`` is ``"size"`` or the digest's name."""

    def __init__(
        self,
        field: Literal["size", "sha256", "blake3"],
        expected: int | str,
        actual: int | str,
        *,
        transfer_id: str = "",
    ) -> None:
        unit = " bytes" if field == "size" else ""
        super().__init__(
            f"transfer {transfer_id or '?'}: {field} mismatch: expected {expected}{unit}, "
            f"got {actual}{unit}; the partial file was removed",
            transfer_id=transfer_id,
        )
        self.field = field
        self.expected = expected
        self.actual = actual


class TransferAborted(BulkError):
    """The transfer stopped before completing: connection lost, cancelled, timed out, I/O error."""


class PeerAuthError(BulkError):
    """The peer was not authenticated: bad or foreign envelope, wrong signer, or TLS refused."""


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentFile:
    """A transfer the receiver verified and stored."""

    transfer_id: str
    receiver: PeerId
    size: int
    sha256: str
    blake3: str


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """A verified file in the receiving directory, and the signed offer it was bound to.

    ``blake3`` is the digest the file was checked against (from the offer or its trailer), ""
    if the offer named only a SHA-256.
    """

    path: Path
    sender: PeerId
    offer: TransferOffer
    blake3: str = ""


# -- framing -----------------------------------------------------------------------------------


async def read_exact(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        more = await stream.receive_some(n - len(data))
        if not more:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes")
        data += more
    return bytes(data)


def frame(data: bytes) -> bytes:
    return U32.pack(len(data)) + data


async def read_frame(stream: trio.abc.ReceiveStream) -> bytes:
    (n,) = U32.unpack(await read_exact(stream, 4))
    if n > MAX_FRAME:
        raise EOFError(f"control frame of {n} bytes (limit {MAX_FRAME})")
    return await read_exact(stream, n)


def seal_message(
    identity: Identity, message: TransferOffer | TransferAnswer | TransferTrailer, clock: Clock
) -> bytes:
    """Sign ``message`` for the peer: now, with a fresh envelope id."""
    return seal(identity, message, clock(), os.urandom(MSG_ID_BYTES))


def ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def close_quietly(stream: trio.abc.AsyncResource) -> None:
    """Close gracefully within a second (TLS sends close_notify), forcefully after that."""
    with trio.move_on_after(1.0):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()
        return
    await trio.aclose_forcefully(stream)


def check_offer(offer: TransferOffer) -> str | None:
    """Why an offer is malformed (a refusal reason), or None if its fields are well formed."""
    if not _TRANSFER_ID.fullmatch(offer.transfer_id):
        return "bad-offer: the transfer id must be 1-64 of [A-Za-z0-9_-]"
    if not _NAME.fullmatch(offer.name) or offer.name.endswith(".part"):
        return f"bad-name: {offer.name[:80]!r} is not a plain file name"
    digests = offered_digests(offer)
    if offer.trailer:
        if offer.trailer != "blake3":
            return f"bad-offer: unknown trailer digest {offer.trailer[:16]!r} (blake3 only)"
        if digests:
            return "bad-offer: an offer with a trailer names no digest itself"
    elif not digests:
        return "bad-offer: the offer names no digest (sha256 or blake3)"
    for name, value in digests.items():
        if not HEX_DIGEST.fullmatch(value):
            return f"bad-offer: {name} must be 64 lowercase hex digits"
    if offer.size < 0:
        return "bad-offer: negative size"
    return None


# -- verdicts (carried in TransferAnswer.reason) ------------------------------------------------


def verdict_reason(error: BulkError) -> str:
    if isinstance(error, TransferMismatch):
        return f"{error.field}-mismatch: expected={error.expected} actual={error.actual}"
    if isinstance(error, TransferRefused):
        return error.reason
    return f"aborted: {error}"


def error_from_verdict(reason: str, offer: TransferOffer) -> BulkError:
    tid = offer.transfer_id
    match = _MISMATCH.fullmatch(reason)
    if match and match.group(1) == "size" and match.group(3).isdigit():
        return TransferMismatch("size", offer.size, int(match.group(3)), transfer_id=tid)
    if match and match.group(1) in DIGESTS:
        field: DigestName = "sha256" if match.group(1) == "sha256" else "blake3"
        expected = offered_digests(offer).get(field, "")
        return TransferMismatch(field, expected, match.group(3), transfer_id=tid)
    if reason.startswith("aborted: "):
        return TransferAborted(f"the receiver aborted: {reason[9:]}", transfer_id=tid)
    return TransferRefused(reason, transfer_id=tid)
