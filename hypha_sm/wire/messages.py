"""Every message of the network (specs/protocol.md), as tagged msgspec structs.

Requests and their responses are grouped by protocol pair; the tag (field ``t``) names each
message on the wire. Unknown fields are ignored (a newer peer may add optional fields); an
unknown tag is rejected as ``unknown_message``. Times are POSIX seconds (floats), peer ids are
the base58 text form, resources are in cores and GB.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

TOPIC_WORKER = b"hypha/worker\x00"  # NUL-terminated: NNG subscriptions match by prefix

#: Request, lease and job ids: the node keeps them in memory, so their size is bounded.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class _Msg(msgspec.Struct, frozen=True, tag_field="t"):
    pass


class Resources(msgspec.Struct, frozen=True):
    """Resource amounts: cpu in cores; gpu (VRAM), memory and storage in GB."""

    gpu: float = 0.0
    cpu: float = 0.0
    memory: float = 0.0
    storage: float = 0.0


class Executor(msgspec.Struct, frozen=True):
    """An executor descriptor: job class and executor name."""

    cls: str = msgspec.field(name="class")
    name: str


# -- advertisement (pub/sub, topic hypha/worker) -------------------------------------------


class Advertisement(_Msg, tag="advertisement", frozen=True):
    """A scheduler looks for workers. Offers go to ``reply_address``."""

    request_id: Id
    scheduler: str
    reply_address: str
    resources: Resources
    executors: tuple[Executor, ...]
    bid: float
    expires: float


# -- worker offer ----------------------------------------------------------------------------


class WorkerOffer(_Msg, tag="worker_offer", frozen=True):
    """A worker offers a temporary lease for an advertisement."""

    lease_id: Id
    request_id: Id
    price: float
    resources: Resources
    expires: float
    worker_address: str


class OfferAck(_Msg, tag="offer_ack", frozen=True):
    """The scheduler received the offer (acceptance is its first renewal)."""

    lease_id: Id


# -- renew lease -----------------------------------------------------------------------------


class RenewLease(_Msg, tag="renew_lease", frozen=True):
    """Renew (the first time: accept) a lease."""

    lease_id: Id


class LeaseRenewed(_Msg, tag="lease_renewed", frozen=True):
    """The lease now runs until ``expires``."""

    lease_id: Id
    expires: float


class RenewFailed(_Msg, tag="renew_failed", frozen=True):
    """Renewal refused, with a reason (``unknown_lease``, ``not_owner``, ``lease_ending``)."""

    lease_id: Id
    reason: str


# -- dispatch job ----------------------------------------------------------------------------


class DispatchJob(_Msg, tag="dispatch_job", frozen=True):
    """Run a job under a lease the sender holds. ``spec`` is the job spec as JSON text."""

    job_id: Id
    lease_id: Id
    executor: Executor
    spec: str


class JobDispatched(_Msg, tag="job_dispatched", frozen=True):
    """The job started; its lease runs until ``expires``."""

    job_id: Id
    lease_id: Id
    expires: float


class DispatchFailed(_Msg, tag="dispatch_failed", frozen=True, omit_defaults=True):
    """Dispatch refused or the job could not start: a reason code and, if any, a detail."""

    job_id: Id
    reason: str
    detail: str = ""


# -- job status ------------------------------------------------------------------------------


class JobStatus(_Msg, tag="job_status", frozen=True):
    """How a job stands, sent to the scheduler that dispatched it."""

    job_id: Id
    status: Literal["running", "finished", "failed", "cancelled"]
    exit_code: int | None = None
    reason: str = ""


class StatusAck(_Msg, tag="status_ack", frozen=True):
    """The scheduler received a job status."""

    job_id: Id


# -- progress --------------------------------------------------------------------------------


class BatchStatus(msgspec.Struct, frozen=True, tag="status"):
    """After an optimizer step: the batch size used."""

    batch_size: int


class RoundMetrics(msgspec.Struct, frozen=True, tag="metrics"):
    """Once per outer round: named metrics."""

    round: int
    metrics: dict[str, float]


class UpdateStarted(msgspec.Struct, frozen=True, tag="update"):
    """The worker starts sending its update."""


class UpdateApplied(msgspec.Struct, frozen=True, tag="updated"):
    """The parameter server has pushed the aggregated update."""


class UpdateReceived(msgspec.Struct, frozen=True, tag="update-received"):
    """The worker received and merged the aggregated update."""


ProgressKind = BatchStatus | RoundMetrics | UpdateStarted | UpdateApplied | UpdateReceived


class Progress(_Msg, tag="progress", frozen=True):
    """Training progress of a job (``job_id`` is the training job's id)."""

    job_id: Id
    progress: ProgressKind


class ProgressReply(_Msg, tag="progress_reply", frozen=True):
    """The scheduler's answer: ok, continue, schedule_update (with counter), done or error."""

    reply: Literal["ok", "continue", "schedule_update", "done", "error"]
    counter: int | None = None


# -- data slices -----------------------------------------------------------------------------


class DataSliceRequest(_Msg, tag="data_slice_request", frozen=True):
    """Ask the scheduler which data node serves the next slice of a dataset."""

    dataset: str


class DataSliceAnswer(_Msg, tag="data_slice_answer", frozen=True):
    """Where to fetch the slice, or why not (``not_found``, ``error``)."""

    dataset: str
    outcome: Literal["found", "not_found", "error"]
    provider: str = ""
    address: str = ""
    index: int = 0
    reason: str = ""


# -- health ----------------------------------------------------------------------------------


class Health(_Msg, tag="health", frozen=True):
    """Is the node up?"""


class HealthReply(_Msg, tag="health_reply", frozen=True):
    """Healthy only while listening and connected to a gateway."""

    healthy: bool


# -- gateway: peer directory and dataset records -----------------------------------------------


class PeerRecord(_Msg, tag="peer_record", frozen=True):
    """A node announces where it listens, until ``expires``. Signed by the node itself."""

    peer: str
    addresses: tuple[str, ...]
    expires: float


class DatasetRecord(_Msg, tag="dataset_record", frozen=True):
    """A data node announces that it provides a dataset, until ``expires``."""

    dataset: str
    provider: str
    expires: float


class Lookup(_Msg, tag="lookup", frozen=True):
    """Ask a gateway for a peer's addresses or a dataset's provider."""

    peer: str = ""
    dataset: str = ""


class LookupReply(_Msg, tag="lookup_reply", frozen=True):
    """The signed records a gateway holds for the lookup (envelopes, still signed by their authors)."""

    records: tuple[bytes, ...]


class GatewayInfo(_Msg, tag="gateway_info", frozen=True):
    """Ask a gateway where schedulers publish to it and where workers subscribe."""


class GatewayInfoReply(_Msg, tag="gateway_info_reply", frozen=True):
    """The gateway's ingest and publish addresses, as it bound them."""

    ingest: str
    publish: str


class Ack(_Msg, tag="ack", frozen=True):
    """A record was stored."""


class Refused(_Msg, tag="refused", frozen=True):
    """A request was refused before it reached its handler (a counted reason)."""

    reason: str


# -- bulk transfers ----------------------------------------------------------------------------


class TransferOffer(_Msg, tag="transfer_offer", frozen=True):
    """A sender proposes a file: its name, size and SHA-256, and where to fetch the bytes."""

    transfer_id: str
    name: str
    size: int
    sha256: str
    purpose: str = ""


class TransferAnswer(_Msg, tag="transfer_answer", frozen=True):
    """Accept (with where to send) or refuse a transfer."""

    transfer_id: str
    accepted: bool
    reason: str = ""
    address: str = ""


Message = (
    Advertisement
    | WorkerOffer
    | OfferAck
    | RenewLease
    | LeaseRenewed
    | RenewFailed
    | DispatchJob
    | JobDispatched
    | DispatchFailed
    | JobStatus
    | StatusAck
    | Progress
    | ProgressReply
    | DataSliceRequest
    | DataSliceAnswer
    | Health
    | HealthReply
    | PeerRecord
    | DatasetRecord
    | Lookup
    | LookupReply
    | GatewayInfo
    | GatewayInfoReply
    | Ack
    | Refused
    | TransferOffer
    | TransferAnswer
)
