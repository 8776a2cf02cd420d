"""Inputs to the core: facts, named in the past tense.

Remote events come from peers and may be hostile; result events report how an effect ended;
commands come from the operator. Time is not a field: it arrives beside every event as ``Now``.
``reply_to`` is an opaque token the shell maps back to the request waiting for an answer.
"""

from __future__ import annotations

import msgspec

from hypha_sm.core.resources import Amounts
from hypha_sm.core.trace import Now as Now
from hypha_sm.roles.worker.core.policy import ExecutorRef


class _Event(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class AdvertisementReceived(_Event, tag="advertisement_received", frozen=True):
    """A scheduler advertised a job on ``hypha/worker``."""

    request_id: str
    scheduler: str
    reply_address: str
    resources: Amounts
    executors: tuple[ExecutorRef, ...]
    bid: float
    #: Wall-clock time after which the scheduler no longer listens for offers.
    expires_wall: float
    #: Seconds the scheduler asks an offer to stay open (0: the worker's ``offer_timeout``).
    offer_lifetime: float = 0.0


class RenewRequested(_Event, tag="renew_requested", frozen=True):
    """A peer asked to renew (or, the first time, accept) a lease."""

    lease_id: str
    peer: str
    reply_to: int


class DispatchRequested(_Event, tag="dispatch_requested", frozen=True):
    """A peer asked to run a job under a lease it holds."""

    job_id: str
    lease_id: str
    peer: str
    executor: ExecutorRef
    #: The job spec, passed through to the executor untouched (JSON text).
    spec: str
    reply_to: int


class OfferDelivered(_Event, tag="offer_delivered", frozen=True):
    """The scheduler acknowledged an offer."""

    lease_id: str


class OfferFailed(_Event, tag="offer_failed", frozen=True):
    """An offer could not be delivered."""

    lease_id: str
    reason: str


class JobStarted(_Event, tag="job_started", frozen=True):
    """The executor started the job."""

    job_id: str


class JobStartFailed(_Event, tag="job_start_failed", frozen=True):
    """The executor could not start the job; nothing of it is left running."""

    job_id: str
    reason: str


class JobExited(_Event, tag="job_exited", frozen=True):
    """The job ended and every process of it is gone. Negative codes are signals."""

    job_id: str
    exit_code: int


class StatusDelivered(_Event, tag="status_delivered", frozen=True):
    """The scheduler acknowledged a job status report (``status`` says which one)."""

    job_id: str
    status: str


class StatusFailed(_Event, tag="status_failed", frozen=True):
    """A job status report could not be delivered."""

    job_id: str
    status: str
    reason: str


class StorageLow(_Event, tag="storage_low", frozen=True):
    """The node's disk monitor: the work dir's file system is full (after freeing what it could).

    ``free_bytes`` is what is left; ``detail`` says how it was found (a failed write, a check).
    """

    free_bytes: int
    detail: str = ""


class StorageRecovered(_Event, tag="storage_recovered", frozen=True):
    """The node's disk monitor: the work dir's file system has room again."""

    free_bytes: int


class JobOverLimit(_Event, tag="job_over_limit", frozen=True):
    """The node's monitor found a running job over a limit it enforces; the job must stop.

    ``reason`` is ``storage_exceeded`` (its work dir is over its lease's storage) or
    ``disk_full`` (the file system is full and this job uses the most of it).
    """

    job_id: str
    reason: str
    detail: str = ""


class ShutdownRequested(_Event, tag="shutdown_requested", frozen=True):
    """The operator asked the node to stop: take no new work, cancel everything."""


class Tick(_Event, tag="tick", frozen=True):
    """Time passed. Deadlines due at ``now`` fire (they also fire before any other input)."""


Event = (
    AdvertisementReceived
    | RenewRequested
    | DispatchRequested
    | OfferDelivered
    | OfferFailed
    | JobStarted
    | JobStartFailed
    | JobExited
    | StatusDelivered
    | StatusFailed
    | StorageLow
    | StorageRecovered
    | JobOverLimit
    | ShutdownRequested
    | Tick
)
