"""Acceptance seeds 1-17 of hypha-worker.md §13, at the level of the core's effects.

Where the reference describes a flaw of the original (NaN bids pass, renewals revive expired
leases, dispatch on unaccepted leases, no status reports, 250 ms prune polling), these tests pin
OUR fixed behaviour as declared in machines/*.toml. The process and work-dir parts of seeds 14
and 15 belong to the shell; here we test what the core asks the shell to do.
"""

from __future__ import annotations

import math
import uuid

import msgspec.structs
import pytest

from hypha_sm.core.resources import ZERO, Amounts, Resources
from hypha_sm.core.trace import REJECTED
from hypha_sm.roles.worker.core.effects import (
    NodeStopped,
    ReplyDispatched,
    ReplyDispatchFailed,
    ReplyRenewed,
    ReplyRenewFailed,
    SendJobStatus,
    SendOffer,
    StartJob,
    StopJob,
)
from hypha_sm.roles.worker.core.events import (
    JobExited,
    JobStarted,
    JobStartFailed,
    OfferDelivered,
    OfferFailed,
    ShutdownRequested,
    StatusDelivered,
    StatusFailed,
)
from hypha_sm.roles.worker.core.policy import ExecutorRef, ExecutorSpec, Policy
from hypha_sm.roles.worker.core.reducer import Step, next_deadline
from hypha_sm.roles.worker.core.state import WorkerState
from tests.helpers import (
    AGGREGATE,
    CAPACITY,
    OTHER,
    SCHED,
    TRAIN,
    WALL0,
    Worker,
    ad,
    dispatch,
    policy,
    renew,
)

NAN = math.nan
INF = math.inf
EPS = 1e-6
MISCONFIGURED = ExecutorRef(cls="train", name="misconfigured")
FULL = Resources(24_000_000, 16_000_000, 64_000_000, 500_000_000)


# -- helpers -------------------------------------------------------------------------------


def effects_of(out: Step, cls: type) -> list:
    """The effects of one type, in order."""
    return [e for e in out.effects if isinstance(e, cls)]


def the(out: Step, cls: type):
    """The one effect of this type (fails if there is none or several)."""
    found = effects_of(out, cls)
    assert len(found) == 1, out.effects
    return found[0]


def with_misconfigured(pol: Policy) -> Policy:
    """The policy plus a `train` executor wrongly configured with the parameter-server runtime."""
    extra = ExecutorSpec(cls="train", name="misconfigured", runtime="parameter-server")
    return msgspec.structs.replace(pol, executors=(*pol.executors, extra))


def offered_lease(w: Worker, request_id: str = "req-1", **kw: object) -> str:
    """Advertise at w.t, let the window close, and return the id of the lease offered."""
    t0 = w.t
    w.feed(ad(request_id, t=t0, **kw), t0)  # type: ignore[arg-type]
    out = w.tick(t0 + w.timings.window_wait)
    return the(out, SendOffer).lease_id


def accepted_lease(w: Worker, request_id: str = "req-1", **kw: object) -> str:
    """An offered lease, accepted by its owner's first renewal at the same instant."""
    lease_id = offered_lease(w, request_id, **kw)
    the(w.feed(renew(lease_id, reply_to=90)), ReplyRenewed)
    return lease_id


def running_job(w: Worker, job_id: str = "job-1", request_id: str = "req-1") -> str:
    """A job started under a freshly accepted lease; returns the lease id."""
    lease_id = accepted_lease(w, request_id)
    the(w.feed(dispatch(lease_id, job_id)), StartJob)
    the(w.feed(JobStarted(job_id)), ReplyDispatched)
    return lease_id


def lease(w: Worker, lease_id: str):
    """The live lease record, or None."""
    return w.state.records["lease"].get(lease_id)


def job(w: Worker, job_id: str):
    """The live job record, or None."""
    return w.state.records["job"].get(job_id)


def assert_nothing_reserved(state: WorkerState) -> None:
    """No lease holds anything."""
    assert state.reserved == ZERO
    assert state.reservations == {}
    assert state.available() == state.capacity


# -- seeds 1-2: batching -------------------------------------------------------------------


def test_batch_open_window_closed_flushes_once_exactly_window_wait_after_the_first_ad() -> None:
    """Seed 1: three ads 10 ms apart are evaluated together, exactly 200 ms after the first."""
    w = Worker(policy())
    for i, t in enumerate((0.0, 0.01, 0.02)):
        out = w.feed(ad(f"req-{i}", t=t), t)
        assert out.effects == ()
        assert next_deadline(w.state) == 0.2  # the window does not slide
    assert w.tick(0.2 - EPS).effects == ()
    out = w.tick(0.2)
    assert [o.request_id for o in effects_of(out, SendOffer)] == ["req-0", "req-1", "req-2"]
    assert w.state.records["batch"]["batch"].phase == "idle"
    assert effects_of(w.tick(0.3), SendOffer) == []


