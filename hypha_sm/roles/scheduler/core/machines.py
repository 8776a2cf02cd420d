"""The guards and actions of the scheduler's machines (``machines/scheduler/*.toml``).

The allocation advertises, collects and accepts offers and dispatches the job; each placement
holds one lease: accepted by our first renewal, renewed on a deadline before the worker's
expiry, dispatched, followed to its end. They talk through internal events only (``post``).
"""

from __future__ import annotations

import math
from typing import Any

from hypha_sm.core.engine import Ctx as _Ctx
from hypha_sm.core.engine import Registry
from hypha_sm.core.resources import covers
from hypha_sm.roles.scheduler.core.effects import (
    AcceptLease,
    DispatchJob,
    Finished,
    LocateDataset,
    LocateGateways,
    Notice,
    Publish,
    RenewLease,
    ReplyOffer,
    ReplyProgress,
    ReplyStatus,
)
from hypha_sm.roles.scheduler.core.events import (
    RENEWAL_REFUSED,
    LeaseAccepted,
    OfferReceived,
    ProgressReceived,
    Renewed,
    StatusReceived,
)
from hypha_sm.roles.scheduler.core.slices import SLICE
from hypha_sm.roles.scheduler.core.state import (
    JOB,
    PS,
    TRAIN,
    AllocationRec,
    Ended,
    PlacementRec,
    SchedulerState,
)
from hypha_sm.roles.scheduler.core.training import (
    EVENT_OF_KIND,
    TRAINING,
    TrainingRec,
    training_failed,
)

Ctx = _Ctx[SchedulerState]

ALLOCATION = Registry.new("allocation")
PLACEMENT = Registry.new("placement")
REGISTRIES = {
    "allocation": ALLOCATION,
    "placement": PLACEMENT,
    "slice": SLICE,
    "training": TRAINING,
}
#: The shortest renewal period, however near a worker says its lease expires.
MIN_RENEW = 0.05
#: Seconds to wait for a job's final status once its worker let the lease go for job_ended
#: (the status is sent at the same moment; a retry or a slow path may make it later).
STATUS_GRACE = 30.0


def _short(peer: str) -> str:
    return f"worker …{peer[-6:]}"


def _notice(state: SchedulerState, level: Any, text: str) -> None:
    state.emit(Notice(level, text))


# -- the allocation ------------------------------------------------------------------------


def _arm_retry(ctx: Ctx, delay: float) -> None:
    rec: AllocationRec = ctx.rec
    ctx.state.arm(rec, min(ctx.state.now.mono + delay, rec.give_up_at))


@ALLOCATION.action
def start_clock(ctx: Ctx) -> None:
    """The allocation gives up advertise_timeout from now; the job's dataset is looked up."""
    rec: AllocationRec = ctx.rec
    state = ctx.state
    rec.give_up_at = state.now.mono + state.plan.advertise_timeout
    if state.plan.dataset:
        state.looking_up = True
        state.emit(LocateDataset(state.plan.dataset))


@ALLOCATION.action
def locate(ctx: Ctx) -> None:
    """Ask the gateways where to publish; ask again after ``retry``."""
    ctx.state.emit(LocateGateways())
    _arm_retry(ctx, ctx.state.plan.retry)


@ALLOCATION.action
def publish(ctx: Ctx) -> None:
    """Publish a new advertisement (a new request id); offers for older ones are refused."""
    state, rec = ctx.state, ctx.rec
    rec.request_id = state.ids.next_id()
    rec.offers = []
    rec.next_offer = 0
    rec.first_offer = False
    rec.group = state.short_group() or TRAIN
    state.emit(Publish(rec.request_id, state.now.wall + state.plan.ad_lifetime, rec.group))
    _arm_retry(ctx, state.plan.first_offer_wait)


@ALLOCATION.action
def retry_later(ctx: Ctx) -> None:
    """Publishing failed (no gateway connection yet): publish again after ``retry``."""
    _arm_retry(ctx, ctx.state.plan.retry)


