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

#: Field limits (specs/protocol.md §4, "Limits"): every string or collection a peer can send
#: is bounded, so what a stranger makes a node keep or log is bounded too.
MAX_ID = 128
MAX_PEER = 64  # a base58 Ed25519 peer id is 52 characters
MAX_ADDRESS = 256
MAX_NAME = 128
MAX_REASON = 256
MAX_DETAIL = 1024
#: A job spec (JSON text). Larger specs reach the job as a file, never the environment.
MAX_SPEC = 512 * 1024
MAX_EXECUTORS = 8
MAX_ADDRESSES = 16
MAX_METRICS = 256
MAX_RECORDS = 64
MAX_RECORD_BYTES = 8192  # a peer record with 16 addresses of 256 characters fits
MAX_HASH = 80  # "sha256:" and 64 hex digits
MAX_GRANT = 1024  # a sealed SliceGrant is about 300 bytes

#: Request, lease and job ids: the node keeps them in memory, so their size is bounded.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]
PeerText = Annotated[str, msgspec.Meta(max_length=MAX_PEER)]
Address = Annotated[str, msgspec.Meta(max_length=MAX_ADDRESS)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON)]
Detail = Annotated[str, msgspec.Meta(max_length=MAX_DETAIL)]
Spec = Annotated[str, msgspec.Meta(max_length=MAX_SPEC)]
MetricName = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
Digest = Annotated[str, msgspec.Meta(max_length=MAX_HASH)]
TransferId = Annotated[str, msgspec.Meta(max_length=MAX_ID)]  # empty when unknown