def test_batch_idle_advertisement_fills_window_flushes_at_once() -> None:
    """Seed 2: the 100th ad of a burst flushes the window in its own step, without waiting.

    (From 100 schedulers: one scheduler may hold only ``max_pending_offers`` offers.)"""
    w = Worker(policy())
    for i in range(99):
        out = w.feed(ad(f"req-{i}", cpu=0.1, memory=0.1, scheduler=f"12D3KooWSched{i}"))
        assert out.effects == ()
    out = w.feed(ad("req-99", cpu=0.1, memory=0.1, scheduler="12D3KooWSched99"))
    assert len(effects_of(out, SendOffer)) == 100
    assert w.state.records["batch"]["batch"].phase == "idle"
    assert next_deadline(w.state) == w.timings.offer_timeout  # the offers', not a window's
    w.feed(ad("req-100", cpu=0.1, memory=0.1, t=0.05), 0.05)  # the 101st opens a new window
    assert next_deadline(w.state) == 0.05 + w.timings.window_wait


def test_batch_window_limit_one_evaluates_each_ad_immediately() -> None:
    """With window_limit = 1 every advertisement is a full window: no timer is armed."""
    w = Worker(policy(timings=msgspec.structs.replace(policy().timings, window_limit=1)))
    out = w.feed(ad())
    assert len(effects_of(out, SendOffer)) == 1
    assert w.state.records["batch"]["batch"].deadline == INF


# -- seeds 3-8: filtering and pricing ------------------------------------------------------

DECLINES = [
    # (strategy, policy overrides, advertisement overrides, reason)
    ("flexible", {}, {"bid": NAN}, "invalid_bid"),
    ("whole", {}, {"bid": INF}, "invalid_bid"),
    ("flexible", {}, {"bid": -1.0}, "invalid_bid"),
    ("flexible", {}, {"cpu": -1.0}, "invalid_resources"),
    ("flexible", {}, {"memory": NAN}, "invalid_resources"),
    ("whole", {}, {"gpu": INF}, "invalid_resources"),
    ("flexible", {}, {"storage": 2e9}, "invalid_resources"),
    ("flexible", {}, {"expires_in": 0.1}, "expired"),
    ("flexible", {}, {"expires_in": 0.0}, "expired"),  # stale on arrival
    ("whole", {}, {"expires_in": NAN}, "expired"),
    (
        "flexible",
        {},
        {"executors": (ExecutorRef(cls="train", name="other"),)},
        "unsupported_executor",
    ),
    (
        "whole",
        {},
        {"executors": (TRAIN, ExecutorRef(cls="inference", name="llm"))},
        "unsupported_executor",
    ),
    (
        "flexible",
        {},
        {"executors": (ExecutorRef(cls="aggregate", name="diloco-transformer"),)},
        "unsupported_executor",
    ),
    ("flexible", {"floor": 120.0}, {"bid": 119.99}, "below_floor"),
    ("whole", {"price": 150.0, "floor": 120.0}, {"bid": 110.0}, "below_floor"),
    ("flexible", {"price": 150.0, "floor": 120.0}, {"bid": 130.0}, "below_price"),
    ("flexible", {}, {"cpu": 17.0}, "exceeds_capacity"),  # incomparable: only cpu is too big
    ("whole", {}, {"gpu": 24.000001}, "exceeds_capacity"),
    ("flexible", {}, {"cpu": 0.0, "memory": 0.0}, "empty_request"),
]


@pytest.mark.parametrize(("strategy", "pol", "fields", "reason"), DECLINES)
def test_request_received_batch_closed_declined_for_reason(
    strategy: str, pol: dict, fields: dict, reason: str
) -> None:
    """Seeds 3-5: a filtered ad gets no offer, reserves nothing, and its reason is counted."""
    w = Worker(policy(strategy, **pol))
    w.feed(ad(**fields))
    out = w.tick(0.2)
    assert effects_of(out, SendOffer) == []
    assert w.state.counters[f"declined.{reason}"] == 1
    declines = {k: v for k, v in w.state.counters.items() if k.startswith("declined.")}
    assert declines == {f"declined.{reason}": 1}
    assert_nothing_reserved(w.state)
    assert not w.state.records["lease"]
    assert not w.state.records["request"]


FIRST_FAILING_FILTER = [
    ({"bid": NAN, "cpu": -1.0}, "invalid_bid"),
    ({"cpu": -1.0, "expires_in": 0.0}, "invalid_resources"),
    (
        {
            "expires_in": 0.0,
            "executors": (AGGREGATE, MISCONFIGURED, ExecutorRef(cls="x", name="y")),
        },
        "expired",
    ),
    ({"executors": (ExecutorRef(cls="x", name="y"),), "bid": 1.0}, "unsupported_executor"),
    ({"bid": 1.0, "cpu": 100.0}, "below_floor"),
    ({"bid": 120.0, "cpu": 100.0}, "below_price"),
    ({"bid": 150.0, "cpu": 100.0, "memory": 0.0}, "exceeds_capacity"),
    ({"bid": 150.0, "cpu": 0.0, "memory": 0.0}, "empty_request"),
]