@ALLOCATION.action
def wait_for_offers(ctx: Ctx) -> None:
    """Collect offer_wait after the first offer (or first_offer_wait if none came yet)."""
    rec: AllocationRec = ctx.rec
    plan = ctx.state.plan
    rec.first_offer = bool(rec.offers)
    _arm_retry(ctx, plan.offer_wait if rec.offers else plan.first_offer_wait)


@ALLOCATION.guard
def past_give_up(ctx: Ctx) -> bool:
    """advertise_timeout has passed."""
    rec: AllocationRec = ctx.rec
    return ctx.state.now.mono >= rec.give_up_at


@ALLOCATION.guard
def unknown_request(ctx: Ctx) -> bool:
    """The offer answers an advertisement that is not the current one."""
    offer: OfferReceived = ctx.event
    rec: AllocationRec = ctx.rec
    return offer.request_id != rec.request_id


def unwanted(state: SchedulerState, rec: AllocationRec, offer: OfferReceived) -> str:
    """Why an offer for the current advertisement is not taken ("" if it is)."""
    plan = state.plan
    if len(rec.offers) >= plan.max_offers:
        return "the round has enough offers"
    if offer.lease_id in state.records["placement"] or any(
        o.peer == offer.peer or o.lease_id == offer.lease_id for o in rec.offers
    ):
        return "one offer per worker and lease"
    if any(p.worker == offer.peer for p in state.held()):
        return "the worker already holds a lease of this job"
    price = offer.price
    resources, limit = state.needs(rec.group)
    if not (math.isfinite(price) and 0.0 <= price <= limit):
        return f"price {price!r} outside 0..{limit:g}"
    if not covers(offer.resources, resources):
        return f"offers {offer.resources} for {resources}"
    return ""


@ALLOCATION.guard
def offer_not_wanted(ctx: Ctx) -> bool:
    """A second offer from a worker or for a lease, too many, too dear, or too small."""
    return bool(unwanted(ctx.state, ctx.rec, ctx.event))


@ALLOCATION.action_with_arg
def refuse_offer(ctx: Ctx, reason: str) -> None:
    """Refuse the offer with ``reason``; say why in the log if it was the price or size."""
    state = ctx.state
    offer: OfferReceived = ctx.event
    state.emit(ReplyOffer(offer.reply_to, offer.lease_id, reason))
    state.count(f"offers.refused.{reason}")
    if reason == "offer_not_taken":
        why = unwanted(state, ctx.rec, offer)
        _notice(state, "info", f"{_short(offer.peer)}: offer {offer.lease_id} refused: {why}")


@ALLOCATION.action
def take_offer(ctx: Ctx) -> None:
    """Keep the offer for ranking and acknowledge it."""
    offer: OfferReceived = ctx.event
    rec: AllocationRec = ctx.rec
    rec.offers.append(offer)
    ctx.state.emit(ReplyOffer(offer.reply_to, offer.lease_id))
    ctx.state.count("offers.taken")


@ALLOCATION.action
def collect_briefly(ctx: Ctx) -> None:
    """The first offer of a round: collect for offer_wait more, then choose."""
    rec: AllocationRec = ctx.rec
    if not rec.first_offer:
        rec.first_offer = True
        _arm_retry(ctx, ctx.state.plan.offer_wait)


@ALLOCATION.guard
def no_offers(ctx: Ctx) -> bool:
    """Nobody offered within first_offer_wait."""
    rec: AllocationRec = ctx.rec
    return not rec.offers


@ALLOCATION.guard
def no_offers_past_give_up(ctx: Ctx) -> bool:
    """Nobody offered, and advertise_timeout has passed."""
    return no_offers(ctx) and past_give_up(ctx)


