"""The core's defences against market abuse and a full disk, step by step.

- A scheduler holds at most ``max_pending_offers`` unaccepted offers from this node.
- A scheduler that lets ``lapses_before_backoff`` offers in a row lapse (or makes them
  undeliverable) has its advertisements declined for ``backoff_base`` seconds, doubling per
  further lapse up to ``backoff_max``; the node says so (a ``Notice``); a renewal forgives.
- While the disk monitor says the work dir's disk is full, advertisements are refused.
- A job the monitor finds over its storage (or the biggest on a full disk) is stopped and
  reported failed with the figures.
"""

from __future__ import annotations

import pytest

from hypha_sm.roles.worker.core.effects import Notice, SendJobStatus, SendOffer, StartJob, StopJob
from hypha_sm.roles.worker.core.events import (
    JobExited,
    JobOverLimit,
    JobStarted,
    OfferFailed,
    StorageLow,
    StorageRecovered,
    Tick,
)
from tests.helpers import OTHER, SCHED, Worker, ad, dispatch, policy, renew


def offers(out: object) -> list[SendOffer]:
    return [e for e in out.effects if isinstance(e, SendOffer)]  # type: ignore[attr-defined]


def notices(out: object) -> list[Notice]:
    return [e for e in out.effects if isinstance(e, Notice)]  # type: ignore[attr-defined]


def offer_once(w: Worker, n: int, scheduler: str = SCHED) -> list[SendOffer]:
    """One advertisement, its window closed: the offers it got."""
    w.feed(ad(f"req-{n}", scheduler=scheduler, t=w.t))
    return offers(w.advance(w.timings.window_wait))


def test_one_scheduler_holds_at_most_max_pending_offers() -> None:
    """Ten ads from one scheduler in one window: eight offers; another scheduler still gets one."""
    w = Worker(policy("flexible"))
    for n in range(10):
        w.feed(ad(f"req-{n}", cpu=0.1, memory=0.1))
    w.feed(ad("other", cpu=0.1, memory=0.1, scheduler=OTHER))
    out = w.advance(w.timings.window_wait)
    by = [o.scheduler for o in offers(out)]
    assert by.count(SCHED) == w.policy.max_pending_offers == 8
    assert by.count(OTHER) == 1
    assert w.state.counters["declined.too_many_pending_offers"] == 2


@pytest.mark.parametrize("how", ["lapse", "undeliverable"])
def test_a_scheduler_that_lets_offers_lapse_is_backed_off_then_forgiven(how: str) -> None:
    """Three lapses in a row: a notice, and its ads are declined for 10 s; then offered again;
    one more lapse: 20 s; a renewal forgives everything."""
    w = Worker(policy("whole"))
    for n in range(3):
        (offer,) = offer_once(w, n)
        if how == "lapse":
            out = w.advance(w.timings.offer_timeout)
        else:
            out = w.feed(OfferFailed(offer.lease_id, "unreachable"))
        if n < 2:
            assert notices(out) == []
    (notice,) = notices(out)
    assert notice.kind == "scheduler_backoff"
    assert "3 offers in a row" in notice.detail
    assert "10 s" in notice.detail
    assert offer_once(w, 10) == []  # declined: backed off
    assert w.state.counters["declined.scheduler_backoff"] == 1
    assert offer_once(w, 11, scheduler=OTHER)  # others are not affected
    w.advance(w.timings.offer_timeout)  # OTHER's offer lapses (its first)
    w.advance(10.0)
    (offer,) = offer_once(w, 12)  # the backoff is over
    (notice,) = notices(w.advance(w.timings.offer_timeout))
    assert "4 offers in a row" in notice.detail
    assert "20 s" in notice.detail
    w.advance(20.0)
    (offer,) = offer_once(w, 13)
    w.feed(renew(offer.lease_id))  # accepted: the lapses are forgiven
    assert SCHED not in w.state.lapses


def test_backoff_doubles_up_to_its_maximum() -> None:
    """Lapse after lapse, the backoff doubles and stops at backoff_max (600 s)."""
    w = Worker(policy("whole"))
    seen = []
    for n in range(12):
        w.advance(700.0 if n == 0 else seen[-1] if seen else 0.0)
        (offer,) = offer_once(w, n)
        out = w.advance(w.timings.offer_timeout)
        seen.extend(float(n.detail.rsplit(" for ", 1)[1].split(" s")[0]) for n in notices(out))
    assert seen == [10, 20, 40, 80, 160, 320, 600, 600, 600, 600]
    _ = offer


def test_a_full_disk_stops_offers_until_it_has_room_again() -> None:
    """StorageLow: a notice; every advertisement is refused; StorageRecovered: offers again."""
    w = Worker(policy("flexible"))
    out = w.feed(StorageLow(4096, "event log write failed: No space left on device"))
    (notice,) = notices(out)
    assert notice.kind == "storage_full"
    assert "4096 bytes free" in notice.detail
    assert offer_once(w, 1) == []
    assert w.state.counters["declined.storage_full"] == 1
    assert w.state.records["node"]["node"].phase == "storage_full"
    (notice,) = notices(w.feed(StorageRecovered(1 << 30)))
    assert notice.kind == "storage_recovered"
    assert offer_once(w, 2)


def _running_job(w: Worker) -> str:
    (offer,) = offer_once(w, 1)
    w.feed(renew(offer.lease_id))
    started = w.feed(dispatch(offer.lease_id, job_id="job-1"))
    assert any(isinstance(e, StartJob) for e in started.effects)
    w.feed(JobStarted("job-1"))
    return offer.lease_id


@pytest.mark.parametrize("reason", ["storage_exceeded", "disk_full"])
def test_a_job_over_a_limit_is_stopped_and_reported_failed_with_the_figures(reason: str) -> None:
    """The monitor's finding stops the job; once gone it is reported failed, with the detail."""
    w = Worker(policy("flexible"))
    _running_job(w)
    out = w.feed(JobOverLimit("job-1", reason, "12.1 GB used of 10 GB"))
    assert [type(e) for e in out.effects] == [StopJob]
    out = w.feed(JobExited("job-1", -15))
    (status,) = [e for e in out.effects if isinstance(e, SendJobStatus)]
    assert status.status == "failed"
    assert status.reason == f"{reason}: 12.1 GB used of 10 GB"
    assert w.state.counters[f"job.over_limit.{reason}"] == 1


def test_a_late_finding_about_a_job_that_ended_is_counted_not_fatal() -> None:
    """The monitor measured a job that has exited since: counted as late."""
    w = Worker(policy("flexible"))
    w.feed(Tick())
    out = w.feed(JobOverLimit("gone-job", "storage_exceeded"))
    assert out.effects == ()
    assert w.state.counters["late.job_over_limit"] == 1