@pytest.mark.parametrize(("fields", "reason"), FIRST_FAILING_FILTER)
def test_request_received_batch_closed_first_failing_filter_decides(
    fields: dict, reason: str
) -> None:
    """Filters run in the order machines/request.toml declares; the first that holds counts."""
    w = Worker(policy("flexible", price=150.0, floor=100.0))
    w.feed(ad(**fields))
    w.tick(0.2)
    declines = {k: v for k, v in w.state.counters.items() if k.startswith("declined.")}
    assert declines == {f"declined.{reason}": 1}


PRICING = [
    # (strategy, price, floor, bid, offered price or decline reason) — §4.5's worked examples first
    ("whole", 150.0, 120.0, 110.0, "below_floor"),
    ("whole", 150.0, 120.0, 130.0, 150.0),
    ("whole", 150.0, 120.0, 200.0, 200.0),
    ("whole", 150.0, 120.0, 120.0, 150.0),  # bid == floor passes
    ("flexible", 100.0, 120.0, 130.0, 130.0),  # price <= floor: the bid is echoed
    ("flexible", 100.0, 120.0, 120.0, 120.0),
    ("flexible", 100.0, 120.0, 119.99, "below_floor"),
    ("flexible", 150.0, 120.0, 130.0, "below_price"),  # flexible also needs the ask
    ("flexible", 150.0, 120.0, 150.0, 150.0),
    ("flexible", 100.0, 100.0, 100.0, 100.0),  # seed 4: bid == floor gets an offer
    ("flexible", 100.0, 100.0, 100.0 - 1e-9, "below_floor"),  # seed 4: floor - ε does not
]


@pytest.mark.parametrize(("strategy", "price", "floor", "bid", "expected"), PRICING)
def test_request_ranked_reserve_offers_at_strategy_price(
    strategy: str, price: float, floor: float, bid: float, expected: float | str
) -> None:
    """Seeds 4, 6, 7: whole offers all of it at max(bid, price); flexible the request at the bid."""
    w = Worker(policy(strategy, price=price, floor=floor))
    w.feed(ad(bid=bid, cpu=2.0, memory=4.0))
    out = w.tick(0.2)
    if isinstance(expected, str):
        assert effects_of(out, SendOffer) == []
        assert w.state.counters[f"declined.{expected}"] == 1
        assert_nothing_reserved(w.state)
        return
    offer = the(out, SendOffer)
    assert offer.price == expected
    if strategy == "whole":
        assert offer.resources == CAPACITY
        assert w.state.reserved == FULL
    else:
        assert offer.resources == Amounts(cpu=2.0, memory=4.0)
        assert w.state.reserved == Resources(0, 2_000_000, 4_000_000, 0)


def test_request_ranked_reserve_flexible_request_equal_to_total_is_offered() -> None:
    """Seed 5: a request equal to the whole capacity passes (only strictly more is refused)."""
    w = Worker(policy("flexible"))
    w.feed(ad(gpu=24.0, cpu=16.0, memory=64.0, storage=500.0))
    offer = the(w.tick(0.2), SendOffer)
    assert offer.resources == CAPACITY
    assert w.state.available() == ZERO


def test_request_ranked_reserve_fractions_round_up_never_under_reserve() -> None:
    """Seed 6: amounts are reserved in exact micro-units, rounded up."""
    w = Worker(policy("flexible"))
    w.feed(ad(cpu=0.3333333, memory=1e-7))
    offer = the(w.tick(0.2), SendOffer)
    assert w.state.reservations[offer.lease_id] == Resources(0, 333_334, 1, 0)
    assert offer.resources == Amounts(cpu=0.333334, memory=1e-6)


def test_request_ranked_reserve_whole_holds_one_lease_at_a_time() -> None:
    """Seed 7: under whole, a second ad (same batch or later) is declined while a lease lives."""
    w = Worker(policy("whole", price=150.0, floor=120.0))
    w.feed(ad("a", bid=130.0))
    w.feed(ad("b", bid=130.0, t=0.01), 0.01)
    out = w.tick(0.2)
    assert [o.request_id for o in effects_of(out, SendOffer)] == ["a"]
    assert w.state.counters["declined.insufficient_resources"] == 1
    w.feed(ad("c", bid=500.0, t=0.3), 0.3)
    assert effects_of(w.tick(0.5), SendOffer) == []
    assert w.state.counters["declined.insufficient_resources"] == 2
    w.feed(ad("d", bid=130.0, t=0.7), 0.7)  # the first offer expired at 0.7: capacity is back
    assert [o.request_id for o in effects_of(w.tick(0.9), SendOffer)] == ["d"]


RANKING = [
    # (strategy, capacity, ads as (id, fields), offered ids in order)
    (
        "flexible",
        Amounts(gpu=10.0, cpu=1.0, memory=1.0),
        [("A-gpu-heavy", {"gpu": 10.0}), ("B-cpu-only", {})],
        ["B-cpu-only"],
    ),
    ("flexible", Amounts(cpu=1.0, memory=1.0), [("first", {}), ("second", {})], ["first"]),
    ("whole", CAPACITY, [("low", {"bid": 130.0}), ("high", {"bid": 200.0})], ["high"]),
    (
        "flexible",
        CAPACITY,
        [("cheap", {"bid": 100.0}), ("rich", {"bid": 300.0}), ("mid", {"bid": 200.0})],
        ["rich", "mid", "cheap"],
    ),
]


