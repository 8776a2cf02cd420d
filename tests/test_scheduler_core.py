"""The scheduler's pure core: its machines run by scripted inputs, its invariants by Hypothesis.

Invariants (``World.check``, after every step): never more leases kept than wanted (hedged
acceptances overshoot only while still accepting), never a dispatch on a lease it does not
hold, every held lease renewed before its expiry (or found lost at it), nothing decided after
the run ended.
"""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hypha_sm.cli import main
from hypha_sm.log.codec import Entry, encode_entry, encode_header
from hypha_sm.log.replay import replay
from hypha_sm.log.store import make_header
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.scheduler.core import effects as fx
from hypha_sm.roles.scheduler.core import events as ev
from hypha_sm.roles.scheduler.core.machines import STATUS_GRACE
from hypha_sm.roles.scheduler.core.role import SCHEDULER
from hypha_sm.roles.scheduler.core.state import HELD
from hypha_sm.roles.scheduler.examples import render
from hypha_sm.roles.scheduler.scheduler import allocation_line, describe_progress
from hypha_sm.wire import messages as m
from tests.scheduler_world import (
    ENOUGH,
    PEERS,
    TOO_SMALL,
    World,
    plan,
    random_walk,
    slice_input,
)


def started(workers: int = 2, **timings: Any) -> World:
    """A world whose scheduler has located its gateway and published its advertisement."""
    world = World(plan(workers, **timings))
    world.feed(ev.Begin())
    world.answer(world.take(fx.LocateGateways))
    world.answer(world.take(fx.Publish))
    return world


def placed(workers: int = 2, **options: Any) -> World:
    """A world whose job is dispatched to ``workers`` workers that took it."""
    world = started(workers, **options)
    for i in range(workers):
        world.offer(PEERS[i], f"L{i}", price=50.0 + i)
    world.advance(0.2)  # offer_wait passed: accept the cheapest
    while (accept := world.take(fx.AcceptLease)) is not None:
        world.answer(accept)
        world.advance(0.06)  # the hedge: the next offer is tried
    while (dispatch := world.take(fx.DispatchJob)) is not None:
        world.answer(dispatch)
    assert world.state.records["allocation"]["job"].phase == "held"
    return world


def of(kind: type, effects: list[fx.Effect]) -> list:
    return [e for e in effects if isinstance(e, kind)]


def test_the_cheapest_offers_are_accepted_and_the_job_dispatched_to_them_in_that_order() -> None:
    """Three offers for two workers: 50 and 60 win over 80, in price order; the job's workers
    are listed in that order with each one's index."""
    world = started(2)
    world.offer(PEERS[0], "dear", price=80.0)
    world.offer(PEERS[1], "cheap", price=50.0)
    world.offer(PEERS[2], "middle", price=60.0)
    effects = world.advance(0.2)
    assert [e.lease_id for e in of(fx.AcceptLease, effects)] == ["cheap"]
    world.answer(world.take(fx.AcceptLease))
    assert [e.lease_id for e in of(fx.AcceptLease, world.effects)] == ["cheap", "middle"]
    world.answer(world.take(fx.AcceptLease))
    dispatches = of(fx.DispatchJob, world.effects)
    assert [(d.lease_id, d.index) for d in dispatches] == [("cheap", 0), ("middle", 1)]
    assert dispatches[0].workers == (PEERS[1], PEERS[2])
    assert world.state.placed == ["cheap", "middle"]
    assert "dear" not in world.state.records["placement"]  # never tried


@pytest.mark.parametrize(
    ("price", "resources", "request_id", "reason"),
    [
        (90.0, ENOUGH, None, ""),
        (150.0, ENOUGH, None, "offer_not_taken"),  # dearer than the bid
        (-1.0, ENOUGH, None, "offer_not_taken"),
        (math.nan, ENOUGH, None, "offer_not_taken"),
        (math.inf, ENOUGH, None, "offer_not_taken"),
        (90.0, TOO_SMALL, None, "offer_not_taken"),
        (90.0, ENOUGH, "an-old-request", "unknown_request"),
    ],
)
def test_an_offer_is_taken_or_refused_at_once_with_a_reason(
    price: float, resources: object, request_id: str | None, reason: str
) -> None:
    """The worker hears straight away whether its offer is in the running."""
    world = started(1)
    effects = world.offer(PEERS[0], "L0", price, resources, request_id)  # type: ignore[arg-type]
    assert of(fx.ReplyOffer, effects) == [fx.ReplyOffer(world.replies, "L0", reason)]