def clip(text: str, limit: int = MAX_REASON) -> str:
    """``text`` cut to ``limit`` characters (ending in an ellipsis when cut), to fit a field."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


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

    cls: Name = msgspec.field(name="class")
    name: Name


# -- advertisement (pub/sub, topic hypha/worker) -------------------------------------------


class Advertisement(_Msg, tag="advertisement", frozen=True):
    """A scheduler looks for workers. Offers go to ``reply_address``."""

    request_id: Id
    scheduler: PeerText
    reply_address: Address
    resources: Resources
    executors: Annotated[tuple[Executor, ...], msgspec.Meta(max_length=MAX_EXECUTORS)]
    bid: float
    expires: float
    #: Seconds the scheduler needs to accept an offer (0: the worker's default); a worker
    #: grants at most its own maximum and says in the offer's ``expires`` what it granted.
    offer_lifetime: float = 0.0


# -- worker offer ----------------------------------------------------------------------------


class WorkerOffer(_Msg, tag="worker_offer", frozen=True):
    """A worker offers a temporary lease for an advertisement."""

    lease_id: Id
    request_id: Id
    price: float
    resources: Resources
    expires: float
    worker_address: Address


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
    """Renewal refused, with a reason (``unknown_lease``, ``not_owner``, ``lease_ending``, ...)."""

    lease_id: Id
    reason: Reason


# -- dispatch job ----------------------------------------------------------------------------


class DispatchJob(_Msg, tag="dispatch_job", frozen=True):
    """Run a job under a lease the sender holds. ``spec`` is the job spec as JSON text."""

    job_id: Id
    lease_id: Id
    executor: Executor
    spec: Spec


class JobDispatched(_Msg, tag="job_dispatched", frozen=True):
    """The job started; its lease runs until ``expires``."""

    job_id: Id
    lease_id: Id
    expires: float


class DispatchFailed(_Msg, tag="dispatch_failed", frozen=True, omit_defaults=True):
    """Dispatch refused or the job could not start: a reason code and, if any, a detail."""

    job_id: Id
    reason: Reason
    detail: Detail = ""


# -- job status ------------------------------------------------------------------------------


class JobStatus(_Msg, tag="job_status", frozen=True):
    """How a job stands, sent to the scheduler that dispatched it."""

    job_id: Id
    status: Literal["running", "finished", "failed", "cancelled"]
    exit_code: int | None = None
    reason: Detail = ""


class StatusAck(_Msg, tag="status_ack", frozen=True):
    """The scheduler received a job status."""

    job_id: Id


# -- progress --------------------------------------------------------------------------------


class BatchStatus(msgspec.Struct, frozen=True, tag="status", omit_defaults=True):
    """After an optimizer step: the batch size used.

    ``weights_sha256`` (ours; the original has none) is sent with a worker's first status: the
    digest of its round-0 weights, which the scheduler compares across workers.
    """

    batch_size: int
    weights_sha256: Digest = ""


class RoundMetrics(msgspec.Struct, frozen=True, tag="metrics"):
    """Once per outer round: named metrics."""

    round: int
    metrics: Annotated[dict[MetricName, float], msgspec.Meta(max_length=MAX_METRICS)]


class UpdateStarted(msgspec.Struct, frozen=True, tag="update"):
    """The worker starts sending its update."""


class UpdateApplied(msgspec.Struct, frozen=True, tag="updated"):
    """The parameter server has pushed the aggregated update."""


class UpdateReceived(msgspec.Struct, frozen=True, tag="update-received", omit_defaults=True):
    """The worker received and merged the aggregated update.

    ``weights_sha256`` (ours): the digest of its new global weights, equal on every worker.
    """

    weights_sha256: Digest = ""


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


class DataSliceRequest(_Msg, tag="data_slice_request", frozen=True, omit_defaults=True):
    """Ask the scheduler which data node serves the next slice of a dataset.

    ``job_id`` names the job the slice is for (the original's request has only the dataset;
    this scheduler hands slices only to the workers of its running jobs).
    """

    dataset: Name
    job_id: Annotated[str, msgspec.Meta(max_length=MAX_ID)] = ""


class DataSliceAnswer(_Msg, tag="data_slice_answer", frozen=True, omit_defaults=True):
    """Where to fetch the slice, or why not.

    ``not_found``: ask again after ``retry_after``; ``error``: do not. ``grant`` is a ``SliceGrant`` sealed by the scheduler: the data node serves the slice to
    the worker it names. ``alternates`` are other data nodes serving the same dataset.
    """

    dataset: Name
    outcome: Literal["found", "not_found", "error"]
    provider: PeerText = ""
    address: Address = ""
    index: Annotated[int, msgspec.Meta(ge=0)] = 0
    reason: Reason = ""
    grant: Annotated[bytes, msgspec.Meta(max_length=MAX_GRANT)] = b""
    manifest_hash: Annotated[str, msgspec.Meta(max_length=MAX_HASH)] = ""
    alternates: Annotated[tuple[PeerText, ...], msgspec.Meta(max_length=MAX_ADDRESSES)] = ()
    retry_after: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0


class SliceGrant(_Msg, tag="slice_grant", frozen=True):
    """The scheduler lets ``worker`` fetch slice ``index`` of ``dataset`` until ``expires``."""

    dataset: Name
    index: Annotated[int, msgspec.Meta(ge=0)]
    manifest_hash: Annotated[str, msgspec.Meta(max_length=MAX_HASH)]
    worker: PeerText
    expires: float


class SliceFetch(_Msg, tag="slice_fetch", frozen=True, omit_defaults=True):
    """A worker asks a data node for the slice its ``grant`` names.

    With ``manifest``, for that dataset's manifest instead (the worker checks every slice
    against it); the grant still has to hold. The data node sends it over the bulk channel to ``bulk_address`` as transfer
    ``transfer_id`` (which the worker expects from this data node), then answers.
    """

    grant: Annotated[bytes, msgspec.Meta(max_length=MAX_GRANT)]
    transfer_id: Id
    bulk_address: Address
    manifest: bool = False


class SliceServed(_Msg, tag="slice_served", frozen=True):
    """The slice arrived and the worker's bulk server verified it."""

    transfer_id: Id
    size: Annotated[int, msgspec.Meta(ge=0)]
    sha256: Annotated[str, msgspec.Meta(max_length=64)]


class SliceDoneReport(_Msg, tag="slice_done", frozen=True):
    """A worker used slice ``index`` of ``dataset`` for job ``job_id``.

    The scheduler's "slice done", the RFC's promise the original never built.
    """

    job_id: Id
    dataset: Name
    index: Annotated[int, msgspec.Meta(ge=0)]


# -- health ----------------------------------------------------------------------------------


class Health(_Msg, tag="health", frozen=True):
    """Is the node up?"""


class HealthReply(_Msg, tag="health_reply", frozen=True):
    """Healthy only while listening and connected to a gateway."""

    healthy: bool