@pytest.mark.parametrize(("strategy", "capacity", "ads", "offered"), RANKING)
def test_batch_open_window_closed_reserves_best_score_first(
    strategy: str, capacity: Amounts, ads: list, offered: list
) -> None:
    """Seed 8: reservation runs by score (price per weighted unit), ties in arrival order."""
    w = Worker(policy(strategy, capacity=capacity))
    for i, (request_id, fields) in enumerate(ads):
        w.feed(ad(request_id, t=i * 0.01, **fields), i * 0.01)
    out = w.tick(0.2)
    assert [o.request_id for o in effects_of(out, SendOffer)] == offered


def test_request_ranked_reserve_declined_at_lease_limit() -> None:
    """max_leases bounds the leases held at once (offered or accepted)."""
    w = Worker(policy(max_leases=1))
    w.feed(ad("a"))
    w.feed(ad("b"))
    assert len(effects_of(w.tick(0.2), SendOffer)) == 1
    assert w.state.counters["declined.too_many_leases"] == 1


def test_request_received_advertisement_received_duplicate_is_rejected() -> None:
    """A re-delivered ad (same id) is dropped in the window and after it, while it is valid."""
    w = Worker(policy())
    w.feed(ad("dup", expires_in=5.0))
    w.feed(ad("dup", expires_in=5.0, t=0.1), 0.1)
    assert len(effects_of(w.tick(0.2), SendOffer)) == 1
    late = w.feed(ad("dup", expires_in=5.0), 1.0)
    assert late.trace[-1] == ("request", "dup", "", "advertisement_received", None, REJECTED)
    assert effects_of(w.tick(1.2), SendOffer) == []
    assert w.state.counters["rejected.request.duplicate"] == 2


# -- seeds 9-11: leases --------------------------------------------------------------------


def test_lease_offered_created_offer_names_the_lease_and_its_expiry() -> None:
    """Seed 9: the offer id is the lease id; the offer lasts exactly offer_timeout."""
    w = Worker(policy())
    w.feed(ad())
    offer = the(w.tick(0.2), SendOffer)
    record = lease(w, offer.lease_id)
    assert record.phase == "offered"
    assert record.owner == SCHED
    assert record.deadline == 0.2 + 0.5
    assert offer.expires_wall == WALL0 + 0.2 + 0.5
    assert offer.scheduler == SCHED
    assert w.state.reservations == {offer.lease_id: record.resources}
    assert next_deadline(w.state) == 0.2 + 0.5


def test_lease_offered_offer_expired_exactly_at_the_deadline() -> None:
    """Seed 9 (fixed): the temporary lease is gone exactly at its deadline, not a poll later."""
    w = Worker(policy())
    lease_id = offered_lease(w)
    deadline = lease(w, lease_id).deadline
    w.tick(deadline - EPS)
    assert lease(w, lease_id) is not None
    w.tick(deadline)
    assert lease(w, lease_id) is None
    assert_nothing_reserved(w.state)
    assert w.state.counters["lease.released.not_accepted"] == 1


@pytest.mark.parametrize(
    ("phase", "offset", "answer"),
    [
        ("offered", -EPS, "renewed"),
        ("offered", 0.0, "offer_expired"),
        ("active", -EPS, "renewed"),
        ("active", 0.0, "lease_expired"),
    ],
)
def test_lease_renew_requested_at_the_deadline_finds_it_gone(
    phase: str, offset: float, answer: str
) -> None:
    """Seed 10 (fixed): a renewal just before the deadline renews; at the deadline it is too late,
    and the owner is told why (a late acceptance: ``offer_expired``, not ``unknown_lease``)."""
    w = Worker(policy())
    lease_id = accepted_lease(w) if phase == "active" else offered_lease(w)
    deadline = lease(w, lease_id).deadline
    out = w.feed(renew(lease_id, reply_to=7), deadline + offset)
    if answer == "renewed":
        reply = the(out, ReplyRenewed)
        assert reply.reply_to == 7
        assert lease(w, lease_id).deadline == w.t + w.timings.lease_timeout
    else:
        assert the(out, ReplyRenewFailed) == ReplyRenewFailed(7, lease_id, answer)
        assert lease(w, lease_id) is None  # no revival
        assert_nothing_reserved(w.state)


@pytest.mark.parametrize(
    ("asked", "open_for"),
    [
        (0.0, 0.5),  # nothing asked: the worker's offer_timeout
        (2.0, 2.0),  # a loaded scheduler asks for longer
        (0.2, 0.2),
        (60.0, 5.0),  # bounded by max_offer_timeout: a scheduler cannot hold the box for long
        (float("nan"), 0.5),
        (float("inf"), 0.5),
        (-1.0, 0.5),
    ],
)
def test_an_offer_stays_open_as_long_as_the_advertisement_asked_within_the_maximum(
    asked: float, open_for: float
) -> None:
    """Issue 14, item 7: an acceptance 0.61 s after an offer of 0.5 s found it gone. The
    advertisement states the lifetime it needs; the offer's expiry says what was granted, and
    the lease lapses then (an acceptance just before it wins)."""
    w = Worker(policy())
    lease_id = offered_lease(w, offer_lifetime=asked)
    offered_at = w.t
    assert lease(w, lease_id).deadline == offered_at + open_for
    out = w.feed(renew(lease_id, reply_to=3), offered_at + open_for - EPS)
    assert the(out, ReplyRenewed).reply_to == 3


