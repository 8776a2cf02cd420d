"""What the data node's core decides with (carried in its event log's header)."""

from __future__ import annotations

import msgspec


class Served(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One dataset the node serves: its name, slice count and manifest hash (verified at start)."""

    name: str
    slices: int
    manifest_hash: str


class DataPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The datasets served, whose grants count, and the node's limits and timings."""

    datasets: tuple[Served, ...]
    #: Schedulers whose grants are honoured (peer ids); empty: any scheduler's.
    grant_from: tuple[str, ...] = ()
    #: Slices sent at once; a fetch past it is refused (``busy``) and counted.
    max_concurrent: int = 8
    #: How long one slice may take to send.
    send_timeout: float = 300.0
    #: How often the records are renewed at the gateways, and how long each is valid.
    announce_every: float = 60.0
    record_lifetime: float = 180.0
    #: How soon to announce again after no gateway stored the records.
    announce_retry: float = 5.0


def plan_problem(plan: DataPlan) -> str | None:
    """Why a plan read from a log cannot run (None if it can)."""
    if not plan.datasets or any(d.slices < 1 for d in plan.datasets):
        return "no dataset, or one without slices"
    timings = (plan.send_timeout, plan.announce_every, plan.record_lifetime, plan.announce_retry)
    if plan.max_concurrent < 1 or not all(0 < t < float("inf") for t in timings):
        return "max_concurrent and timings must be positive and finite"
    return None
