"""What the bridge is given and gives: files fetched and received, the send hook, limits, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from starlette.responses import JSONResponse

from hypha_sm.wire.messages import (
    Progress,
    ProgressReply,
)

MiB = 1024 * 1024


# -- injected interfaces ---------------------------------------------------------------------


@dataclass(frozen=True)
class FetchedFile:
    """A file the node wrote into the work dir for a fetch (``path`` absolute or relative)."""

    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class ReceivedFile:
    """A file a peer pushed, already written inside the receive dir.

    ``sha256`` and ``blake3`` are the digests the sender's offer named and the node checked
    ("" = not named; senders name BLAKE3 unless a manifest fixed the SHA-256).
    """

    path: Path
    size: int
    from_peer: str
    sha256: str
    blake3: str = ""


FetchPeers = Callable[[Mapping[str, Any], Path], Awaitable[Sequence[FetchedFile]]]
"""``fetch_peers(request_body, artifacts_dir)``: fetch from peers into the dir."""
FetchSlice = Callable[[str, Path, str | None, int | None], Awaitable[Sequence[FetchedFile]]]
"""``fetch_slice(dataset, artifacts_dir, scheduler, prefetch)``: the next slice into the dir.

``scheduler`` is the peer the job named (the original's form), or None for the job's own;
``prefetch`` how many slices to keep fetched ahead (None: the node's default)."""


class SendFile(Protocol):
    """``send(path, peers, purpose, name=...)`` -> outcome per peer, once the transfer ended.

    ``path`` is what to read (the bridge gives ``/proc/self/fd/N`` of the file it checked);
    ``name`` is the file's name as the job knows it.
    """

    def __call__(
        self, path: Path, peers: Sequence[str], purpose: str, *, name: str
    ) -> Awaitable[Mapping[str, str]]: ...


ReceiveFiles = Callable[[Path, frozenset[str]], AsyncIterator[ReceivedFile]]
"""``receive(dir, peers)``: the files these peers (any if empty) push into ``dir``, as they arrive."""
SendProgress = Callable[[Progress], Awaitable[ProgressReply]]
"""``send_progress(progress)``: one round trip to the scheduler that dispatched the job."""


@dataclass(frozen=True)
class BridgeLimits:
    """Bounds on what one request may cost the node."""

    max_body: int = 1 * MiB  # request bodies, enforced while reading
    max_fetch_bytes: int = 16 * 1024 * MiB  # one fetched artifact
    fetch_timeout: float = 300.0  # http(s) fetches: connect/read timeout, seconds
    keepalive: float = 5.0  # SSE keep-alive comment interval, seconds
    max_redirects: int = 5


class BridgeError(Exception):
    """A request the bridge answers with an error status and JSON body."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    """The JSON error body every route uses."""
    return JSONResponse({"code": code, "detail": detail}, status_code=status)