def test_lease_active_renew_requested_by_owner_extends_from_now() -> None:
    """Seed 10: each renewal sets expiry to now + lease_timeout (replacing, not adding)."""
    w = Worker(policy())
    lease_id = offered_lease(w)
    reply = the(w.feed(renew(lease_id, reply_to=1), 0.3), ReplyRenewed)
    assert reply == ReplyRenewed(1, lease_id, WALL0 + 0.3 + 10.0)
    assert lease(w, lease_id).phase == "active"
    w.feed(renew(lease_id, reply_to=2), 1.0)
    w.feed(renew(lease_id, reply_to=3), 2.0)
    assert lease(w, lease_id).deadline == 2.0 + 10.0
    assert next_deadline(w.state) == 12.0


@pytest.mark.parametrize("phase", ["offered", "active"])
def test_lease_renew_requested_by_non_owner_fails_and_changes_nothing(phase: str) -> None:
    """Seed 10: only the owner may renew; a stranger gets not_owner and the lease is untouched."""
    w = Worker(policy())
    lease_id = accepted_lease(w) if phase == "active" else offered_lease(w)
    before = lease(w, lease_id).fields()
    out = w.feed(renew(lease_id, peer=OTHER, reply_to=5))
    assert out.effects == (ReplyRenewFailed(5, lease_id, "not_owner"),)
    assert lease(w, lease_id).fields() == before
    assert w.state.counters["rejected.lease.not_owner"] == 1


def test_lease_renew_requested_unknown_id_fails() -> None:
    """Seed 10: renewing an id the worker never offered gets unknown_lease."""
    w = Worker(policy())
    out = w.feed(renew("00000000-0000-4000-8000-000000000000", reply_to=4))
    assert out.effects == (
        ReplyRenewFailed(4, "00000000-0000-4000-8000-000000000000", "unknown_lease"),
    )
    # The trace names the refused lease and event (replay timelines and telemetry read it),
    # and the step hands back the state it changed.
    assert out.trace == (
        ("lease", "00000000-0000-4000-8000-000000000000", "", "renew_requested", None, REJECTED),
    )
    assert out.state is w.state


def test_lease_offered_offer_failed_releases_at_once_and_only_once() -> None:
    """Seed 11: an undeliverable offer releases its lease immediately; later results are late."""
    w = Worker(policy())
    lease_id = offered_lease(w)
    out = w.feed(OfferFailed(lease_id, "unreachable"))
    assert out.effects == ()
    assert lease(w, lease_id) is None
    assert_nothing_reserved(w.state)
    assert w.state.counters["lease.released.offer_failed"] == 1
    w.tick(5.0)  # its old deadline passes without a second release
    w.feed(OfferDelivered(lease_id))
    assert w.state.counters["late.offer_delivered"] == 1
    released = sum(v for k, v in w.state.counters.items() if k.startswith("lease.released."))
    assert released == 1


def test_lease_active_offer_failed_is_ignored_once_accepted() -> None:
    """An offer-delivery failure reported after the owner accepted does not end the lease."""
    w = Worker(policy())
    lease_id = accepted_lease(w)
    w.feed(OfferFailed(lease_id, "timeout"))
    assert lease(w, lease_id).phase == "active"


# -- seeds 12-16: jobs ---------------------------------------------------------------------


def _refusal_setup(w: Worker, case: str) -> tuple[str, dict]:
    """Prepare a lease for one refusal case; return its id and the dispatch's overrides."""
    if case == "unknown_lease":
        return "00000000-0000-4000-8000-000000000000", {}
    if case == "lease_not_accepted":
        return offered_lease(w), {}
    lease_id = accepted_lease(w)
    if case == "not_owner":
        return lease_id, {"peer": OTHER}
    if case == "lease_busy":
        w.feed(dispatch(lease_id, "job-0"))
        return lease_id, {}
    if case == "duplicate_job":
        other = accepted_lease(w, "req-2")
        w.feed(dispatch(other, "job-1"))
        return lease_id, {}
    if case == "lease_ending":
        w.feed(dispatch(lease_id, "job-0"))
        w.tick(lease(w, lease_id).deadline)  # expires with its job: draining
        return lease_id, {}
    if case == "executor_not_configured":
        return lease_id, {"executor": ExecutorRef(cls="train", name="unknown")}
    assert case == "executor_runtime_mismatch"
    return lease_id, {"executor": MISCONFIGURED}


