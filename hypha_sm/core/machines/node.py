"""The node machine: running, draining on shutdown, stopped."""

from __future__ import annotations

from hypha_sm.core.effects import NodeStopped
from hypha_sm.core.engine import Ctx, Registry

REGISTRY = Registry.new("node")


@REGISTRY.action
def stop_accepting(ctx: Ctx) -> None:
    """Take no new advertisements from now on."""
    ctx.state.accepting = False


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
