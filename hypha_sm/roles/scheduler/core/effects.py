"""What the scheduler core asks its shell to do (msgspec structs, recorded in the event log)."""

from __future__ import annotations

from typing import Literal

import msgspec


class _Effect(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class LocateGateways(_Effect, tag="locate_gateways", frozen=True):
    """Ask every gateway where to publish; report ``GatewaysLocated`` or ``GatewaysUnreachable``."""


class Publish(_Effect, tag="publish", frozen=True, omit_defaults=True):
    """Publish an advertisement for the workers of ``group`` (``ps``: the parameter server)."""

    request_id: str
    expires_wall: float
    group: str = "train"


class ReplyOffer(_Effect, tag="reply_offer", frozen=True):
    """Answer an offer: acknowledged if ``reason`` is empty, else refused with it."""

    reply_to: int
    lease_id: str
    reason: str = ""


class AcceptLease(_Effect, tag="accept_lease", frozen=True):
    """Accept an offered lease by renewing it; report ``LeaseAccepted`` or ``AcceptFailed``."""

    lease_id: str
    worker: str
    address: str


class RenewLease(_Effect, tag="renew_lease", frozen=True):
    """Renew a held lease; report ``Renewed``, ``RenewFailed`` or ``RenewRefused``."""

    lease_id: str
    worker: str
    address: str


class DispatchJob(_Effect, tag="dispatch_job", frozen=True, omit_defaults=True):
    """Send the job to a worker under its lease; report ``Dispatched`` or ``DispatchFailed``.

    ``index`` is the worker's place in ``workers`` (the job's workers of its group, in order).
    A DiLoCo job has two groups: ``train`` (with its ``batch_size``) and ``ps``, the
    ``parameter_server`` every training worker sends to.
    """

    lease_id: str
    job_id: str
    worker: str
    address: str
    index: int
    workers: tuple[str, ...]
    group: str = "train"
    parameter_server: str = ""
    batch_size: int = 0


class ReplyStatus(_Effect, tag="reply_status", frozen=True):
    """Answer a job status: acknowledged if ``reason`` is empty, else refused with it."""

    reply_to: int
    job_id: str
    reason: str = ""


class ReplyProgress(_Effect, tag="reply_progress", frozen=True, omit_defaults=True):
    """Answer a progress report: ``reply`` (with ``counter`` for schedule_update), or refuse."""

    reply_to: int
    job_id: str
    reply: Literal["ok", "continue", "schedule_update", "done", "error", ""] = ""
    reason: str = ""
    counter: int = 0


class Notice(_Effect, tag="notice", frozen=True):
    """One line for the operator's log."""

    level: Literal["info", "warning", "error"]
    text: str


class Finished(_Effect, tag="finished", frozen=True):
    """The run is over: ``ok`` if every placement finished with exit 0; else why not."""

    ok: bool
    reason: str = ""


class LocateDataset(_Effect, tag="locate_dataset", frozen=True):
    """Look the dataset up at the gateways; report ``DatasetFound`` or ``DatasetMissing``."""

    name: str


class ReplySlice(_Effect, tag="reply_slice", frozen=True):
    """Hand slice ``index`` to the worker: its providers (try the first first), until when.

    The shell adds a grant signed by the scheduler for that slice and peer.
    """

    reply_to: int
    peer: str
    dataset: str
    index: int
    manifest_hash: str
    providers: tuple[str, ...]
    expires_wall: float


class ReplyNoSlice(_Effect, tag="reply_no_slice", frozen=True):
    """No slice for this request: why, and how long to wait before asking again (0: do not)."""

    reply_to: int
    reason: str
    retry_after: float = 0.0


class ReplySliceDone(_Effect, tag="reply_slice_done", frozen=True):
    """Answer a "slice done": acknowledged if ``reason`` is empty, else refused with it."""

    reply_to: int
    index: int
    reason: str = ""


Effect = (
    LocateGateways
    | Publish
    | ReplyOffer
    | AcceptLease
    | RenewLease
    | DispatchJob
    | ReplyStatus
    | ReplyProgress
    | Notice
    | Finished
    | LocateDataset
    | ReplySlice
    | ReplyNoSlice
    | ReplySliceDone
)