@pytest.mark.parametrize(
    "reason",
    [
        "unknown_lease",
        "lease_not_accepted",  # fixed: the original ran jobs on unaccepted offers
        "not_owner",
        "lease_busy",
        "duplicate_job",
        "lease_ending",
        "executor_not_configured",  # seed 13: ExecutorConfigMissing
        "executor_runtime_mismatch",  # seed 13: ExecutorNotSupported
    ],
)
def test_lease_dispatch_requested_refused_with_reason(reason: str) -> None:
    """Seeds 12-13: a dispatch that may not run is answered at once and starts nothing."""
    w = Worker(with_misconfigured(policy()))
    lease_id, overrides = _refusal_setup(w, reason)
    jobs_before = set(w.state.records["job"])
    out = w.feed(dispatch(lease_id, "job-1", reply_to=33, **overrides))
    assert out.effects == (ReplyDispatchFailed(33, "job-1", reason),)
    assert set(w.state.records["job"]) == jobs_before


def test_job_starting_job_started_answers_the_deferred_dispatch() -> None:
    """Seed 12 (fixed): the owner's dispatch on an accepted lease starts a job; the reply waits."""
    w = Worker(policy())
    lease_id = accepted_lease(w)
    out = w.feed(dispatch(lease_id, "job-1", reply_to=21))
    assert effects_of(out, ReplyDispatched) == []
    assert effects_of(out, ReplyDispatchFailed) == []
    assert job(w, "job-1").phase == "starting"
    out = w.feed(JobStarted("job-1"), 0.5)
    expiry = lease(w, lease_id).deadline
    assert out.effects == (
        ReplyDispatched(21, "job-1", lease_id, WALL0 + expiry),
        SendJobStatus("job-1", SCHED, "running", None, ""),
    )
    assert job(w, "job-1").phase == "running"


def test_lease_dispatch_requested_start_job_carries_executor_and_work_dir() -> None:
    """Seed 14 (core side): StartJob names the executor, spec, resources and a fresh work dir id."""
    w = Worker(policy())
    first = accepted_lease(w, "req-1", cpu=2.0, memory=3.0)
    second = accepted_lease(w, "req-2")
    start_1 = the(w.feed(dispatch(first, "job-1")), StartJob)
    start_2 = the(w.feed(dispatch(second, "job-2", executor=AGGREGATE)), StartJob)
    assert start_1.executor == ExecutorSpec(
        cls="train", name="diloco-transformer", runtime="process"
    )
    assert start_2.executor.runtime == "parameter-server"
    assert start_1.spec == "{}"
    assert start_1.lease_id == first
    assert start_1.resources == Amounts(cpu=2.0, memory=3.0)
    ids = {start_1.work_dir_id, start_2.work_dir_id, first, second}
    assert len(ids) == 4  # fresh: neither a job id nor a lease id, never repeated
    assert uuid.UUID(start_1.work_dir_id).version == 4
    again = Worker(policy())  # ids come from the seed: the same inputs give the same work dirs
    for now, event in w.inputs:
        again.feed(event, now.mono)
    assert again.outputs[-1].effects == w.outputs[-1].effects


def test_lease_active_lease_expired_with_job_stops_it_and_keeps_the_reservation() -> None:
    """Seed 15 (fixed): expiry stops the job; the capacity is held until every process is gone."""
    w = Worker(policy())
    lease_id = running_job(w)
    held = w.state.reservations[lease_id]
    deadline = lease(w, lease_id).deadline
    assert w.tick(deadline - EPS).effects == ()
    out = w.tick(deadline)
    assert out.effects == (StopJob("job-1", force=False),)
    assert lease(w, lease_id).phase == "draining"
    assert job(w, "job-1").phase == "cancelling"
    assert w.state.reservations == {lease_id: held}
    out = w.feed(renew(lease_id, reply_to=8))
    assert out.effects == (ReplyRenewFailed(8, lease_id, "lease_ending"),)
    out = w.tick(deadline + 15.0)  # kill_grace + kill_retry: the stop is overdue
    assert out.effects == (StopJob("job-1", force=True),)
    w.tick(deadline + 25.0)  # the lease's drain check: still not gone, still held
    assert w.state.counters["lease.drain_overdue"] == 1
    assert w.state.reservations == {lease_id: held}
    out = w.feed(JobExited("job-1", -9), deadline + 26.0)
    assert out.effects == (SendJobStatus("job-1", SCHED, "cancelled", -9, "lease_expired"),)
    assert_nothing_reserved(w.state)
    assert w.state.counters["lease.released.expired"] == 1
    w.feed(StatusDelivered("job-1", "cancelled"))
    assert job(w, "job-1") is None
    assert w.state.counters["job.cancelled"] == 1


def test_job_starting_lease_expired_fails_the_dispatch_and_stops_the_job() -> None:
    """A job still starting when its lease expires: the dispatch fails and the job is stopped."""
    w = Worker(policy())
    lease_id = accepted_lease(w)
    w.feed(dispatch(lease_id, "job-1", reply_to=12))
    out = w.tick(lease(w, lease_id).deadline)
    assert out.effects == (
        ReplyDispatchFailed(12, "job-1", "lease_expired"),
        StopJob("job-1", force=False),
    )


