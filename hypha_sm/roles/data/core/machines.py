"""The guards and actions of the data node's machines (``machines/data/*.toml``)."""

from __future__ import annotations

from hypha_sm.core.engine import Ctx as _Ctx
from hypha_sm.core.engine import Registry
from hypha_sm.roles.data.core.effects import Announce, NodeStopped, Notice, ReplyFetch
from hypha_sm.roles.data.core.events import AnnounceFailed, SendFailed, SliceSent
from hypha_sm.roles.data.core.state import DataState, FetchRec

Ctx = _Ctx[DataState]
NODE_MACHINE = Registry.new("node")
FETCH = Registry.new("fetch")
REGISTRIES = {"node": NODE_MACHINE, "fetch": FETCH}


@NODE_MACHINE.action
def announce(ctx: Ctx) -> None:
    """Renew the records at the gateways; again after announce_every."""
    state = ctx.state
    state.emit(Announce(state.now.wall + state.plan.record_lifetime))
    state.arm_after(ctx.rec, state.plan.announce_every)


@NODE_MACHINE.action
def note_announced(ctx: Ctx) -> None:
    """The records are stored (counted: the operator sees renewals in the counters)."""
    ctx.state.count("announced")


@NODE_MACHINE.action
def retry_announce(ctx: Ctx) -> None:
    """No gateway stored them: try again soon, not after a whole period."""
    state = ctx.state
    failure: AnnounceFailed = ctx.event
    state.count("announce_failed")
    state.emit(Notice("warning", f"no gateway stored the dataset records: {failure.reason}"))
    state.arm(ctx.rec, min(ctx.rec.deadline, state.now.mono + state.plan.announce_retry))


@NODE_MACHINE.action
def stop_taking(ctx: Ctx) -> None:
    """Draining: new fetches are refused; the node stops once the last one ended."""
    ctx.state.emit(Notice("info", "stopping: finishing the fetches in flight"))


@NODE_MACHINE.action
def say_stopped(ctx: Ctx) -> None:
    """Nothing is in flight: the shell may exit."""
    ctx.state.emit(NodeStopped())


@FETCH.action
def reply_sent(ctx: Ctx) -> None:
    """Tell the worker its slice arrived (size and SHA-256 as verified)."""
    rec: FetchRec = ctx.rec
    sent: SliceSent = ctx.event
    ctx.state.emit(ReplyFetch(rec.reply_to, rec.transfer_id, "", sent.size, sent.sha256))
    ctx.state.count("fetches.sent")


@FETCH.action
def reply_failed(ctx: Ctx) -> None:
    """Tell the worker the transfer failed (or took longer than send_timeout)."""
    rec: FetchRec = ctx.rec
    event = ctx.event
    reason = event.reason if isinstance(event, SendFailed) else "send_timeout"
    ctx.state.emit(ReplyFetch(rec.reply_to, rec.transfer_id, f"send_failed: {reason}"[:200]))
    ctx.state.count("fetches.failed")
