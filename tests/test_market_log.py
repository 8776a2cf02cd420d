"""The worker says what it does in the market (issue 14, item 1): a line per offer, won lease,
draining and ended lease; the first decline of each reason at once, then declines and renewals
summed up once a minute, whatever their number (a flood costs a line a minute); the run's
totals at stop."""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace

import pytest

from hypha_sm.core.resources import Amounts
from hypha_sm.core.trace import Now
from hypha_sm.roles.worker.core.effects import SendOffer
from hypha_sm.roles.worker.market import MarketLog

OFFER = SendOffer(
    "5d0e7c1a-lease", "req-1", "12D3KooWScheduler", "tcp://s:1", 120.0,
    Amounts(cpu=4.0, memory=16.0), 1.0,
)  # fmt: skip


def step(effects: list[object] = (), trace: list[tuple[object, ...]] = ()) -> SimpleNamespace:  # type: ignore[assignment]
    return SimpleNamespace(effects=list(effects), trace=list(trace))


def test_offers_won_and_ended_leases_are_one_line_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hypha_sm.roles.worker.market")
    market = MarketLog(Counter())
    market.on_step(None, step([OFFER]), Now(0.0, 0.0))
    market.on_step(
        None,
        step(trace=[("lease", "5d0e7c1a-lease", "offered", "renew_requested", "active", 0)]),
        Now(1.0, 1.0),
    )
    market.on_step(
        None,
        step(trace=[("lease", "5d0e7c1a-lease", "active", "expire_due", "released", 3)]),
        Now(2.0, 2.0),
    )
    market.on_step(
        None,
        step(trace=[("lease", "other-lease", "offered", "expire_due", "released", 2)]),
        Now(3.0, 3.0),
    )
    assert [r.getMessage() for r in caplog.records] == [
        "offered lease 5d0e7c1a to scheduler …eduler at price 120 (cpu 4, memory 16); it lapses "
        "unless accepted",
        "lease 5d0e7c1a won: the scheduler accepted the offer",
        "lease 5d0e7c1a ended (expire_due)",
        "lease other-le lapsed unaccepted",
    ]


def test_declines_are_summed_up_once_a_minute_by_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hypha_sm.roles.worker.market")
    counters: Counter[str] = Counter()
    market = MarketLog(counters)
    market.on_step(None, step(), Now(0.0, 0.0))
    for second in range(1, 60):
        counters["declined.below_floor"] += 2  # a flood: 118 declines in a minute
        market.on_step(None, step(), Now(float(second), 0.0))
    assert [r.getMessage() for r in caplog.records] == [
        "declining advertisements: below_floor (from now on summed once a minute)"
    ]
    caplog.clear()
    counters["declined.no_capacity"] += 1
    counters["offers"] += 1
    market.on_step(None, step(), Now(60.0, 0.0))
    assert [r.getMessage() for r in caplog.records] == [
        "declining advertisements: no_capacity (from now on summed once a minute)",
        "market: 1 offer(s) made, 119 advertisement(s) declined (below_floor 118, "
        "no_capacity 1), 0 renewal(s)",
    ]
    market.on_step(None, step(), Now(121.0, 0.0))  # nothing new: no line
    assert len(caplog.records) == 2


def test_renewals_and_draining_are_counted_and_the_stop_says_the_totals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hypha_sm.roles.worker.market")
    counters: Counter[str] = Counter({"offers": 2, "declined.below_floor": 3})
    market = MarketLog(counters)
    market.on_step(None, step(), Now(0.0, 0.0))
    caplog.clear()
    lease = "5d0e7c1a-lease"
    market.on_step(None, step(trace=[("lease", lease, "offered", "renew_requested", "active", 0)]), Now(1.0, 0.0))  # fmt: skip
    for t in (2.0, 3.0, 4.0):
        market.on_step(None, step(trace=[("lease", lease, "active", "renew_requested", "active", 1)]), Now(t, 0.0))  # fmt: skip
    market.on_step(None, step(trace=[("lease", lease, "active", "lease_expired", "draining", 7)]), Now(20.0, 0.0))  # fmt: skip
    market.on_step(None, step(trace=[("lease", lease, "draining", "job_ended", "released", 9)]), Now(21.0, 0.0))  # fmt: skip
    market.stopped()
    assert [r.getMessage() for r in caplog.records] == [
        "lease 5d0e7c1a won: the scheduler accepted the offer",
        "lease 5d0e7c1a expired unrenewed while its job runs: stopping the job",
        "lease 5d0e7c1a ended (job_ended)",
        "market: 0 offer(s) made, 0 advertisement(s) declined, 3 renewal(s)",
        "market totals: 2 offer(s), 1 won, 0 lapsed, 1 ended, 3 renewal(s), 3 advertisement(s) "
        "declined (below_floor 3)",
    ]