@pytest.mark.parametrize(
    ("code", "status"), [(0, "finished"), (3, "failed"), (-9, "failed"), (137, "failed")]
)
def test_job_running_job_exited_reports_and_releases_the_lease_at_once(
    code: int, status: str
) -> None:
    """Seed 16 (changed by our fix): the exit is reported and the lease released at once."""
    w = Worker(policy())
    lease_id = running_job(w)
    out = w.feed(JobExited("job-1", code), 3.0)
    assert out.effects == (SendJobStatus("job-1", SCHED, status, code, ""),)
    assert lease(w, lease_id) is None
    assert_nothing_reserved(w.state)
    assert w.state.counters["lease.released.job_ended"] == 1
    assert job(w, "job-1").phase == "reporting"
    # The owner's renewal crossing the end is told the job ended (its status is on the way);
    # anyone else learns nothing about the lease.
    out = w.feed(renew(lease_id, reply_to=9))
    assert out.effects == (ReplyRenewFailed(9, lease_id, "job_ended"),)
    out = w.feed(renew(lease_id, peer=OTHER, reply_to=10))
    assert out.effects == (ReplyRenewFailed(10, lease_id, "unknown_lease"),)
    w.feed(StatusDelivered("job-1", "running"))  # a late ack of the running report
    assert job(w, "job-1").phase == "reporting"
    w.feed(StatusDelivered("job-1", status))
    assert job(w, "job-1") is None
    assert w.state.counters[f"job.{status}"] == 1
    assert w.state.counters["job.report.delivered"] == 1


@pytest.mark.parametrize("answer", [None, "failed"])
def test_job_reporting_report_overdue_or_failed_still_ends_the_job(answer: str | None) -> None:
    """An unacknowledged report ends the job exactly report_timeout later; a failed one at once."""
    w = Worker(policy())
    running_job(w)
    w.feed(JobExited("job-1", 0), 3.0)
    if answer == "failed":
        w.feed(StatusFailed("job-1", "finished", "unreachable"), 4.0)
        assert w.state.counters["job.report.failed"] == 1
    else:
        w.tick(3.0 + 10.0 - EPS)
        assert job(w, "job-1") is not None
        w.tick(3.0 + 10.0)
        assert w.state.counters["job.report.overdue"] == 1
    assert job(w, "job-1") is None
    assert w.state.counters["job.finished"] == 1


def test_job_starting_job_start_failed_frees_the_lease_for_another_dispatch() -> None:
    """A job that fails to start is refused to the dispatcher; the lease may carry another job."""
    w = Worker(policy())
    lease_id = accepted_lease(w)
    w.feed(dispatch(lease_id, "job-1", reply_to=3))
    out = w.feed(JobStartFailed("job-1", "no such file"))
    assert out.effects == (ReplyDispatchFailed(3, "job-1", "start_failed", "no such file"),)
    assert job(w, "job-1") is None
    assert lease(w, lease_id).job_id is None
    assert lease(w, lease_id).phase == "active"
    the(w.feed(dispatch(lease_id, "job-2")), StartJob)


def test_job_starting_job_exited_before_confirmation_fails_and_reports() -> None:
    """A job that exits before its start is confirmed: dispatch refused, failure reported."""
    w = Worker(policy())
    lease_id = accepted_lease(w)
    w.feed(dispatch(lease_id, "job-1", reply_to=3))
    out = w.feed(JobExited("job-1", 1))
    assert out.effects == (
        ReplyDispatchFailed(3, "job-1", "exited_during_start"),
        SendJobStatus("job-1", SCHED, "failed", 1, "exited_during_start"),
    )
    assert lease(w, lease_id).job_id is None  # nothing ran: the lease stays, free again


@pytest.mark.parametrize("then", ["exited", "start_failed"])
def test_job_starting_start_overdue_exactly_at_start_timeout(then: str) -> None:
    """A start that takes start_timeout fails the dispatch and stops the job, exactly then."""
    w = Worker(policy())
    lease_id = accepted_lease(w)
    w.feed(dispatch(lease_id, "job-1", reply_to=3))
    started = w.t
    for t in (8.0, 16.0, 24.0, 32.0, 40.0, 48.0, 56.0):  # the owner keeps the lease alive
        w.feed(renew(lease_id), t)
    assert w.tick(started + 60.0 - EPS).effects == ()
    out = w.tick(started + 60.0)
    assert out.effects == (
        ReplyDispatchFailed(3, "job-1", "start_timeout"),
        StopJob("job-1", force=False),
    )
    if then == "exited":
        out = w.feed(JobExited("job-1", -15), started + 61.0)
        assert out.effects == (SendJobStatus("job-1", SCHED, "failed", -15, "start_timeout"),)
    else:  # the executor gives up on the start itself: nothing runs either
        out = w.feed(JobStartFailed("job-1", "killed"), started + 61.0)
        assert out.effects == (SendJobStatus("job-1", SCHED, "failed", None, "start_timeout"),)
    assert lease(w, lease_id).phase == "active"
    assert lease(w, lease_id).job_id is None


# -- seed 17: shutdown ---------------------------------------------------------------------


