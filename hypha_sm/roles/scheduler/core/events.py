"""The scheduler core's inputs: remote requests, effect results and commands (msgspec structs).

Everything a peer sent has been verified by the shell (signature, sender, bounds) and turned
into plain fields; the core decides what it means.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from hypha_sm.core.resources import Amounts
from hypha_sm.core.trace import Now

__all__ = ["Now"]


class _Event(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class Begin(_Event, tag="begin", frozen=True):
    """The run starts: find the gateways and advertise."""


class StopRequested(_Event, tag="stop_requested", frozen=True):
    """The operator stops the scheduler (SIGINT/SIGTERM): every lease is let go."""


class Tick(_Event, tag="tick", frozen=True):
    """A deadline is due (the loop woke for it)."""


class GatewaysLocated(_Event, tag="gateways_located", frozen=True):
    """Where to publish: the ingest addresses of the gateways that answered."""

    ingests: tuple[str, ...]


class GatewaysUnreachable(_Event, tag="gateways_unreachable", frozen=True):
    """No gateway answered."""

    reason: str


class Published(_Event, tag="published", frozen=True):
    """The advertisement with this request id went out."""

    request_id: str


class PublishFailed(_Event, tag="publish_failed", frozen=True):
    """The advertisement could not be published (no gateway connection yet)."""

    request_id: str
    reason: str


class OfferReceived(_Event, tag="offer_received", frozen=True):
    """A worker (``peer``, verified) offers a temporary lease for one of our advertisements."""

    reply_to: int
    peer: str
    request_id: str
    lease_id: str
    worker_address: str
    price: float
    resources: Amounts


class LeaseAccepted(_Event, tag="lease_accepted", frozen=True):
    """Our first renewal was answered: the lease is ours until ``expires_wall``."""

    lease_id: str
    expires_wall: float


class AcceptFailed(_Event, tag="accept_failed", frozen=True):
    """The acceptance was refused by the worker or never answered."""

    lease_id: str
    reason: str


class Renewed(_Event, tag="renewed", frozen=True):
    """A renewal was answered: the lease now expires at ``expires_wall``."""

    lease_id: str
    expires_wall: float


class RenewFailed(_Event, tag="renew_failed", frozen=True):
    """A renewal did not reach the worker (time-out, connection)."""

    lease_id: str
    reason: str


#: How a ``RenewRefused`` reason starts; the worker's own reason follows.
RENEWAL_REFUSED = "renewal refused: "


class RenewRefused(_Event, tag="renew_refused", frozen=True):
    """The worker refused a renewal: the lease is gone on its side.

    ``reason`` is ``RENEWAL_REFUSED`` and the worker's reason (``job_ended``, ...).
    """

    lease_id: str
    reason: str


class Dispatched(_Event, tag="dispatched", frozen=True):
    """The worker took the job."""

    lease_id: str


class DispatchFailed(_Event, tag="dispatch_failed", frozen=True):
    """The worker refused the job, or the request failed."""

    lease_id: str
    reason: str


class StatusReceived(_Event, tag="status_received", frozen=True):
    """A worker (``peer``, verified) reports how a job stands."""

    reply_to: int
    peer: str
    job_id: str
    status: Literal["running", "finished", "failed", "cancelled"]
    exit_code: int | None = None
    reason: str = ""


class ProgressReceived(_Event, tag="progress_received", frozen=True, omit_defaults=True):
    """A job reports training progress: its kind (the wire tag) and one human line.

    ``batch_size`` comes with a status; ``weights_sha256`` with a first status (round-0
    weights) or an update-received (the new global weights).
    """

    reply_to: int
    peer: str
    job_id: str
    kind: str
    text: str
    batch_size: int = 0
    weights_sha256: str = ""


class DatasetFound(_Event, tag="dataset_found", frozen=True):
    """The plan's dataset: how many slices it has, its manifest hash, who serves it."""

    name: str
    slices: int
    manifest_hash: str
    providers: tuple[str, ...]


class DatasetMissing(_Event, tag="dataset_missing", frozen=True):
    """No gateway knows the plan's dataset (yet)."""

    name: str
    reason: str


class SliceRequested(_Event, tag="slice_requested", frozen=True):
    """A worker (``peer``, verified) of job ``job_id`` asks for a slice of ``dataset``."""

    reply_to: int
    peer: str
    job_id: str
    dataset: str


class SliceDone(_Event, tag="slice_done", frozen=True):
    """A worker says it used slice ``index`` of ``dataset``."""

    reply_to: int
    peer: str
    job_id: str
    dataset: str
    index: int


Event = (
    Begin
    | StopRequested
    | Tick
    | GatewaysLocated
    | GatewaysUnreachable
    | Published
    | PublishFailed
    | OfferReceived
    | LeaseAccepted
    | AcceptFailed
    | Renewed
    | RenewFailed
    | RenewRefused
    | Dispatched
    | DispatchFailed
    | StatusReceived
    | ProgressReceived
    | DatasetFound
    | DatasetMissing
    | SliceRequested
    | SliceDone
)