def test_a_second_offer_from_a_worker_or_for_a_lease_is_refused() -> None:
    """One offer per worker and per lease id: a lease id that collides cannot reach the core's
    records (it would be an invariant break), and one worker cannot take two places."""
    world = started(2)
    assert of(fx.ReplyOffer, world.offer(PEERS[0], "L0"))[0].reason == ""
    assert of(fx.ReplyOffer, world.offer(PEERS[0], "L1"))[0].reason == "offer_not_taken"
    assert of(fx.ReplyOffer, world.offer(PEERS[1], "L0"))[0].reason == "offer_not_taken"


def test_without_offers_it_advertises_again_with_a_new_request_id_then_gives_up() -> None:
    """No offer within a second: a new advertisement; at advertise_timeout: the reason."""
    world = started(2, advertise_timeout=3.0)
    first = of(fx.Publish, world.effects)[0].request_id
    world.advance(1.0)
    again = world.take(fx.Publish)
    assert again.request_id != first
    world.answer(again)
    world.offer(PEERS[0], "L0")
    world.advance(0.2)
    world.answer(world.take(fx.AcceptLease))  # one of two
    for _ in range(12):
        if (publish := world.take(fx.Publish)) is not None:
            world.answer(publish)
        if (renew := world.take(fx.RenewLease)) is not None:
            world.answer(renew)
        world.advance(0.3)
    # ... and says what its advertisements got (issue 14, item 6: it gave no reason).
    why = "only 1 of 2 workers accepted within 3 s: 1 offer(s)"
    assert world.state.finished == (False, why)
    assert of(fx.Finished, world.effects) == [fx.Finished(False, why)]
    assert world.state.ended["L0"].phase == "released"  # let go on purpose, never renewed again


def test_no_gateway_gives_up_with_that_reason() -> None:
    world = World(plan(1, advertise_timeout=2.0))
    world.feed(ev.Begin())
    for _ in range(6):
        if (locate := world.take(fx.LocateGateways)) is not None:
            world.answer(locate, ok=False)
        world.advance(0.5)
    assert world.state.finished == (False, "no gateway answered within 2 s")


def test_a_held_lease_is_renewed_before_the_expiry_the_worker_gave() -> None:
    """renew_interval 1 s, but the worker says its lease lasts 0.4 s: renewals come every 0.2 s
    (half the time left), each before the expiry."""
    world = started(1)
    world.offer(PEERS[0], "L0")
    world.advance(0.2)
    accept = world.take(fx.AcceptLease)
    world.feed(ev.LeaseAccepted(accept.lease_id, 1_764_000_000.0 + world.mono + 0.4))
    rec = world.state.records["placement"]["L0"]
    assert rec.deadline == pytest.approx(world.mono + 0.2)
    world.advance(0.19)
    assert world.take(fx.RenewLease) is None
    world.advance(0.02)
    assert world.take(fx.RenewLease) is not None


def test_renewals_that_fail_until_the_expiry_lose_the_lease_at_the_expiry() -> None:
    """The last renewal deadline is the expiry itself: there the lease is lost, not believed."""
    world = placed(1)
    rec = world.state.records["placement"]["L0"]
    expiry = rec.expires_mono
    while world.mono < expiry:
        world.advance(0.5)
        if (renew := world.take(fx.RenewLease)) is not None:
            world.answer(renew, ok=False)
    assert "L0" not in world.state.records["placement"]
    assert world.state.ended["L0"].phase == "lost"
    assert world.state.finished == (False, "")


def test_a_refused_renewal_loses_the_lease_and_the_run_ends_when_every_part_ended() -> None:
    world = placed(2)
    world.advance(1.0)
    world.answer(world.take(fx.RenewLease), ok=False, refused=True)
    assert world.state.ended["L0"].phase == "lost"
    job = world.job_of("L1")
    assert job is not None
    world.feed(ev.StatusReceived(world.token(), PEERS[1], job, "finished", 0))
    assert world.state.finished == (False, "")
    assert of(fx.Finished, world.effects) == [fx.Finished(False, "")]


