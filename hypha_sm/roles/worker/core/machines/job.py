"""The job machine: start, run, stop, report; the lease hears as soon as the processes are gone."""

from __future__ import annotations

from hypha_sm.core.engine import Registry
from hypha_sm.roles.worker.core.effects import (
    JobStatus,
    ReplyDispatched,
    ReplyDispatchFailed,
    SendJobStatus,
    StopJob,
)
from hypha_sm.roles.worker.core.events import (
    JobExited,
    JobOverLimit,
    JobStartFailed,
    StatusDelivered,
    StatusFailed,
)
from hypha_sm.roles.worker.core.machines._ctx import Ctx
from hypha_sm.roles.worker.core.records import JobRec, LeaseRec

REGISTRY = Registry.new("job")


@REGISTRY.guard
def exited_cleanly(ctx: Ctx) -> bool:
    """Exit code 0."""
    exited: JobExited = ctx.event
    return exited.exit_code == 0


#: Why a job can be stopped by its own doing: it ends ``failed``, not ``cancelled``.
_OWN_FAULTS = ("start_timeout", "storage_exceeded", "disk_full")


@REGISTRY.guard
def stopped_for_its_own_fault(ctx: Ctx) -> bool:
    """The stop was ours for the job's own fault (slow start, too much disk): it failed."""
    job: JobRec = ctx.rec
    return job.reason.split(":", 1)[0] in _OWN_FAULTS


@REGISTRY.guard
def ack_for_running_report(ctx: Ctx) -> bool:
    """The answer belongs to the earlier ``running`` report, not the final one."""
    event = ctx.event
    return isinstance(event, StatusDelivered | StatusFailed) and event.status == "running"


@REGISTRY.guard
def outcome_finished(ctx: Ctx) -> bool:
    """The job finished with exit code 0."""
    job: JobRec = ctx.rec
    return job.outcome == "finished"


@REGISTRY.guard
def outcome_cancelled(ctx: Ctx) -> bool:
    """The job was stopped because its lease expired or the node shut down."""
    job: JobRec = ctx.rec
    return job.outcome == "cancelled"


def _lease_expiry_wall(ctx: Ctx, job: JobRec) -> float:
    state = ctx.state
    lease: LeaseRec = state.records["lease"][job.lease_id]
    return state.now.wall + (lease.deadline - state.now.mono)


@REGISTRY.action
def reply_dispatched(ctx: Ctx) -> None:
    """The job started: answer the dispatch with the lease's current expiry."""
    job: JobRec = ctx.rec
    assert job.reply_to is not None
    job.started = True
    ctx.state.emit(
        ReplyDispatched(job.reply_to, job.key, job.lease_id, _lease_expiry_wall(ctx, job))
    )
    job.reply_to = None


@REGISTRY.action
def report_running(ctx: Ctx) -> None:
    """Tell the scheduler the job runs."""
    job: JobRec = ctx.rec
    ctx.state.emit(SendJobStatus(job.key, job.scheduler, "running", None, ""))


@REGISTRY.action
def reply_start_failed(ctx: Ctx) -> None:
    """Answer the dispatch: the job could not be started."""
    job: JobRec = ctx.rec
    event = ctx.event
    failed = isinstance(event, JobStartFailed)
    job.reason = "start_failed" if failed else "exited_during_start"
    _answer_dispatch_failed(ctx, job, job.reason, event.reason if failed else "")


@REGISTRY.action_with_arg
def reply_dispatch_failed(ctx: Ctx, reason: str) -> None:
    """Answer the dispatch with a refusal, if it is still waiting."""
    _answer_dispatch_failed(ctx, ctx.rec, reason)


def _answer_dispatch_failed(ctx: Ctx, job: JobRec, reason: str, detail: str = "") -> None:
    if job.reply_to is not None:
        ctx.state.emit(ReplyDispatchFailed(job.reply_to, job.key, reason, detail))
        job.reply_to = None


@REGISTRY.action
def detach_from_lease(ctx: Ctx) -> None:
    """Nothing of the job runs: free its lease for another dispatch."""
    job: JobRec = ctx.rec
    ctx.state.post("lease", job.lease_id, "job_detached")


@REGISTRY.action_with_arg
def stop(ctx: Ctx, reason: str) -> None:
    """Stop the whole process tree (TERM, grace, KILL); wait for JobExited."""
    state = ctx.state
    job: JobRec = ctx.rec
    job.reason = reason
    timings = state.policy.timings
    state.emit(StopJob(job.key, force=False))
    state.arm_after(job, timings.kill_grace + timings.kill_retry)


@REGISTRY.action
def stop_over_limit(ctx: Ctx) -> None:
    """Stop the job for the limit it broke; the reason (with the figures) goes in its report."""
    event: JobOverLimit = ctx.event
    ctx.state.count(f"job.over_limit.{event.reason}")
    reason = f"{event.reason}: {event.detail}" if event.detail else event.reason
    stop(ctx, reason)


@REGISTRY.action
def force_stop(ctx: Ctx) -> None:
    """The stop is overdue: kill without grace, count it, and keep waiting."""
    state = ctx.state
    job: JobRec = ctx.rec
    state.count("job.stop_overdue")
    state.emit(StopJob(job.key, force=True))
    state.arm_after(job, state.policy.timings.kill_retry)


@REGISTRY.action_with_arg
def conclude(ctx: Ctx, outcome: str) -> None:
    """The processes are gone: report the outcome and tell the lease at once."""
    state = ctx.state
    job: JobRec = ctx.rec
    event = ctx.event
    status: JobStatus
    if outcome == "finished":
        status = "finished"
    elif outcome == "cancelled":
        status = "cancelled"
    else:
        status = "failed"
    job.outcome = status
    if isinstance(event, JobExited):
        job.exit_code = event.exit_code
    state.emit(SendJobStatus(job.key, job.scheduler, status, job.exit_code, job.reason))
    state.arm_after(job, state.policy.timings.report_timeout)
    state.post("lease", job.lease_id, "job_ended" if job.started else "job_detached")


@REGISTRY.action
def count_report(ctx: Ctx) -> None:
    """Count how the final report went: delivered, failed or overdue."""
    event = ctx.event
    if isinstance(event, StatusDelivered):
        ctx.state.count("job.report.delivered")
    elif isinstance(event, StatusFailed):
        ctx.state.count("job.report.failed")
    else:
        ctx.state.count("job.report.overdue")
