"""Outputs of the core: requests to the shell, named as imperatives.

Every effect that can fail or finish later comes back as an event (``OfferDelivered`` /
``OfferFailed``, ``JobStarted`` / ``JobExited``, ``StatusDelivered`` / ``StatusFailed``).
Replies answer the ``reply_to`` token of the request they belong to.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from hypha_sm.core.resources import Amounts
from hypha_sm.roles.worker.core.policy import ExecutorSpec

JobStatus = Literal["running", "finished", "failed", "cancelled"]


class _Effect(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class SendOffer(_Effect, tag="send_offer", frozen=True):
    """Offer a lease to the scheduler that advertised ``request_id``."""

    lease_id: str
    request_id: str
    scheduler: str
    reply_address: str
    price: float
    resources: Amounts
    expires_wall: float


class ReplyRenewed(_Effect, tag="reply_renewed", frozen=True):
    """Answer a renewal: the lease now runs until ``expires_wall``."""

    reply_to: int
    lease_id: str
    expires_wall: float


class ReplyRenewFailed(_Effect, tag="reply_renew_failed", frozen=True):
    """Answer a renewal with a refusal and its reason."""

    reply_to: int
    lease_id: str
    reason: str


class ReplyDispatched(_Effect, tag="reply_dispatched", frozen=True):
    """Answer a dispatch: the job started; the lease runs until ``expires_wall``."""

    reply_to: int
    job_id: str
    lease_id: str
    expires_wall: float


class ReplyDispatchFailed(_Effect, tag="reply_dispatch_failed", frozen=True, omit_defaults=True):
    """Answer a dispatch with a refusal, its reason code and (for start failures) a detail."""

    reply_to: int
    job_id: str
    reason: str
    detail: str = ""  # omitted when empty, so logs without it encode as before


class StartJob(_Effect, tag="start_job", frozen=True):
    """Start a job with this executor; report ``JobStarted`` or ``JobStartFailed``."""

    job_id: str
    lease_id: str
    executor: ExecutorSpec
    spec: str
    work_dir_id: str
    resources: Amounts


class StopJob(_Effect, tag="stop_job", frozen=True):
    """Stop a job's whole process tree; report ``JobExited`` once every process is gone.

    ``force`` skips the grace period (sent when an earlier stop is overdue).
    """

    job_id: str
    force: bool


class SendJobStatus(_Effect, tag="send_job_status", frozen=True):
    """Tell the dispatching scheduler how the job stands. Terminal reports are acknowledged."""

    job_id: str
    scheduler: str
    status: JobStatus
    exit_code: int | None
    reason: str


class Notice(_Effect, tag="notice", frozen=True):
    """Tell the operator something the core decided that is worth a log line (no reply).

    ``kind`` is a stable code (``scheduler_backoff``, ``storage_full``, ...), ``detail`` the
    sentence.
    """

    kind: str
    detail: str


class NodeStopped(_Effect, tag="node_stopped", frozen=True):
    """Nothing is left running; the shell may exit. ``reason`` is drained or timed_out."""

    reason: str


Effect = (
    SendOffer
    | ReplyRenewed
    | ReplyRenewFailed
    | ReplyDispatched
    | ReplyDispatchFailed
    | StartJob
    | StopJob
    | SendJobStatus
    | Notice
    | NodeStopped
)