def test_a_lease_let_go_because_its_job_ended_waits_for_the_final_status() -> None:
    """The worker ends the job and lets the lease go at once, so a renewal may be refused
    (``job_ended``) before the job's "finished" arrives: the placement waits for it and
    finishes, rather than being counted lost; without a status it is lost, saying why."""
    world = placed(2)
    world.advance(1.0)
    world.answer(world.take(fx.RenewLease), ok=False, refused=True, why="job_ended")
    assert world.state.records["placement"]["L0"].phase == "ending"
    job = world.job_of("L0")
    assert job is not None
    world.feed(ev.StatusReceived(world.token(), PEERS[0], job, "running", 0))  # overtaken
    assert world.state.records["placement"]["L0"].phase == "ending"
    world.feed(ev.StatusReceived(world.token(), PEERS[0], job, "finished", 0))
    assert world.state.ended["L0"].phase == "finished"

    world = placed(1, timeout=120.0)
    world.advance(1.0)
    world.answer(world.take(fx.RenewLease), ok=False, refused=True, why="job_ended")
    assert world.state.records["placement"]["L0"].phase == "ending"
    world.advance(STATUS_GRACE)
    lost = world.state.ended["L0"]
    assert (lost.phase, lost.reason) == (
        "lost",
        f"the job ended on the worker but its status did not come in {STATUS_GRACE:g} s",
    )
    assert world.state.finished == (False, "")


def test_a_running_report_that_overtakes_the_dispatch_answer_is_logged_in_order() -> None:
    """Issue 14, item 8: "running" was logged before "dispatched" when the worker's report
    overtook its answer to the dispatch; now one line says both, and the late answer adds none."""
    world = started(1)
    world.offer(PEERS[0], "L0", price=50.0)
    world.advance(0.2)
    world.answer(world.take(fx.AcceptLease))
    dispatch = world.take(fx.DispatchJob)
    effects = world.feed(ev.StatusReceived(world.token(), PEERS[0], dispatch.job_id, "running"))
    effects += world.feed(ev.Dispatched("L0"))
    lines = [e.text for e in of(fx.Notice, effects)]
    assert lines == [f"worker …{PEERS[0][-6:]} job {dispatch.job_id} dispatched and running"], (
        lines
    )


def test_statuses_and_progress_count_only_from_the_worker_the_job_was_sent_to() -> None:
    """A stranger's status is refused; progress is answered ``continue`` after an update was
    received, else ``ok``; an unknown job is refused."""
    world = placed(1)
    job = world.job_of("L0")
    assert job is not None
    effects = world.feed(ev.StatusReceived(world.token(), "12D3KooWStranger", job, "finished", 0))
    assert of(fx.ReplyStatus, effects)[0].reason == "unknown_job"
    effects = world.feed(ev.ProgressReceived(world.token(), PEERS[0], job, "update-received", "x"))
    assert of(fx.ReplyProgress, effects)[0].reply == "continue"
    effects = world.feed(ev.ProgressReceived(world.token(), PEERS[0], job, "round-metrics", "x"))
    assert of(fx.ReplyProgress, effects)[0].reply == "ok"
    effects = world.feed(ev.ProgressReceived(world.token(), PEERS[0], "other", "x", "y"))
    assert of(fx.ReplyProgress, effects)[0].reason == "unknown_job"
    effects = world.feed(ev.StatusReceived(world.token(), PEERS[0], job, "finished", 0))
    assert world.state.finished == (True, "")


def test_progress_costs_a_counter_not_memory() -> None:
    """10,000 progress reports leave the state as large as one does: counted and logged."""
    world = placed(1)
    job = world.job_of("L0")
    assert job is not None
    for _ in range(10_000):
        world.feed(ev.ProgressReceived(world.token(), PEERS[0], job, "round-metrics", "x"))
    assert world.state.counters["progress"] == 10_000
    rec = world.state.records["placement"]["L0"]
    assert set(rec.fields()) == {
        "key",
        "phase",
        "deadline",
        "address",
        "batch_size",
        "expires_mono",
        "group",
        "job_id",
        "price",
        "renew_at",
        "renew_every",
        "worker",
    }


def test_the_job_timeout_lets_every_lease_go() -> None:
    world = placed(2)
    for _ in range(40):
        for renew in of(fx.RenewLease, world.open):
            world.open.remove(renew)
            world.answer(renew)
        world.advance(1.0)
    assert world.state.finished is not None
    assert world.state.finished[1].startswith("timed out")
    assert {e.phase for e in world.state.ended.values()} == {"released"}