# -- gateway: peer directory and dataset records -----------------------------------------------


class PeerRecord(_Msg, tag="peer_record", frozen=True):
    """A node announces where it listens, until ``expires``. Signed by the node itself."""

    peer: PeerText
    addresses: Annotated[tuple[Address, ...], msgspec.Meta(max_length=MAX_ADDRESSES)]
    expires: float


class DatasetRecord(_Msg, tag="dataset_record", frozen=True, omit_defaults=True):
    """A data node announces that it provides a dataset, until ``expires``.

    ``slices`` and ``manifest_hash`` (specs/dataset.md) say which dataset exactly: schedulers
    hand out indexes into that manifest's slices.
    """

    dataset: Name
    provider: PeerText
    expires: float
    slices: Annotated[int, msgspec.Meta(ge=0)] = 0
    manifest_hash: Annotated[str, msgspec.Meta(max_length=MAX_HASH)] = ""


class Lookup(_Msg, tag="lookup", frozen=True):
    """Ask a gateway for a peer's addresses or a dataset's provider."""

    peer: PeerText = ""
    dataset: Name = ""


class LookupReply(_Msg, tag="lookup_reply", frozen=True):
    """The signed records a gateway holds for the lookup (envelopes, still signed by their authors)."""

    records: Annotated[tuple[bytes, ...], msgspec.Meta(max_length=MAX_RECORDS)]


class GatewayInfo(_Msg, tag="gateway_info", frozen=True):
    """Ask a gateway where schedulers publish to it and where workers subscribe."""


class GatewayInfoReply(_Msg, tag="gateway_info_reply", frozen=True):
    """The gateway's ingest and publish addresses, as it bound them."""

    ingest: Address
    publish: Address


class Ack(_Msg, tag="ack", frozen=True):
    """A record was stored."""


class Refused(_Msg, tag="refused", frozen=True):
    """A request was refused before it reached its handler (a counted reason)."""

    reason: Reason


# -- sessions (specs/protocol.md §5.1) --------------------------------------------------------

#: An X25519 public key, and a session id.
EphemeralKey = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
SessionId = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
MessageId = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]


class SessionOpen(_Msg, tag="session_open", frozen=True):
    """Open a session with ``peer`` (the server): the client's ephemeral X25519 key."""

    ephemeral: EphemeralKey
    peer: PeerText


class SessionAccept(_Msg, tag="session_accept", frozen=True):
    """A session with ``peer`` (the client), answering the ``SessionOpen`` with id ``opened``.

    It lasts ``lifetime`` seconds or ``max_messages`` requests, whichever ends first.
    """

    ephemeral: EphemeralKey
    session: SessionId
    opened: MessageId
    peer: PeerText
    lifetime: float
    max_messages: int


# -- bulk transfers ----------------------------------------------------------------------------


class TransferOffer(_Msg, tag="transfer_offer", frozen=True):
    """A sender proposes a file: its name, size and digests (at least one), and its purpose.

    The receiver checks every digest named (64 hex digits each; "" = not named). An offer
    with ``trailer = "blake3"`` names no digest: the file is still being written as it is
    sent, and its BLAKE3 follows the bytes in a signed ``TransferTrailer``.
    """

    transfer_id: TransferId
    name: Annotated[str, msgspec.Meta(max_length=255)]
    size: int
    sha256: Annotated[str, msgspec.Meta(max_length=64)] = ""
    purpose: Name = ""
    blake3: Annotated[str, msgspec.Meta(max_length=64)] = ""
    trailer: Annotated[str, msgspec.Meta(max_length=16)] = ""


class TransferTrailer(_Msg, tag="transfer_trailer", frozen=True):
    """After the bytes of a ``trailer`` offer, on the same stream: the file's BLAKE3."""

    transfer_id: TransferId
    blake3: Annotated[str, msgspec.Meta(max_length=64)]


class TransferAnswer(_Msg, tag="transfer_answer", frozen=True):
    """Accept (with where to send) or refuse a transfer."""

    transfer_id: TransferId
    accepted: bool
    reason: Reason = ""
    address: Address = ""


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
    | SliceGrant
    | SliceDoneReport
    | SliceFetch
    | SliceServed
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
    | SessionOpen
    | SessionAccept
    | TransferOffer
    | TransferAnswer
    | TransferTrailer
)
