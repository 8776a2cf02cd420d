"""The guards and actions of a DiLoCo training worker's machine (``training.toml``).

Each reply is the original's (hypha-execution.md §9.3), with two changes: an
``update-received`` that comes before the parameter server's ``updated`` waits for it (B4),
and the global weights' digests the workers report are compared each round; a difference
fails the job loudly.
"""

from __future__ import annotations

from typing import Any

from hypha_sm.core.engine import Ctx as _Ctx
from hypha_sm.core.engine import Registry
from hypha_sm.core.record import Record
from hypha_sm.roles.scheduler.core.effects import Notice, ReplyProgress
from hypha_sm.roles.scheduler.core.events import ProgressReceived
from hypha_sm.roles.scheduler.core.state import JOB, SchedulerState

Ctx = _Ctx[SchedulerState]
TRAINING = Registry.new("training")

#: A progress report's wire tag as the training machine's event.
EVENT_OF_KIND = {
    "status": "status",
    "update": "update",
    "update-received": "update_received",
    "metrics": "metrics",
}


class TrainingRec(Record):
    """One training worker's rounds, keyed by its lease id."""

    __slots__ = ("held", "round", "worker")
    kind = "training"

    def __init__(self, key: str, worker: str) -> None:
        super().__init__(key)
        self.worker = worker
        #: The round it trains in (1-based).
        self.round = 1
        #: An update-received waiting for the round to close: (reply_to, job_id).
        self.held: tuple[int, str] | None = None


def _tracker(state: SchedulerState) -> Any:
    tracker = state.tracker
    assert tracker is not None, "a training record exists only in a DiLoCo job"
    return tracker


def _reply(state: SchedulerState, report: ProgressReceived, kind: Any, counter: int = 0) -> None:
    state.emit(ReplyProgress(report.reply_to, report.job_id, kind, counter=counter))


def training_failed(state: SchedulerState, reason: str) -> None:
    """The training cannot go on: the allocation ends the job with ``reason``."""
    if JOB in state.records["allocation"]:
        state.post("allocation", JOB, "training_failed", reason)


@TRAINING.guard
def update_due(ctx: Ctx) -> bool:
    """With this status the round's samples will be covered before the caps (the original's test)."""
    report: ProgressReceived = ctx.event
    tracker = _tracker(ctx.state)
    now_ms = tracker.ms(ctx.state.now.mono)
    projection = tracker.project_after(ctx.rec.key, report.batch_size, now_ms)
    return projection.to_go == 0 and not projection.capped


@TRAINING.guard
def round_closed_already(ctx: Ctx) -> bool:
    """The parameter server already published the update of the worker's round."""
    rec: TrainingRec = ctx.rec
    return bool(_tracker(ctx.state).round > rec.round)


@TRAINING.guard
def training_over(ctx: Ctx) -> bool:
    """The worker's round closed and it was the last."""
    tracker = _tracker(ctx.state)
    return bool(tracker.finished and tracker.round > ctx.rec.round)


@TRAINING.action_with_arg
def reply(ctx: Ctx, kind: str) -> None:
    """Answer the report with ``kind`` (ok, continue, done, error)."""
    if kind == "error":
        ctx.state.count("progress.wrong_state")
    if kind == "done":
        _tracker(ctx.state).told_done.add(ctx.rec.key)
    _reply(ctx.state, ctx.event, kind)


@TRAINING.action
def count_batch(ctx: Ctx) -> None:
    """Count the batch's samples and time; a first status's weights digest is compared."""
    state, rec = ctx.state, ctx.rec
    report: ProgressReceived = ctx.event
    tracker = _tracker(state)
    tracker.update(rec.key, report.batch_size, tracker.ms(state.now.mono))
    state.count("progress.batches")
    if report.weights_sha256:
        _compare(state, rec, 0, report.weights_sha256)


@TRAINING.action
def schedule_update(ctx: Ctx) -> None:
    """Tell the worker how many more batches to run before it sends its update."""
    state, rec = ctx.state, ctx.rec
    tracker = _tracker(state)
    further = tracker.further_batches(rec.key, tracker.project())
    _reply(state, ctx.event, "schedule_update", further)


def _compare(state: SchedulerState, rec: TrainingRec, rnd: int, digest: str) -> None:
    tracker = _tracker(state)
    seen = tracker.hashes.setdefault(rnd, digest)
    if seen != digest:
        what = "initial weights" if rnd == 0 else f"global weights after round {rnd}"
        reason = f"{what} differ between workers ({seen[:12]}… and {digest[:12]}…)"
        state.emit(Notice("error", reason))
        training_failed(state, reason)


@TRAINING.action
def check_weights(ctx: Ctx) -> None:
    """Every worker's global weights after a round must be bit-identical."""
    report: ProgressReceived = ctx.event
    if report.weights_sha256:
        _compare(ctx.state, ctx.rec, ctx.rec.round, report.weights_sha256)


@TRAINING.action
def join_round(ctx: Ctx) -> None:
    """The worker trains in the round now in progress."""
    ctx.rec.round = _tracker(ctx.state).round


@TRAINING.action
def hold_reply(ctx: Ctx) -> None:
    """The round has not closed yet: the answer waits for the parameter server's ``updated``."""
    report: ProgressReceived = ctx.event
    ctx.rec.held = (report.reply_to, report.job_id)
    ctx.state.count("progress.held")


@TRAINING.action_with_arg
def answer_held(ctx: Ctx, kind: Any) -> None:
    """The round closed: answer the waiting update-received."""
    rec: TrainingRec = ctx.rec
    if rec.held is not None:
        ctx.state.emit(ReplyProgress(rec.held[0], rec.held[1], kind))
        rec.held = None
        if kind == "done":
            _tracker(ctx.state).told_done.add(rec.key)


@TRAINING.action
def leave_trackers(ctx: Ctx) -> None:
    """The worker is gone: the projection and the rounds go on without it."""
    state, rec = ctx.state, ctx.rec
    _tracker(state).remove(rec.key)
    if (
        not any(
            r.key != rec.key and r._phase not in ("gone", "done")
            for r in state.records["training"].values()
        )
        and not _tracker(state).finished
    ):
        training_failed(state, "every training worker left the job")