@ALLOCATION.action
def rank_offers(ctx: Ctx) -> None:
    """Cheapest first; equal prices in arrival order (the sort is stable)."""
    rec: AllocationRec = ctx.rec
    rec.offers.sort(key=lambda o: o.price)
    rec.next_offer = 0


@ALLOCATION.guard
def can_try_more(ctx: Ctx) -> bool:
    """Fewer leases held than wanted, and an untried offer is left."""
    rec: AllocationRec = ctx.rec
    state = ctx.state
    wanted = state.wanted(rec.group)
    return len(state.held_in(rec.group)) < wanted and rec.next_offer < len(rec.offers)


@ALLOCATION.action
def try_next(ctx: Ctx) -> None:
    """Accept the cheapest untried offer; try the next too if it has not answered in ``hedge``.

    An offer naming an address that never answers thus cannot make the real offers lapse
    behind it (a temporary lease lasts 0.5 s on the worker).
    """
    state, rec = ctx.state, ctx.rec
    offer: OfferReceived = rec.offers[rec.next_offer]
    rec.next_offer += 1
    placement = PlacementRec(
        offer.lease_id,
        offer.peer,
        offer.worker_address,
        offer.price,
        rec.group,
        _batch_size(state, offer) if rec.group == TRAIN else 0,
    )
    state.create(placement)
    state.arm_after(placement, 2 * state.plan.accept_timeout)
    state.emit(AcceptLease(offer.lease_id, offer.peer, offer.worker_address))
    state.arm_after(rec, state.plan.hedge)


