"""The request machine: one advertisement's filters, pricing, score and reservation.

Pricing (specs/pricing.md): ``floor`` is the hard minimum for both strategies. ``flexible``
offers exactly what was asked at the bid, and only when the bid also meets ``price``. ``whole``
offers the entire capacity at max(bid, price), so it can hold one lease at a time.
"""

from __future__ import annotations

import math

from hypha_sm.core.engine import Registry
from hypha_sm.core.resources import score
from hypha_sm.roles.worker.core.effects import SendOffer
from hypha_sm.roles.worker.core.machines._ctx import Ctx
from hypha_sm.roles.worker.core.policy import Timings
from hypha_sm.roles.worker.core.records import LeaseRec, RequestRec

REGISTRY = Registry.new("request")


@REGISTRY.guard
def bid_invalid(ctx: Ctx) -> bool:
    """NaN, infinite or negative bids are not prices."""
    bid: float = ctx.rec.bid
    return not (0.0 <= bid < math.inf)


@REGISTRY.guard
def resources_invalid(ctx: Ctx) -> bool:
    """Some amount was negative, NaN, infinite or absurd."""
    rec: RequestRec = ctx.rec
    return rec.requested is None


@REGISTRY.guard
def advertisement_expired(ctx: Ctx) -> bool:
    """The advertisement's own timeout has passed (or is not a time at all)."""
    expires: float = ctx.rec.expires_mono
    return not (expires > ctx.state.now.mono)


@REGISTRY.guard
def executor_unsupported(ctx: Ctx) -> bool:
    """Some required executor is not configured here (class and name must both match)."""
    policy = ctx.state.policy
    rec: RequestRec = ctx.rec
    return any(policy.executor_for(ref) is None for ref in rec.executors)


@REGISTRY.guard
def scheduler_backed_off(ctx: Ctx) -> bool:
    """The scheduler let offers lapse repeatedly and its backoff has not ended."""
    rec: RequestRec = ctx.rec
    return ctx.state.backed_off(rec.scheduler)


@REGISTRY.guard
def scheduler_holds_too_many_offers(ctx: Ctx) -> bool:
    """The scheduler holds max_pending_offers unaccepted offers already."""
    rec: RequestRec = ctx.rec
    state = ctx.state
    return state.pending_offers(rec.scheduler) >= state.policy.max_pending_offers


@REGISTRY.guard
def below_floor(ctx: Ctx) -> bool:
    """Below the hard minimum: dropped without a response."""
    bid: float = ctx.rec.bid
    return bid < ctx.state.policy.offer.floor


@REGISTRY.guard
def below_price(ctx: Ctx) -> bool:
    """Flexible mirrors the bid only when it also meets the ask."""
    offer = ctx.state.policy.offer
    bid: float = ctx.rec.bid
    return offer.strategy == "flexible" and bid < offer.price


@REGISTRY.guard
def exceeds_capacity(ctx: Ctx) -> bool:
    """Asks for more than the configured total in some dimension."""
    rec: RequestRec = ctx.rec
    assert rec.requested is not None
    return not rec.requested.fits_within(ctx.state.capacity)


@REGISTRY.guard
def requests_nothing(ctx: Ctx) -> bool:
    """Flexible only: a lease of nothing would reserve nothing and hold a slot forever."""
    rec: RequestRec = ctx.rec
    assert rec.requested is not None
    return ctx.state.policy.offer.strategy == "flexible" and rec.requested.is_zero()


@REGISTRY.guard
def at_lease_limit(ctx: Ctx) -> bool:
    """The node already holds max_leases leases."""
    state = ctx.state
    return len(state.records["lease"]) >= state.policy.max_leases


@REGISTRY.guard
def fits_available(ctx: Ctx) -> bool:
    """What this offer would reserve is still free."""
    rec: RequestRec = ctx.rec
    assert rec.offer_resources is not None
    return rec.offer_resources.fits_within(ctx.state.available())


@REGISTRY.action_with_arg
def decline(ctx: Ctx, reason: str) -> None:
    """Drop without a response; count the reason."""
    ctx.state.count(f"declined.{reason}")


@REGISTRY.action
def price_and_score(ctx: Ctx) -> None:
    """Decide what would be offered, at what price, and score it (price per weighted unit)."""
    state = ctx.state
    rec: RequestRec = ctx.rec
    offer = state.policy.offer
    if offer.strategy == "whole":
        rec.offer_resources = state.capacity
        rec.offer_price = max(rec.bid, offer.price)
    else:
        rec.offer_resources = rec.requested
        rec.offer_price = rec.bid
    assert rec.offer_resources is not None
    rec.score = score(rec.offer_price, rec.offer_resources, state.policy.weights)


def offer_lifetime(asked: float, timings: Timings) -> float:
    """How long an offer stays open: what the advertisement asked, up to the maximum.

    The default when it asked nothing (or nonsense: NaN, infinite, not positive).
    """
    if not (math.isfinite(asked) and asked > 0):
        return timings.offer_timeout
    return min(asked, timings.max_offer_timeout)


@REGISTRY.action
def offer(ctx: Ctx) -> None:
    """Reserve, create the temporary lease, and send the offer."""
    state = ctx.state
    rec: RequestRec = ctx.rec
    resources = rec.offer_resources
    assert resources is not None
    now = state.now
    timeout = offer_lifetime(rec.offer_lifetime, state.policy.timings)
    lease_id = state.ids.next_id()
    state.reserve(lease_id, resources)
    lease = LeaseRec(
        lease_id,
        owner=rec.scheduler,
        request_id=rec.key,
        resources=resources,
        price=rec.offer_price,
    )
    state.create(lease)
    state.note_offer(rec.scheduler)
    state.arm_after(lease, timeout)
    state.count("offers")
    state.emit(
        SendOffer(
            lease_id=lease_id,
            request_id=rec.key,
            scheduler=rec.scheduler,
            reply_address=rec.reply_address,
            price=rec.offer_price,
            resources=resources.to_amounts(),
            expires_wall=now.wall + timeout,
        )
    )
