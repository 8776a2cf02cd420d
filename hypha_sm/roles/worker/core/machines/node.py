"""The node machine: running, draining on shutdown, stopped."""

from __future__ import annotations

from hypha_sm.core.engine import Registry
from hypha_sm.roles.worker.core.effects import NodeStopped, Notice
from hypha_sm.roles.worker.core.events import StorageLow, StorageRecovered
from hypha_sm.roles.worker.core.machines._ctx import Ctx

REGISTRY = Registry.new("node")


@REGISTRY.action
def stop_accepting(ctx: Ctx) -> None:
    """Take no new advertisements from now on."""
    ctx.state.accepting = False


@REGISTRY.action
def stop_offering(ctx: Ctx) -> None:
    """Decline every advertisement until the disk has room again; say so."""
    state = ctx.state
    event: StorageLow = ctx.event
    state.storage_full = True
    state.count("node.storage_full")
    why = f" ({event.detail})" if event.detail else ""
    state.emit(
        Notice(
            "storage_full",
            f"the work dir's disk is full ({event.free_bytes} bytes free){why}: "
            "no new offers until it has room",
        )
    )


@REGISTRY.action
def resume_offering(ctx: Ctx) -> None:
    """The disk has room again: take advertisements again; say so."""
    state = ctx.state
    event: StorageRecovered = ctx.event
    state.storage_full = False
    state.emit(
        Notice(
            "storage_recovered",
            f"the work dir's disk has room again ({event.free_bytes} bytes free): offering",
        )
    )


@REGISTRY.action
def cancel_everything(ctx: Ctx) -> None:
    """Drop the open window and wind down every lease (which cancels its job)."""
    state = ctx.state
    state.post("batch", "batch", "shutdown")
    for lease_id in sorted(state.records["lease"]):
        state.post("lease", lease_id, "shutdown")


@REGISTRY.action
def arm_shutdown_deadline(ctx: Ctx) -> None:
    """Give up waiting after shutdown_timeout."""
    state = ctx.state
    state.arm_after(ctx.rec, state.policy.timings.shutdown_timeout)


@REGISTRY.action_with_arg
def announce_stopped(ctx: Ctx, reason: str) -> None:
    """Tell the shell it may exit."""
    ctx.rec.stop_reason = reason
    ctx.state.emit(NodeStopped(reason))