def _batch_size(state: SchedulerState, offer: OfferReceived) -> int:
    """A DiLoCo worker's batch: its gpu over the job's per-sample gpu, capped (the original's)."""
    diloco = state.plan.diloco
    if diloco is None:
        return 0
    per_sample = state.plan.resources.gpu
    if per_sample <= 0:
        return diloco.max_batch_size
    return max(1, min(int(offer.resources.gpu // per_sample), diloco.max_batch_size))


@ALLOCATION.action
def wait_for_answers(ctx: Ctx) -> None:
    """Nothing more to try now: wait for the acceptances in flight."""
    ctx.state.arm_after(ctx.rec, ctx.state.plan.accept_timeout)


@ALLOCATION.guard
def answers_pending(ctx: Ctx) -> bool:
    """Acceptances are still in flight."""
    return ctx.state.pending() > 0


@ALLOCATION.guard
def enough_held(ctx: Ctx) -> bool:
    """As many leases are held as the job wants in every group (or more)."""
    return ctx.state.short_group() is None


@ALLOCATION.action
def let_go_surplus(ctx: Ctx) -> None:
    """Keep the cheapest leases the job wants (acceptance order breaks ties); let the rest go."""
    state = ctx.state
    state.placed = []
    for group in state.groups():
        held = sorted(state.held_in(group), key=lambda p: p.price)  # stable: acceptance order
        wanted = state.wanted(group)
        for extra in held[wanted:]:
            _notice(
                state, "info", f"{_short(extra.worker)}: lease {extra.key} not needed; it lapses"
            )
            state.post("placement", extra.key, "let_go", "not needed")
        state.placed += [p.key for p in held[:wanted]]


@ALLOCATION.action
def dispatch_all(ctx: Ctx) -> None:
    """Give every placement a job id and send the job; the job may run for ``timeout``."""
    state = ctx.state
    placements = [state.records["placement"][key] for key in state.placed]
    training = [p for p in placements if p.group == TRAIN]
    workers = tuple(p.worker for p in training)
    server = next((p.worker for p in placements if p.group == PS), "")
    if state.tracker is not None:
        state.tracker.round_start = state.now.mono  # the original's tracker starts at dispatch
        for p in training:
            state.tracker.add(p.key, p.batch_size)
    for p in placements:
        job_id = state.ids.next_id()
        state.jobs[job_id] = p.key
        index = training.index(p) if p.group == TRAIN else 0
        state.post("placement", p.key, "dispatch", (job_id, index, workers, server))
    state.arm_after(ctx.rec, state.plan.timeout)


@ALLOCATION.action
def let_go_all(ctx: Ctx) -> None:
    """Every lease held or being accepted is let go (never renewed again)."""
    state = ctx.state
    for placement in state.records["placement"].values():
        state.post("placement", placement.key, "let_go", "the job ended")


def _finish(state: SchedulerState, ok: bool, reason: str) -> None:
    for key in state.records["slice"]:
        state.post("slice", key, "job_ended")
    state.finished = (ok, reason)
    state.emit(Finished(ok, reason))


@ALLOCATION.action
def give_up(ctx: Ctx) -> None:
    """Too few leases (or no gateway) within advertise_timeout: say why and end."""
    state, rec = ctx.state, ctx.rec
    plan = state.plan
    short = state.short_group() or TRAIN
    if not rec.request_id:
        reason = f"no gateway answered within {plan.advertise_timeout:g} s"
    elif short == PS:
        reason = f"no parameter server accepted within {plan.advertise_timeout:g} s"
    else:
        reason = (
            f"only {len(state.held_in(TRAIN))} of {plan.workers} workers accepted "
            f"within {plan.advertise_timeout:g} s"
        )
    if rec.request_id:
        reason += f": {_market_story(state)}"
    rec.reason = reason
    _notice(state, "error", reason)
    _finish(state, False, reason)


def _market_story(state: SchedulerState) -> str:
    """What the advertisements got: offers, and why the refused ones were refused."""
    counters = state.counters
    taken = counters["offers.taken"]
    refused = counters["offers.refused.offer_not_taken"]
    lapsed = counters["placements.refused"]
    if not taken and not refused:
        return (
            "no worker offered: none is subscribed at the gateways, or each declined (busy, "
            "below its price floor, too small, or without this executor: its log says which)"
        )
    parts = [f"{taken + refused} offer(s)"]
    if refused:
        parts.append(f"{refused} refused as too dear or too small (see the lines above)")
    if lapsed:
        parts.append(f"{lapsed} could not be accepted (refused, lapsed or unanswered)")
    return ", ".join(parts)


@ALLOCATION.guard
def all_ended(ctx: Ctx) -> bool:
    """No placement is live any more."""
    return not ctx.state.records["placement"]


@ALLOCATION.action
def finish(ctx: Ctx) -> None:
    """Every placement ended: ok if each finished with exit 0 (each placement says how)."""
    state = ctx.state
    ended = [state.ended.get(key) for key in state.placed]
    if state.tracker is not None:
        _finish(state, *_training_outcome(state, ended))
        return
    ok = bool(ended) and all(
        e is not None and e.phase == "finished" and e.exit_code == 0 for e in ended
    )
    _finish(state, ok, "")  # each placement says how it ended


def _training_outcome(state: SchedulerState, ended: list[Ended | None]) -> tuple[bool, str]:
    """Whether a DiLoCo job succeeded, and the reason if not (or who left on the way).

    It did if every round was aggregated and the parameter server and at least one training
    worker finished cleanly.
    """
    tracker = state.tracker
    assert tracker is not None
    trainers = [e for e in ended if e is not None and e.group == TRAIN]
    # A worker told Done whose lease went with its job before its "finished" arrived counts
    # as done too (the same race as the PS's, above).
    done = [
        e
        for e in trainers
        if (e.phase == "finished" and e.exit_code == 0) or e.lease_id in tracker.told_done
    ]
    left = len(trainers) - len(done)
    if tracker.finished and done:
        return True, f"{left} worker(s) left on the way" if left else ""
    return False, f"training ended after {tracker.round - 1} of {tracker.plan.rounds} rounds"


@ALLOCATION.action
def time_out(ctx: Ctx) -> None:
    """The job ran past its timeout: its leases are let go."""
    state = ctx.state
    reason = f"timed out after {state.plan.timeout:g} s"
    _notice(state, "warning", f"job {reason}; its leases are no longer renewed")
    _finish(state, False, reason)


@ALLOCATION.action
def fail_training(ctx: Ctx) -> None:
    """The DiLoCo training cannot go on: say why, end the job."""
    reason: str = ctx.event
    ctx.rec.reason = reason
    _notice(ctx.state, "error", f"training failed: {reason}")
    _finish(ctx.state, False, reason)


@ALLOCATION.action
def stop(ctx: Ctx) -> None:
    """The operator stopped the scheduler."""
    _finish(ctx.state, False, "stopped")


# -- a placement ---------------------------------------------------------------------------


def _renew_every(state: SchedulerState, rec: PlacementRec) -> float:
    """renew_interval, or half the time to the worker's expiry if that is sooner."""
    half = (rec.expires_mono - state.now.mono) / 2
    if not half > MIN_RENEW:  # also NaN: a worker's odd expiry costs renewals, not the lease
        half = MIN_RENEW
    return min(state.plan.renew_interval, half)


def _arm_renewal(state: SchedulerState, rec: PlacementRec, at: float) -> None:
    # Never after the expiry: a lease whose renewals fail is found lost at its expiry (the
    # renew_due there sees past_expiry), not held on in the belief that it lives.
    rec.renew_at = min(at, rec.expires_mono)
    state.arm(rec, rec.renew_at)


@PLACEMENT.action
def hold(ctx: Ctx) -> None:
    """The lease is ours: renew it before the worker's expiry; it joins the job."""
    state, rec = ctx.state, ctx.rec
    answer: LeaseAccepted = ctx.event
    rec.expires_mono = state.wall_to_mono(answer.expires_wall)
    rec.renew_every = _renew_every(state, rec)
    _arm_renewal(state, rec, state.now.mono + rec.renew_every)
    state.placed.append(rec.key)
    _notice(
        state, "info", f"{_short(rec.worker)}: lease {rec.key} accepted at price {rec.price:g}"
    )


@PLACEMENT.action
def settle(ctx: Ctx) -> None:
    """Tell the allocation this acceptance has its answer."""
    ctx.state.post("allocation", JOB, "acceptance_settled")


@PLACEMENT.action_with_arg
def end(ctx: Ctx, phase: str) -> None:
    """Keep how the placement ended (its record is dropped) and say so."""
    state, rec = ctx.state, ctx.rec
    event = ctx.event
    exit_code = event.exit_code if isinstance(event, StatusReceived) else None
    if isinstance(event, str):
        reason = event  # let go: the allocation says why
    elif rec.phase == "ending" and phase == "lost":
        reason = f"the job ended on the worker but its status did not come in {STATUS_GRACE:g} s"
    else:
        reason = getattr(event, "reason", "") or (
            "lease expired unrenewed" if phase == "lost" else ""
        )
    if rec.key in state.placed:  # part of the job (not refused, not a let-go surplus)
        state.ended[rec.key] = Ended(
            rec.worker,
            rec.address,
            rec.key,
            rec.price,
            rec.job_id,
            phase,
            exit_code,
            reason,
            rec.group,
        )
    if rec.job_id:
        state.jobs.pop(rec.job_id, None)
    if phase == "refused":
        state.count("placements.refused")
        why = reason or "no answer in time"
        _notice(state, "info", f"{_short(rec.worker)}: lease {rec.key} refused: {why}")
    elif phase in ("lost", "failed"):
        _notice(state, "warning", f"{_short(rec.worker)}: lease {rec.key} {phase}: {reason}")


@PLACEMENT.action
def ended(ctx: Ctx) -> None:
    """Tell the allocation this placement ended, and the slices its worker may hold.

    Unless the allocation already ended (then the slices are retired with it): each slice
    machine decides whether the worker held it.
    """
    state, rec = ctx.state, ctx.rec
    if JOB not in state.records["allocation"]:
        return
    if rec.group == PS and rec.job_id and state.tracker is not None:
        how = state.ended.get(rec.key)
        # After the last round the PS was told Done: its job ends and the worker lets its lease
        # go, so a renewal in that moment is refused (unknown_lease) before its "finished"
        # arrives. Only a PS that ends before the training did fails the job.
        if not state.tracker.finished:
            why = "" if how is None else f" ({how.phase}{': ' + how.reason if how.reason else ''})"
            training_failed(state, f"the parameter server ended{why}")
    state.post("allocation", JOB, "placement_ended")
    _worker_gone(state, rec)


@PLACEMENT.action
def renew(ctx: Ctx) -> None:
    """Renew the lease, and again after renew_every."""
    state, rec = ctx.state, ctx.rec
    state.emit(RenewLease(rec.key, rec.worker, rec.address))
    _arm_renewal(state, rec, state.now.mono + rec.renew_every)


@PLACEMENT.action
def extend(ctx: Ctx) -> None:
    """The worker renewed: note its new expiry; renew sooner if it is nearer than we planned."""
    state, rec = ctx.state, ctx.rec
    answer: Renewed = ctx.event
    rec.expires_mono = state.wall_to_mono(answer.expires_wall)
    rec.renew_every = _renew_every(state, rec)
    if state.now.mono + rec.renew_every < rec.renew_at:
        _arm_renewal(state, rec, state.now.mono + rec.renew_every)


@PLACEMENT.guard
def job_ended_on_worker(ctx: Ctx) -> bool:
    """The worker refused the renewal because the job under the lease ended."""
    return bool(ctx.event.reason == f"{RENEWAL_REFUSED}job_ended")


@PLACEMENT.action
def await_status(ctx: Ctx) -> None:
    """No more renewals; the job's final status decides how the placement ended."""
    state, rec = ctx.state, ctx.rec
    state.arm(rec, state.now.mono + STATUS_GRACE)
    _notice(state, "info", f"{_short(rec.worker)}: job ended, lease {rec.key} let go")
    # Its job is over whatever the status will say: a round or a slice it held is not waited on.
    _worker_gone(state, rec)


def _worker_gone(state: SchedulerState, rec: PlacementRec) -> None:
    """The worker's job no longer runs: it leaves the rounds, and its slices go back."""
    if rec.key in state.records["training"]:
        state.post("training", rec.key, "worker_lost")
    for key in state.records["slice"]:
        state.post("slice", key, "worker_lost", rec.worker)


@PLACEMENT.guard
def past_expiry(ctx: Ctx) -> bool:
    """The lease's expiry passed without a renewal getting through (the renew_due at it)."""
    rec: PlacementRec = ctx.rec
    return ctx.state.now.mono >= rec.expires_mono


@PLACEMENT.action
def warn_renewal(ctx: Ctx) -> None:
    """A renewal did not get through; the next one may."""
    rec: PlacementRec = ctx.rec
    reason = ctx.event.reason
    _notice(ctx.state, "warning", f"{_short(rec.worker)}: renewal failed: {reason}")


@PLACEMENT.action
def send_job(ctx: Ctx) -> None:
    """Send the job under this lease; renewals go on as planned."""
    state, rec = ctx.state, ctx.rec
    job_id, index, workers, server = ctx.event
    rec.job_id = job_id
    state.emit(
        DispatchJob(
            rec.key,
            job_id,
            rec.worker,
            rec.address,
            index,
            workers,
            rec.group,
            server,
            rec.batch_size,
        )
    )
    if state.tracker is not None and rec.group == TRAIN:
        state.create(TrainingRec(rec.key, rec.worker))
    _arm_renewal(state, rec, rec.renew_at)


@PLACEMENT.action
def keep_renewing(ctx: Ctx) -> None:
    """A new phase: the renewal deadline stays where it was."""
    rec: PlacementRec = ctx.rec
    _arm_renewal(ctx.state, rec, rec.renew_at)


@PLACEMENT.action
def note_dispatched(ctx: Ctx) -> None:
    """The worker took the job."""
    rec: PlacementRec = ctx.rec
    _notice(ctx.state, "info", f"{_short(rec.worker)}: job {rec.job_id} dispatched")


@PLACEMENT.guard
def not_from_worker(ctx: Ctx) -> bool:
    """The report comes from a peer other than the worker the job was sent to."""
    report: StatusReceived | ProgressReceived = ctx.event
    rec: PlacementRec = ctx.rec
    return report.peer != rec.worker


@PLACEMENT.action_with_arg
def refuse_report(ctx: Ctx, reason: str) -> None:
    """Refuse a status or progress report with ``reason``."""
    ctx.state.count(f"reports.refused.{reason}")
    ctx.state.refuse(ctx.event, reason)


@PLACEMENT.guard
def reports_running(ctx: Ctx) -> bool:
    """The job runs."""
    status: StatusReceived = ctx.event
    return status.status == "running"


@PLACEMENT.guard
def reports_finished(ctx: Ctx) -> bool:
    """The job finished (its exit code says how)."""
    status: StatusReceived = ctx.event
    return status.status == "finished"


@PLACEMENT.guard
def reports_cancelled(ctx: Ctx) -> bool:
    """The worker cancelled the job."""
    status: StatusReceived = ctx.event
    return status.status == "cancelled"


@PLACEMENT.action
def ack_status(ctx: Ctx) -> None:
    """Acknowledge the status and log it."""
    state, rec = ctx.state, ctx.rec
    status: StatusReceived = ctx.event
    state.emit(ReplyStatus(status.reply_to, status.job_id))
    code = "" if status.exit_code is None else f" (exit {status.exit_code})"
    why = f": {status.reason}" if status.reason else ""
    # The worker answers a dispatch once the job runs, and reports it running at once: the
    # report may overtake the answer, whose line would then come second (and is dropped).
    how = "dispatched and " if rec.phase == "dispatched" else ""
    _notice(
        state, "info", f"{_short(rec.worker)} job {status.job_id} {how}{status.status}{code}{why}"
    )


@PLACEMENT.action
def answer_progress(ctx: Ctx) -> None:
    """Answer progress: ``continue`` once the worker received an update, else ``ok``."""
    state, rec = ctx.state, ctx.rec
    report: ProgressReceived = ctx.event
    state.count("progress")
    if state.tracker is None:
        update_received = report.kind == "update-received"
        state.emit(
            ReplyProgress(report.reply_to, report.job_id, "continue" if update_received else "ok")
        )
        _notice(state, "info", f"{_short(rec.worker)} {report.text}")
    elif rec.group == PS:
        _parameter_server_progress(state, report)
    elif report.kind in EVENT_OF_KIND and rec.key in state.records["training"]:
        state.post("training", rec.key, EVENT_OF_KIND[report.kind], report)
        if report.kind in ("metrics", "update-received"):
            _notice(state, "info", f"{_short(rec.worker)} {report.text}")
    else:
        state.count("progress.unexpected")
        state.emit(ReplyProgress(report.reply_to, report.job_id, "error"))


def _parameter_server_progress(state: SchedulerState, report: ProgressReceived) -> None:
    """``updated``: the round closed; every worker's waiting answer goes out; Done at the end."""
    tracker = state.tracker
    assert tracker is not None
    if report.kind != "updated" or tracker.round > tracker.plan.rounds:
        state.count("progress.unexpected")
        state.emit(ReplyProgress(report.reply_to, report.job_id, "error"))
        return
    closed = tracker.round
    tracker.next_round(state.now.mono)
    state.emit(ReplyProgress(report.reply_to, report.job_id, "done" if tracker.finished else "ok"))
    _notice(state, "info", f"round {closed} of {tracker.plan.rounds}: the update is out")
    for key in state.records["training"]:
        state.post("training", key, "round_closed")