def test_node_running_shutdown_requested_cancels_everything_then_stops() -> None:
    """Seed 17: shutdown stops every job, drops offers and the window, then NodeStopped once."""
    w = Worker(policy())
    busy = running_job(w)
    offered = offered_lease(w, "req-2")
    w.feed(ad("req-3", t=w.t), w.t)  # held in an open window
    out = w.feed(ShutdownRequested())
    assert out.effects == (StopJob("job-1", force=False),)
    assert lease(w, offered) is None
    assert lease(w, busy).phase == "draining"
    assert busy in w.state.reservations
    assert w.state.counters["declined.shutting_down"] == 1
    w.feed(ad("req-4", t=w.t), w.t)  # no new work
    assert w.state.counters["declined.shutting_down"] == 2
    out = w.feed(JobExited("job-1", -15), w.t + 1.0)
    assert out.effects == (SendJobStatus("job-1", SCHED, "cancelled", -15, "shutdown"),)
    assert_nothing_reserved(w.state)
    out = w.feed(StatusDelivered("job-1", "cancelled"))
    assert out.effects == (NodeStopped("drained"),)
    assert w.feed(ShutdownRequested()).effects == ()  # absorbed once stopped
    assert w.state.counters["late.shutdown_requested"] == 1


def test_node_running_shutdown_requested_with_nothing_live_stops_at_once() -> None:
    """An idle node stops in the same step the shutdown arrives."""
    w = Worker(policy())
    assert w.feed(ShutdownRequested()).effects == (NodeStopped("drained"),)


def test_job_starting_shutdown_fails_the_dispatch_and_stops_the_job() -> None:
    """A job still starting at shutdown: the dispatch is refused and the job is stopped."""
    w = Worker(policy())
    lease_id = accepted_lease(w)
    w.feed(dispatch(lease_id, "job-1", reply_to=3))
    out = w.feed(ShutdownRequested())
    assert out.effects == (
        ReplyDispatchFailed(3, "job-1", "shutting_down"),
        StopJob("job-1", force=False),
    )


def test_node_draining_shutdown_overdue_exactly_at_shutdown_timeout() -> None:
    """A job that never exits: the node gives up exactly shutdown_timeout after the request."""
    w = Worker(policy())
    running_job(w)
    w.feed(ShutdownRequested(), 1.0)
    out = w.tick(1.0 + 30.0 - EPS)
    assert effects_of(out, NodeStopped) == []
    out = w.tick(1.0 + 30.0)
    assert effects_of(out, NodeStopped) == [NodeStopped("timed_out")]


# -- regressions: a deadline re-armed to the instant it already had ------------------------


def _renew_until(w: Worker, lease_id: str, until: float) -> None:
    """The owner renews every 8 s up to ``until``, keeping the lease alive."""
    t = w.t + 8.0
    while t < until:
        w.feed(renew(lease_id), t)
        t += 8.0


def test_job_cancelling_job_exited_exactly_kill_grace_after_the_stop_reports() -> None:
    """The report deadline (exit + 10 s) may equal the stop deadline (stop + 15 s): no crash."""
    w = Worker(policy())
    lease_id = running_job(w)  # lease accepted at 0.2: expires at 10.2
    stop_at = lease(w, lease_id).deadline
    w.tick(stop_at)
    out = w.feed(JobExited("job-1", -15), stop_at + 5.0)
    assert the(out, SendJobStatus).status == "cancelled"
    assert job(w, "job-1").deadline == stop_at + 5.0 + 10.0


def test_job_cancelling_job_exited_at_the_forced_stop_instant_reports() -> None:
    """A job exiting in the very instant its forced stop was sent is reported, not a crash."""
    w = Worker(policy())
    lease_id = running_job(w)
    stop_at = lease(w, lease_id).deadline
    w.tick(stop_at)
    forced_at = job(w, "job-1").deadline
    assert w.tick(forced_at).effects == (StopJob("job-1", force=True),)
    out = w.feed(JobExited("job-1", -9), forced_at)
    assert the(out, SendJobStatus).status == "cancelled"


def test_job_starting_shutdown_exactly_45s_after_dispatch_cancels() -> None:
    """A stop deadline equal to the old start deadline (45 + 15 = 60 s) is still armed."""
    w = Worker(policy())
    lease_id = accepted_lease(w)
    w.feed(dispatch(lease_id, "job-1"))
    dispatched = w.t
    _renew_until(w, lease_id, dispatched + 45.0)
    out = w.feed(ShutdownRequested(), dispatched + 45.0)
    assert StopJob("job-1", force=False) in out.effects
    assert job(w, "job-1").phase == "cancelling"


def test_job_starting_job_exited_exactly_50s_after_dispatch_reports() -> None:
    """A report deadline equal to the old start deadline (50 + 10 = 60 s) is still armed."""
    w = Worker(policy())
    lease_id = accepted_lease(w)
    w.feed(dispatch(lease_id, "job-1"))
    dispatched = w.t
    _renew_until(w, lease_id, dispatched + 50.0)
    out = w.feed(JobExited("job-1", 1), dispatched + 50.0)
    assert the(out, SendJobStatus).status == "failed"
    assert job(w, "job-1").phase == "reporting"
