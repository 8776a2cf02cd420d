"""The data node core's inputs (msgspec structs)."""

from __future__ import annotations

import msgspec


class _Event(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class Tick(_Event, tag="tick", frozen=True):
    """A deadline is due."""


class ShutdownRequested(_Event, tag="shutdown_requested", frozen=True):
    """SIGINT/SIGTERM: finish the fetches in flight, take no new ones."""


class Announced(_Event, tag="announced", frozen=True):
    """At least one gateway stored the records."""


class AnnounceFailed(_Event, tag="announce_failed", frozen=True):
    """No gateway stored the records."""

    reason: str


class FetchRequested(_Event, tag="fetch_requested", frozen=True):
    """A peer asks for a slice with a grant the shell opened.

    ``granter`` is who sealed the grant ("" if its envelope did not verify); the other
    ``grant_`` fields are what it says. The core decides whether it holds.
    """

    reply_to: int
    peer: str
    transfer_id: str
    bulk_address: str
    granter: str
    grant_dataset: str = ""
    grant_index: int = 0
    grant_hash: str = ""
    grant_worker: str = ""
    grant_expires: float = 0.0
    #: The dataset's manifest rather than the slice (the grant still has to hold).
    manifest: bool = False


class SliceSent(_Event, tag="slice_sent", frozen=True):
    """The worker's bulk server verified the slice."""

    key: str
    size: int
    sha256: str


class SendFailed(_Event, tag="send_failed", frozen=True):
    """The transfer failed."""

    key: str
    reason: str


Event = (
    Tick | ShutdownRequested | Announced | AnnounceFailed | FetchRequested | SliceSent | SendFailed
)
