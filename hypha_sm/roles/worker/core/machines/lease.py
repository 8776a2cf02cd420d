"""The lease machine: offer, acceptance by renewal, dispatch, expiry, release exactly once."""

from __future__ import annotations

from hypha_sm.core.engine import Registry
from hypha_sm.roles.worker.core.effects import (
    Notice,
    ReplyDispatchFailed,
    ReplyRenewed,
    ReplyRenewFailed,
    StartJob,
)
from hypha_sm.roles.worker.core.events import DispatchRequested, RenewRequested
from hypha_sm.roles.worker.core.machines._ctx import Ctx
from hypha_sm.roles.worker.core.policy import RUNTIME_FOR_CLASS
from hypha_sm.roles.worker.core.records import JobRec, LeaseRec

REGISTRY = Registry.new("lease")


@REGISTRY.guard
def from_owner(ctx: Ctx) -> bool:
    """Only the scheduler the lease was offered to may renew it."""
    request: RenewRequested = ctx.event
    lease: LeaseRec = ctx.rec
    return request.peer == lease.owner


@REGISTRY.guard
def not_from_owner(ctx: Ctx) -> bool:
    """Only the owner may dispatch under the lease."""
    request: DispatchRequested = ctx.event
    lease: LeaseRec = ctx.rec
    return request.peer != lease.owner


@REGISTRY.guard
def has_job(ctx: Ctx) -> bool:
    """The lease carries a job (one job per lease)."""
    lease: LeaseRec = ctx.rec
    return lease.job_id is not None


@REGISTRY.guard
def job_id_in_use(ctx: Ctx) -> bool:
    """A live job already has this id."""
    request: DispatchRequested = ctx.event
    return request.job_id in ctx.state.records["job"]


@REGISTRY.guard
def executor_not_configured(ctx: Ctx) -> bool:
    """No configured executor has the requested class and name."""
    request: DispatchRequested = ctx.event
    return ctx.state.policy.executor_for(request.executor) is None


@REGISTRY.guard
def executor_runtime_mismatch(ctx: Ctx) -> bool:
    """The configured executor's runtime cannot run this class of job."""
    request: DispatchRequested = ctx.event
    spec = ctx.state.policy.executor_for(request.executor)
    assert spec is not None
    return RUNTIME_FOR_CLASS.get(spec.cls) != spec.runtime


@REGISTRY.action
def extend(ctx: Ctx) -> None:
    """The lease now expires lease_timeout from now (replacing, not adding)."""
    state = ctx.state
    state.arm_after(ctx.rec, state.policy.timings.lease_timeout)


@REGISTRY.action
def reply_renewed(ctx: Ctx) -> None:
    """Answer the renewal with the new expiry, in wall-clock time."""
    state = ctx.state
    request: RenewRequested = ctx.event
    lease: LeaseRec = ctx.rec
    expires_wall = state.now.wall + (lease.deadline - state.now.mono)
    state.emit(ReplyRenewed(request.reply_to, lease.key, expires_wall))


@REGISTRY.action
def forgive_lapses(ctx: Ctx) -> None:
    """The owner renews: whatever offers it let lapse before are forgiven."""
    lease: LeaseRec = ctx.rec
    ctx.state.note_accepted(lease.owner)


@REGISTRY.action
def count_lapse(ctx: Ctx) -> None:
    """The owner let the offer lapse (or its address failed): count it; back off if repeated."""
    state = ctx.state
    lease: LeaseRec = ctx.rec
    backoff = state.note_lapse(lease.owner)
    state.count("lease.lapsed")
    if backoff > 0:
        state.count("scheduler.backoff")
        lapses = state.lapses[lease.owner][0]
        state.emit(
            Notice(
                "scheduler_backoff",
                f"scheduler {lease.owner} let {lapses} offers in a row lapse unaccepted; "
                f"declining its advertisements for {backoff:g} s",
            )
        )


@REGISTRY.action_with_arg
def reply_renew_failed(ctx: Ctx, reason: str) -> None:
    """Refuse the renewal with a reason."""
    request: RenewRequested = ctx.event
    ctx.state.count(f"rejected.lease.{reason}")
    ctx.state.emit(ReplyRenewFailed(request.reply_to, request.lease_id, reason))


@REGISTRY.action_with_arg
def reply_dispatch_failed(ctx: Ctx, reason: str) -> None:
    """Refuse the dispatch with a reason."""
    request: DispatchRequested = ctx.event
    ctx.state.count(f"rejected.lease.{reason}")
    ctx.state.emit(ReplyDispatchFailed(request.reply_to, request.job_id, reason))


@REGISTRY.action
def create_job(ctx: Ctx) -> None:
    """Create the job and ask the executor to start it; the reply waits for the start."""
    state = ctx.state
    request: DispatchRequested = ctx.event
    lease: LeaseRec = ctx.rec
    executor = state.policy.executor_for(request.executor)
    assert executor is not None
    job = JobRec(
        request.job_id,
        lease_id=lease.key,
        scheduler=lease.owner,
        executor=executor,
        spec=request.spec,
        reply_to=request.reply_to,
    )
    lease.job_id = job.key
    state.create(job)
    state.arm_after(job, state.policy.timings.start_timeout)
    state.emit(
        StartJob(
            job_id=job.key,
            lease_id=lease.key,
            executor=executor,
            spec=request.spec,
            work_dir_id=state.ids.next_id(),
            resources=lease.resources.to_amounts(),
        )
    )


#: Why draining began (the job event posted) -> the reason the lease is finally released for.
_DRAIN_REASONS = {"lease_expired": "expired", "shutdown": "shutdown"}


@REGISTRY.action_with_arg
def cancel_job(ctx: Ctx, why: str) -> None:
    """Tell the job why it must stop; the reservation stays until its processes are gone."""
    lease: LeaseRec = ctx.rec
    assert lease.job_id is not None
    lease.end_reason = _DRAIN_REASONS[why]
    ctx.state.post("job", lease.job_id, why)


@REGISTRY.action
def arm_drain_deadline(ctx: Ctx) -> None:
    """Check back after the job's stop should have completed."""
    state = ctx.state
    timings = state.policy.timings
    state.arm_after(ctx.rec, timings.kill_grace + 2 * timings.kill_retry)


@REGISTRY.action
def rearm_overdue_drain(ctx: Ctx) -> None:
    """Still waiting for the job's processes: count it and check back later."""
    ctx.state.count("lease.drain_overdue")
    arm_drain_deadline(ctx)


@REGISTRY.action
def detach_job(ctx: Ctx) -> None:
    """The job never got going; the lease may carry another."""
    lease: LeaseRec = ctx.rec
    lease.job_id = None


@REGISTRY.action_with_arg
def release(ctx: Ctx, reason: str) -> None:
    """Return the reservation (exactly once: the ledger raises on a second release)."""
    lease: LeaseRec = ctx.rec
    lease.end_reason = reason
    ctx.state.release(lease.key)
    ctx.state.note_ended(lease.key, lease.owner, reason)
    ctx.state.count(f"lease.released.{reason}")


@REGISTRY.action
def release_drained(ctx: Ctx) -> None:
    """The job's processes are gone: return the reservation, for the reason draining began."""
    lease: LeaseRec = ctx.rec
    release(ctx, lease.end_reason)