def test_a_stop_lets_every_lease_go_and_ends_the_run() -> None:
    world = placed(2)
    effects = world.feed(ev.StopRequested())
    assert of(fx.Finished, effects) == [fx.Finished(False, "stopped")]
    assert not world.state.records["placement"]


def test_results_and_reports_after_the_end_are_counted_not_crashes() -> None:
    world = placed(1)
    job = world.job_of("L0")
    world.feed(ev.StopRequested())
    world.feed(ev.Renewed("L0", 0.0))
    world.feed(ev.Published("old"))
    world.feed(ev.GatewaysLocated(("x",)))
    effects = world.offer(PEERS[3], "late")
    assert of(fx.ReplyOffer, effects)[0].reason == "unknown_request"
    assert job is not None
    effects = world.feed(ev.StatusReceived(world.token(), PEERS[0], job, "finished", 0))
    assert of(fx.ReplyStatus, effects)[0].reason == "unknown_job"
    assert world.state.counters["late.renewed"] == 1


def test_a_scheduler_run_replays_from_its_log_to_the_same_effects() -> None:
    """The scheduler's inputs, written as an event log, replay to the recorded effects."""
    world = random_walk(random.Random(7), steps=300)
    sink = io.BytesIO()
    sink.write(
        encode_header(
            make_header(world.machines_hash, world.plan, world.seed, "scheduler"), SCHEDULER
        )
    )
    fresh = World(world.plan, world.seed)
    for seq, (now, event) in enumerate(world.inputs, start=1):
        fresh.mono = now.mono
        effects = fresh.feed(event)
        sink.write(encode_entry(Entry(seq, now.mono, now.wall, event, effects), SCHEDULER))
    engine, machines_hash = load_engine(SCHEDULER)
    report = replay(
        sink.getvalue().splitlines(keepends=True), engine, machines_hash, role=SCHEDULER
    )
    assert report.ok, report.divergence
    assert report.events == len(world.inputs)


@pytest.mark.parametrize("seed", range(40))
def test_random_runs_keep_the_invariants(seed: int) -> None:
    """Random offers (hostile ones too), answers in any order or never, time jumps."""
    world = random_walk(random.Random(seed), steps=400)
    assert world.inputs


