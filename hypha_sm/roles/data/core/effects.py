"""What the data node core asks its shell to do (msgspec structs, recorded in its event log)."""

from __future__ import annotations

from typing import Literal

import msgspec


class _Effect(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class Announce(_Effect, tag="announce", frozen=True):
    """Store this node's peer record and a record per dataset at every gateway.

    Valid until ``expires_wall``; report ``Announced`` or ``AnnounceFailed``.
    """

    expires_wall: float


class SendSlice(_Effect, tag="send_slice", frozen=True):
    """Send slice ``index`` of ``dataset`` to ``peer``'s bulk server as ``transfer_id``.

    Report ``SliceSent`` or ``SendFailed`` for ``key``.
    """

    key: str
    peer: str
    dataset: str
    index: int
    transfer_id: str
    bulk_address: str


class SendManifest(_Effect, tag="send_manifest", frozen=True):
    """Send ``dataset``'s manifest to ``peer``'s bulk server; report as for a slice."""

    key: str
    peer: str
    dataset: str
    transfer_id: str
    bulk_address: str


class ReplyFetch(_Effect, tag="reply_fetch", frozen=True):
    """Answer a fetch: served (size and SHA-256) if ``reason`` is empty, else refused."""

    reply_to: int
    transfer_id: str
    reason: str = ""
    size: int = 0
    sha256: str = ""


class Notice(_Effect, tag="notice", frozen=True):
    """One line for the operator's log."""

    level: Literal["info", "warning", "error"]
    text: str


class NodeStopped(_Effect, tag="node_stopped", frozen=True):
    """Every fetch ended after a shutdown: the node may exit."""


Effect = Announce | SendSlice | SendManifest | ReplyFetch | Notice | NodeStopped
