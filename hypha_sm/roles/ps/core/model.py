"""The parameter server core's plan, inputs and effects (msgspec structs)."""

from __future__ import annotations

from typing import Literal

import msgspec


class PSPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One DiLoCo job as its parameter server runs it (from the job's ``config``)."""

    #: The training workers whose pseudo-gradients count, in the job's order.
    workers: tuple[str, ...]
    learning_rate: float = 0.7
    momentum: float = 0.9
    #: Files needed to close a round at its deadline (0: every live worker's).
    quorum: int = 0
    #: Seconds after a round's first file that the others may take.
    round_timeout: float = 300.0
    #: ``samples``: each file weighs the samples its worker trained on; ``equal``: 1 each.
    weighting: Literal["samples", "equal"] = "samples"
    #: The original's running pairwise average (golden tests only; a true mean only for 2).
    compat_pairwise: bool = False


def plan_problem(plan: PSPlan) -> str | None:
    """Why a plan cannot run (None if it can)."""
    if not plan.workers:
        return "no training workers"
    if not 0 <= plan.quorum <= len(plan.workers):
        return f"quorum {plan.quorum} is not within 0..{len(plan.workers)}"
    if not plan.round_timeout > 0:
        return "round_timeout must be positive"
    return None


class _Event(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class Tick(_Event, tag="tick", frozen=True):
    """A deadline is due."""


class FileArrived(_Event, tag="file_arrived", frozen=True, omit_defaults=True):
    """A verified file from ``peer`` lies at ``path``; the shell read its header.

    ``round`` is the round its name says (0: the name says none), ``problem`` why its header
    is unusable ("" if it is fine), ``signature`` its names/dtypes/shapes digest.
    """

    peer: str
    path: str
    size: int
    round: int = 0
    signature: str = ""
    samples: int = 0
    problem: str = ""


class Aggregated(_Event, tag="aggregated", frozen=True):
    """The update of ``round`` is written at ``path`` (its BLAKE3, taken while writing)."""

    round: int
    path: str
    size: int
    blake3: str


class AggregateFailed(_Event, tag="aggregate_failed", frozen=True):
    """The update of ``round`` could not be made."""

    round: int
    reason: str


class Published(_Event, tag="published", frozen=True):
    """The update went out: per worker ``delivered`` or why not."""

    round: int
    outcomes: dict[str, str]


class Reported(_Event, tag="reported", frozen=True):
    """The scheduler answered ``updated``; ``done``: that was the last round."""

    round: int
    done: bool


class ReportFailed(_Event, tag="report_failed", frozen=True):
    """The scheduler could not be told."""

    round: int
    reason: str


class Stop(_Event, tag="stop", frozen=True):
    """The job is cancelled."""


Event = (
    Tick | FileArrived | Aggregated | AggregateFailed | Published | Reported | ReportFailed | Stop
)


class _Effect(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class DropFile(_Effect, tag="drop_file", frozen=True):
    """Delete a file that does not count, and say why (counted too)."""

    path: str
    peer: str
    reason: str


class Aggregate(_Effect, tag="aggregate", frozen=True):
    """Average ``files`` with ``weights`` and take the outer step; ``first``: round 1.

    The update goes out to ``send_to`` while it is written; ``Publish`` completes it.
    """

    round: int
    files: tuple[str, ...]
    weights: tuple[float, ...]
    first: bool
    send_to: tuple[str, ...] = ()


class Publish(_Effect, tag="publish", frozen=True):
    """Deliver the update at ``path`` (with its ``blake3``) to each of ``peers``.

    Transfers begun while it was written (``Aggregate.send_to``) are finished with the digest;
    any other peer gets the complete file.
    """

    round: int
    path: str
    peers: tuple[str, ...]
    blake3: str


class ReportUpdated(_Effect, tag="report_updated", frozen=True):
    """Tell the scheduler the update of ``round`` is out."""

    round: int


class RemoveFiles(_Effect, tag="remove_files", frozen=True):
    """The round's files are not needed any more."""

    paths: tuple[str, ...]


class Notice(_Effect, tag="notice", frozen=True):
    """A line for the operator."""

    level: Literal["info", "warning", "error"]
    text: str


class Finished(_Effect, tag="finished", frozen=True):
    """The job is over: ok, or why not."""

    ok: bool
    reason: str = ""


Effect = DropFile | Aggregate | Publish | ReportUpdated | RemoveFiles | Notice | Finished