class SchedulerMachine(RuleBasedStateMachine):
    """Hypothesis drives the world; ``World.check`` asserts the invariants after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World(
            plan(2, advertise_timeout=20.0, timeout=30.0, dataset="d", slice_timeout=5.0)
        )
        self.world.slices = 4
        self.world.feed(ev.Begin())
        self.leases = 0

    @precondition(lambda self: bool(self.world.open))
    @rule(pick=st.integers(0, 50), ok=st.booleans(), refused=st.booleans())
    def answer(self, pick: int, ok: bool, refused: bool) -> None:
        effect = self.world.open.pop(pick % len(self.world.open))
        self.world.answer(effect, ok=ok, refused=refused)

    @rule(
        peer=st.sampled_from(PEERS),
        price=st.sampled_from([50.0, 90.0, 99.0, 100.0, 150.0, -1.0, math.nan, math.inf]),
        small=st.booleans(),
        reuse=st.booleans(),
    )
    def offer(self, peer: str, price: float, small: bool, reuse: bool) -> None:
        self.leases += 1
        lease = "L1" if reuse else f"L{self.leases}"
        self.world.offer(peer, lease, price, TOO_SMALL if small else ENOUGH)

    @precondition(lambda self: bool(self.world.state.jobs))
    @rule(
        pick=st.integers(0, 10),
        status=st.sampled_from(["running", "finished", "failed", "cancelled"]),
        stranger=st.booleans(),
        progress=st.booleans(),
    )
    def report(self, pick: int, status: str, stranger: bool, progress: bool) -> None:
        jobs = sorted(self.world.state.jobs.items())
        job_id, lease_id = jobs[pick % len(jobs)]
        rec = self.world.state.records["placement"].get(lease_id)
        peer = "12D3KooWStranger" if stranger or rec is None else rec.worker
        token = self.world.token()
        if progress:
            self.world.feed(ev.ProgressReceived(token, peer, job_id, "update-received", "x"))
        else:
            self.world.feed(ev.StatusReceived(token, peer, job_id, status, 0, ""))  # type: ignore[arg-type]

    @precondition(lambda self: bool(self.world.state.jobs))
    @rule(seed=st.integers(0, 2**16))
    def slice(self, seed: int) -> None:
        """A slice request or "done", mostly from the job's workers (World.check: no slice held
        by two workers or by a lost one, each done once per epoch)."""
        slice_input(self.world, random.Random(seed))

    @rule(seconds=st.sampled_from([0.01, 0.05, 0.2, 0.5, 1.0, 3.0, 40.0]))
    def wait(self, seconds: float) -> None:
        self.world.advance(seconds)

    @rule()
    def stop(self) -> None:
        self.world.feed(ev.StopRequested())

    @invariant()
    def held_leases_have_renewals_before_expiry(self) -> None:
        for rec in self.world.state.records["placement"].values():
            if rec.phase in HELD:
                assert rec.deadline <= rec.expires_mono


TestSchedulerMachine = SchedulerMachine.TestCase


SCHEDULER_LOGS = Path(__file__).resolve().parent.parent / "specs" / "logs" / "scheduler"


def test_the_scheduler_golden_logs_are_what_the_scenarios_record_today() -> None:
    """specs/logs/scheduler/ is regenerated by `python -m hypha_sm.roles.scheduler.examples`."""
    engine, machines_hash = load_engine(SCHEDULER)
    rendered = render(engine, machines_hash)
    assert sorted(rendered) == sorted(p.name for p in SCHEDULER_LOGS.glob("*.jsonl"))
    for name, data in rendered.items():
        assert data == (SCHEDULER_LOGS / name).read_bytes(), f"{name} is stale: regenerate it"


@pytest.mark.parametrize("name", ["job-runs", "lease-lost", "gives-up"])
def test_each_scheduler_golden_log_replays_through_the_cli(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hypha-sm replay` reads the role from the header and re-derives every effect."""
    assert main(["replay", str(SCHEDULER_LOGS / f"{name}.jsonl"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["role"] == "scheduler"
    assert summary["ok"] is True
    assert summary["node_stopped"] is True  # every scenario runs to its end


def test_a_log_of_an_unknown_role_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    header = json.loads((SCHEDULER_LOGS / "job-runs.jsonl").read_text().splitlines()[0])
    (tmp_path / "x.jsonl").write_text(json.dumps({**header, "role": "oracle"}) + "\n")
    assert main(["replay", str(tmp_path / "x.jsonl")]) == 2
    assert "a log of role 'oracle', which this version does not run" in capsys.readouterr().err


def test_a_progress_line_shows_a_dozen_metrics_and_how_many_more_there_were() -> None:
    """A report of 256 metrics is one bounded log line (the core logs it, keeps none)."""
    metrics = {f"metric-{i:03d}": float(i) for i in range(m.MAX_METRICS)}
    line = describe_progress(m.RoundMetrics(1, metrics))
    assert line.endswith("(+244 more)")
    assert len(line) < 400


# -- slices -------------------------------------------------------------------------------------


def with_data(workers: int, slices: int, **options: Any) -> World:
    """A job on ``workers`` workers (PEERS[0..]) with a dataset of ``slices`` slices."""
    world = placed(workers, dataset="d", **options)
    world.slices = slices
    world.answer(world.take(fx.LocateDataset))
    for i in range(workers):
        world.feed(ev.StatusReceived(world.token(), PEERS[i], world.job_of(f"L{i}"), "running"))
    return world


def ask(world: World, worker: int) -> fx.ReplySlice | fx.ReplyNoSlice:
    effects = world.feed(
        ev.SliceRequested(world.token(), PEERS[worker], world.job_of(f"L{worker}"), "d")
    )
    (reply,) = [e for e in effects if isinstance(e, (fx.ReplySlice, fx.ReplyNoSlice))]
    return reply


def done(world: World, worker: int, index: int) -> fx.ReplySliceDone:
    effects = world.feed(
        ev.SliceDone(world.token(), PEERS[worker], world.job_of(f"L{worker}"), "d", index)
    )
    (reply,) = of(fx.ReplySliceDone, effects)
    return reply


def take(world: World, worker: int) -> int:
    reply = ask(world, worker)
    assert isinstance(reply, fx.ReplySlice), reply
    return reply.index


def test_golden_slice_tracker_alternating_workers_then_affinity_in_the_next_epoch() -> None:
    """hypha-execution.md §16.4: 7 slices, p1 and p2 alternating: 0..6; in the next epoch p2
    gets 1 and p1 gets 0 (each its own slices first)."""
    world = with_data(2, 7)
    handed = []
    for n in range(7):
        index = take(world, n % 2)
        handed.append(index)
        assert done(world, n % 2, index).reason == ""
    assert handed == [0, 1, 2, 3, 4, 5, 6]
    assert take(world, 1) == 1
    assert take(world, 0) == 0
    assert world.state.epoch == 2


def test_a_worker_without_slices_of_its_own_takes_from_the_worker_with_the_fewest_left() -> None:
    """Stealing: counted from one (the original counted from zero), ties to the worker whose
    first such slice has the lowest index (the original used hash-map order)."""
    world = with_data(3, 7)
    for worker, count in ((0, 3), (1, 2), (2, 2)):
        for _ in range(count):
            done(world, worker, take(world, worker))
    # Epoch 2: workers 0, 1, 2 own slices {0,1,2}, {3,4}, {5,6}.
    assert [world.state.records["slice"][str(i)].owner for i in range(7)] == [PEERS[0]] * 3 + [
        PEERS[1]
    ] * 2 + [PEERS[2]] * 2
    # Worker 2 first takes its own two, then steals: worker 1 has two left, worker 0 three.
    assert [take(world, 2), take(world, 2), take(world, 2)] == [5, 6, 3]


def test_a_steal_between_equal_shares_takes_from_the_lowest_first_slice() -> None:
    world = with_data(3, 6)
    for worker in (0, 1, 2):
        for _ in range(2):
            done(world, worker, take(world, worker))
    # Epoch 2: after its own 4 and 5, worker 2 finds workers 0 and 1 with two slices each:
    # worker 0's first slice (0) is lower than worker 1's (2).
    assert [take(world, 2), take(world, 2), take(world, 2)] == [4, 5, 0]


def test_every_slice_is_used_once_per_epoch_and_the_next_waits_for_the_last_done() -> None:
    """No new epoch while a slice is still out: the others are told to ask again later."""
    world = with_data(2, 2)
    a, b = take(world, 0), take(world, 1)
    done(world, 0, a)
    reply = ask(world, 0)
    assert reply == fx.ReplyNoSlice(world.replies, "no_slice_free", 1.0)
    done(world, 1, b)
    assert take(world, 0) == a  # epoch 2, its own slice first
    assert world.state.epoch == 2


def test_epochs_end_when_the_plan_says() -> None:
    world = with_data(1, 1, epochs=2)
    for _ in range(2):
        done(world, 0, take(world, 0))
    assert ask(world, 0) == fx.ReplyNoSlice(world.replies, "epochs_done", 0.0)


def test_a_lost_workers_slice_goes_back_to_the_pool_for_another_worker() -> None:
    world = with_data(2, 2)
    index = take(world, 0)
    take(world, 1)
    world.feed(ev.StatusReceived(world.token(), PEERS[0], world.job_of("L0"), "failed", 1))
    assert world.state.records["slice"][str(index)].phase == "available"
    assert take(world, 1) == index  # worker 1 gets it (stolen from the lost worker's share)


def test_a_slice_not_reported_done_in_time_goes_back_to_the_pool() -> None:
    world = with_data(1, 1, slice_timeout=5.0, renew_interval=1.0)
    index = take(world, 0)
    for _ in range(6):  # keep the lease renewed meanwhile
        if (renew := world.take(fx.RenewLease)) is not None:
            world.answer(renew)
        world.advance(1.0)
    assert world.state.records["slice"][str(index)].phase == "available"
    assert world.state.counters["slices.reclaimed.timeout"] == 1
    assert done(world, 0, index).reason == "slice_not_assigned"


@pytest.mark.parametrize(
    ("who", "job", "dataset", "reason"),
    [
        ("12D3KooWStranger", "L0", "d", "unknown_job"),  # not a worker of the job
        (PEERS[0], "L1", "d", "unknown_job"),  # another worker's job
        (PEERS[0], "L0", "other", "unknown_dataset"),
    ],
)
def test_slice_requests_from_outside_the_job_are_refused(
    who: str, job: str, dataset: str, reason: str
) -> None:
    world = with_data(2, 3)
    effects = world.feed(ev.SliceRequested(world.token(), who, world.job_of(job), dataset))
    assert of(fx.ReplyNoSlice, effects) == [fx.ReplyNoSlice(world.replies, reason, 0.0)]


def test_only_the_holder_can_report_a_slice_done() -> None:
    world = with_data(2, 3)
    index = take(world, 0)
    assert done(world, 1, index).reason == "slice_not_yours"
    assert done(world, 0, index).reason == ""
    assert done(world, 0, index).reason == "slice_already_done"
    assert done(world, 0, 99).reason == "unknown_slice"


def test_an_unknown_dataset_is_looked_up_again_on_demand_once_at_a_time() -> None:
    world = placed(1, dataset="d")
    world.answer(world.take(fx.LocateDataset), ok=False)
    world.feed(ev.StatusReceived(world.token(), PEERS[0], world.job_of("L0"), "running"))
    assert ask(world, 0) == fx.ReplyNoSlice(world.replies, "dataset_unavailable", 1.0)
    assert ask(world, 0).reason == "dataset_unavailable"  # type: ignore[union-attr]
    assert len(of(fx.LocateDataset, world.open)) == 1  # one lookup in flight, not one per ask
    world.answer(world.take(fx.LocateDataset))
    assert take(world, 0) == 0


@pytest.mark.parametrize("slices", [0, 100_001])
def test_a_dataset_record_with_an_impossible_slice_count_is_refused(slices: int) -> None:
    world = placed(1, dataset="d")
    world.feed(ev.DatasetFound("d", slices, "sha256:m", ("dn1",)))
    assert world.state.dataset is None
    assert not world.state.records["slice"]
    assert world.state.counters["dataset.refused"] == 1


def test_grants_spread_over_the_data_nodes_by_slice_index() -> None:
    world = with_data(1, 3)
    replies = [ask(world, 0) for _ in range(3)]
    assert [r.providers for r in replies] == [  # type: ignore[union-attr]
        ("dn1", "dn2"),
        ("dn2", "dn1"),
        ("dn1", "dn2"),
    ]


def test_a_lease_timeline_of_a_scheduler_log_names_the_lease_asked_for(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The timeline follows the lease's job too, but is titled by the lease asked for."""
    assert main(["replay", str(SCHEDULER_LOGS / "lease-lost.jsonl"), "--lease", "lease-a"]) == 0
    out = capsys.readouterr().out
    assert "timeline of lease lease-a:" in out
    assert "dispatch_job lease_id=lease-a" in out
    assert "placement dispatched -> lost on renew_due" in out  # at its expiry


def test_giving_up_says_why_the_offers_were_not_enough() -> None:
    """Too dear and too small offers are counted in the reason; no offer at all says so."""
    world = started(2, advertise_timeout=2.0)
    world.offer(PEERS[0], "dear", price=500.0)
    world.offer(PEERS[1], "small", price=50.0, resources=TOO_SMALL)
    for _ in range(12):
        world.advance(0.3)
    reason = world.state.finished[1]
    assert reason == (
        "only 0 of 2 workers accepted within 2 s: 2 offer(s), 2 refused as too dear or too "
        "small (see the lines above)"
    )
    lonely = started(1, advertise_timeout=2.0)
    for _ in range(12):
        lonely.advance(0.3)
    assert lonely.state.finished[1].endswith(
        "no worker offered: none is subscribed at the gateways, or each declined (busy, below "
        "its price floor, too small, or without this executor: its log says which)"
    )


def test_while_placing_one_line_says_how_it_goes() -> None:
    """The wait up to advertise_timeout is not silent: offers seen, refused by reason, leases
    held of those wanted; no line once the job is placed."""
    world = started(2, advertise_timeout=20.0)
    assert allocation_line(world.state, 0.4) == (
        "placing the job (collecting, 0 of 20 s): 0 offer(s) seen, 0 of 2 lease(s) held"
    )
    world.offer(PEERS[0], "L0", price=50.0)
    world.offer(PEERS[1], "L1", price=500.0)  # over the bid
    world.advance(0.2)
    world.answer(world.take(fx.AcceptLease))
    line = allocation_line(world.state, 3.0)
    assert line == (
        "placing the job (advertising, 3 of 20 s): 2 offer(s) seen, 1 refused "
        "(offer_not_taken 1), 1 of 2 lease(s) held"
    ), line
    assert allocation_line(placed(1).state, 9.0) is None
