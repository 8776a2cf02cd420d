"""The slice machine's guards and actions, and which available slice a request gets.

``choose`` keeps the original SliceTracker's semantics (hypha-execution.md §8.2) with its flaws
fixed: a worker first gets the lowest-index available slice that was never handed out or was
last its own (affinity across epochs); if none, it takes one from another worker's share:
from the worker with the **fewest** available slices (counted from 1, not 0: B10), ties going to
the worker whose first such slice has the lowest index (not hash-map order), and the lowest
index of that worker's slices. A slice is used once per epoch: "done" is explicit (the
worker's ``SliceDone``), and a new epoch starts only when every slice is done.
"""

from __future__ import annotations

from collections import Counter

from hypha_sm.core.engine import Ctx as _Ctx
from hypha_sm.core.engine import Registry
from hypha_sm.roles.scheduler.core.effects import Notice, ReplySlice, ReplySliceDone
from hypha_sm.roles.scheduler.core.events import SliceDone, SliceRequested
from hypha_sm.roles.scheduler.core.state import SchedulerState, SliceRec

Ctx = _Ctx[SchedulerState]
SLICE = Registry.new("slice")


def choose(slices: list[SliceRec], peer: str) -> SliceRec | None:
    """The available slice ``peer`` gets (``slices`` in index order), or None if none is."""
    available = [s for s in slices if s._phase == "available"]
    for rec in available:
        if rec.owner in ("", peer):
            return rec
    if not available:
        return None
    counts = Counter(rec.owner for rec in available)
    first: dict[str, int] = {}
    for rec in available:
        first.setdefault(rec.owner, rec.index)
    victim = min(counts, key=lambda owner: (counts[owner], first[owner]))
    return next(rec for rec in available if rec.owner == victim)


def providers_for(providers: tuple[str, ...], index: int) -> tuple[str, ...]:
    """The data nodes to try for a slice, rotated by its index so load spreads across them."""
    if not providers:
        return ()
    start = index % len(providers)
    return providers[start:] + providers[:start]


@SLICE.action
def hand_out(ctx: Ctx) -> None:
    """The slice is the requester's until it says done or slice_timeout passes."""
    state, rec = ctx.state, ctx.rec
    request: SliceRequested = ctx.event
    dataset = state.dataset
    assert dataset is not None  # slices exist only once the dataset was found
    rec.owner = rec.assignee = request.peer
    rec.job_id = request.job_id
    state.arm_after(rec, state.plan.slice_timeout)
    state.emit(
        ReplySlice(
            request.reply_to,
            request.peer,
            dataset.name,
            rec.index,
            dataset.manifest_hash,
            providers_for(dataset.providers, rec.index),
            state.now.wall + state.plan.slice_timeout,
        )
    )
    state.count("slices.handed_out")


@SLICE.guard
def not_from_assignee(ctx: Ctx) -> bool:
    """Only the worker holding the slice can say it is done."""
    report: SliceDone = ctx.event
    rec: SliceRec = ctx.rec
    return report.peer != rec.assignee


@SLICE.action_with_arg
def refuse_done(ctx: Ctx, reason: str) -> None:
    """Refuse a "slice done" with ``reason``."""
    ctx.state.count(f"slices.refused.{reason}")
    ctx.state.refuse(ctx.event, reason)


@SLICE.action
def note_done(ctx: Ctx) -> None:
    """The slice was used this epoch."""
    rec: SliceRec = ctx.rec
    report: SliceDone = ctx.event
    rec.assignee = ""
    ctx.state.emit(ReplySliceDone(report.reply_to, rec.index))
    ctx.state.count("slices.done")


@SLICE.guard
def held_by_lost_worker(ctx: Ctx) -> bool:
    """The placement that ended is the slice's holder."""
    rec: SliceRec = ctx.rec
    worker: str = ctx.event
    return rec.assignee == worker


@SLICE.action_with_arg
def reclaim(ctx: Ctx, why: str) -> None:
    """Back to the pool: its worker is gone or did not report it done in time."""
    state, rec = ctx.state, ctx.rec
    holder = f"held by …{rec.assignee[-6:]}"
    # A job that finished may end holding the slice it had fetched ahead: worth a line, not
    # a warning.
    if why == "worker_lost" and any(
        e.worker == rec.assignee and e.phase == "finished" for e in state.ended.values()
    ):
        state.emit(
            Notice("info", f"slice {rec.index} back to the pool (its job finished, {holder})")
        )
    else:
        state.emit(Notice("warning", f"slice {rec.index} back to the pool ({why}, {holder})"))
    state.count(f"slices.reclaimed.{why}")
    rec.assignee = ""
