"""The batch machine: the advertisement window, and the flush that evaluates it.

A flush fires ``batch_closed`` on every request in arrival order (the request machine's guards
are the filters), ranks the survivors by score, best first and stable by arrival, then fires
``reserve`` on each in that order, so earlier winners reduce what later ones can get.
"""

from __future__ import annotations

import heapq

from hypha_sm.core.engine import Registry
from hypha_sm.core.resources import to_resources
from hypha_sm.roles.worker.core.events import AdvertisementReceived
from hypha_sm.roles.worker.core.machines._ctx import Ctx
from hypha_sm.roles.worker.core.records import BatchRec, RequestRec

REGISTRY = Registry.new("batch")


@REGISTRY.guard
def not_accepting(ctx: Ctx) -> bool:
    """The node is draining."""
    return not ctx.state.accepting


@REGISTRY.guard
def storage_is_full(ctx: Ctx) -> bool:
    """The work dir's disk is full (the node machine says so)."""
    return ctx.state.storage_full


@REGISTRY.guard
def fills_window(ctx: Ctx) -> bool:
    """This advertisement brings the window to its limit."""
    rec: BatchRec = ctx.rec
    return len(rec.pending) + 1 >= ctx.state.policy.timings.window_limit


@REGISTRY.action_with_arg
def refuse_advertisement(ctx: Ctx, reason: str) -> None:
    """Drop the advertisement without a response; count why."""
    ctx.state.count(f"declined.{reason}")


@REGISTRY.action
def admit(ctx: Ctx) -> None:
    """Create the request record and hold it in the window."""
    state = ctx.state
    ad: AdvertisementReceived = ctx.event
    now = state.now
    expires_mono = now.mono + (ad.expires_wall - now.wall)
    state.arrivals += 1
    rec = RequestRec(
        ad.request_id,
        scheduler=ad.scheduler,
        reply_address=ad.reply_address,
        amounts=ad.resources,
        executors=ad.executors,
        bid=ad.bid,
        expires_mono=expires_mono,
        arrival=state.arrivals,
        offer_lifetime=ad.offer_lifetime,
    )
    rec.requested = to_resources(ad.resources)
    state.create(rec)
    ctx.rec.pending.append(ad.request_id)
    # Remember the id to drop re-deliveries, for as long as the advertisement is valid (bounded).
    window = state.policy.dedupe_window
    forget_at = now.mono + window
    if expires_mono == expires_mono:  # not NaN
        forget_at = max(now.mono, min(expires_mono, forget_at))
    state.seen_ads[ad.request_id] = forget_at
    heapq.heappush(state.seen_heap, (forget_at, ad.request_id))
    state.bound_seen(state.policy.dedupe_capacity)


@REGISTRY.action
def open_window(ctx: Ctx) -> None:
    """Start the window; it closes window_wait after this first advertisement."""
    state = ctx.state
    state.arm_after(ctx.rec, state.policy.timings.window_wait)


@REGISTRY.action
def flush(ctx: Ctx) -> None:
    """Filter, rank and reserve every held advertisement."""
    state = ctx.state
    rec: BatchRec = ctx.rec
    pending, rec.pending = rec.pending, []
    requests = state.records["request"]
    ranked: list[RequestRec] = []
    for request_id in pending:
        state.fire("request", request_id, "batch_closed")
        req = requests.get(request_id)
        if req is not None:
            ranked.append(req)
    ranked.sort(key=_rank_key)
    with state.pending_offers_indexed():
        for req in ranked:
            state.fire("request", req.key, "reserve")


def _rank_key(req: RequestRec) -> tuple[float, int]:
    # Best score first; equal scores keep arrival order. NaN cannot occur: bids are validated.
    return (-req.score, req.arrival)


@REGISTRY.action
def discard_window(ctx: Ctx) -> None:
    """Decline everything held (the node is draining)."""
    state = ctx.state
    rec: BatchRec = ctx.rec
    pending, rec.pending = rec.pending, []
    for request_id in pending:
        state.post("request", request_id, "window_discarded")
