"""The worker's records: one per live machine instance, each with its own data.

The base (key, phase, deadline) is ``hypha_sm.core.record.Record``; these add the fields each
of the worker's machines keeps.
"""

from __future__ import annotations

from hypha_sm.core.record import Record
from hypha_sm.core.resources import Amounts, Resources
from hypha_sm.roles.worker.core.policy import ExecutorRef, ExecutorSpec


class NodeRec(Record):
    """The node itself (a singleton)."""

    __slots__ = ("stop_reason",)
    kind = "node"

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.stop_reason = ""


class BatchRec(Record):
    """The advertisement window (a singleton): request ids in arrival order."""

    __slots__ = ("pending",)
    kind = "batch"

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.pending: list[str] = []


class RequestRec(Record):
    """An advertisement held in the window, with what evaluating it decided."""

    __slots__ = (
        "amounts",
        "arrival",
        "bid",
        "executors",
        "expires_mono",
        "offer_lifetime",
        "offer_price",
        "offer_resources",
        "reply_address",
        "requested",
        "scheduler",
        "score",
    )
    kind = "request"

    def __init__(
        self,
        key: str,
        *,
        scheduler: str,
        reply_address: str,
        amounts: Amounts,
        executors: tuple[ExecutorRef, ...],
        bid: float,
        expires_mono: float,
        arrival: int,
        offer_lifetime: float = 0.0,
    ) -> None:
        super().__init__(key)
        self.scheduler = scheduler
        self.reply_address = reply_address
        self.amounts = amounts
        self.executors = executors
        self.bid = bid
        self.expires_mono = expires_mono
        self.arrival = arrival
        self.offer_lifetime = offer_lifetime
        self.requested: Resources | None = None
        self.offer_price = 0.0
        self.offer_resources: Resources | None = None
        self.score = 0.0


class LeaseRec(Record):
    """A lease: its owner, its reservation, and the job it carries, if any."""

    __slots__ = ("end_reason", "job_id", "owner", "price", "request_id", "resources")
    kind = "lease"

    def __init__(
        self, key: str, *, owner: str, request_id: str, resources: Resources, price: float
    ) -> None:
        super().__init__(key)
        self.owner = owner
        self.request_id = request_id
        self.resources = resources
        self.price = price
        self.job_id: str | None = None
        self.end_reason = ""


class JobRec(Record):
    """A job: its lease, its executor, the pending dispatch reply, and how it ended."""

    __slots__ = (
        "executor",
        "exit_code",
        "lease_id",
        "outcome",
        "reason",
        "reply_to",
        "scheduler",
        "spec",
        "started",
    )
    kind = "job"

    def __init__(
        self,
        key: str,
        *,
        lease_id: str,
        scheduler: str,
        executor: ExecutorSpec,
        spec: str,
        reply_to: int,
    ) -> None:
        super().__init__(key)
        self.lease_id = lease_id
        self.scheduler = scheduler
        self.executor = executor
        self.spec = spec
        self.reply_to: int | None = reply_to
        self.started = False
        self.outcome = ""
        self.reason = ""
        self.exit_code: int | None = None
