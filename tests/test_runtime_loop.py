"""The shared runtime loop: its inbox (requests first), and a loop that owns a role's state.

The loop is role-free; these tests drive it with the worker (the scheduler's tests drive it
with the scheduler).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import trio
import trio.testing

from hypha_sm.log.replay import replay
from hypha_sm.log.store import Recorder
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.worker.core.effects import NodeStopped
from hypha_sm.roles.worker.core.events import RenewRequested, ShutdownRequested, Tick
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.runtime.loop import Inbox, LoopStats, Stepper, open_run_log, run_loop
from tests.helpers import SEED, ad, policy


async def test_a_waiting_request_is_taken_before_queued_inputs_which_keep_their_order() -> None:
    """Queued advertisements do not delay a renewal; the queued inputs still go in order."""
    inbox = Inbox(16, Tick)
    queued = [Tick(), ShutdownRequested(), Tick()]
    for event in queued:
        await inbox.send(event)
    renewal = RenewRequested("lease-1", "peer", 1)
    inbox.push_request(renewal)
    taken = [await inbox.next(math.inf) for _ in range(4)]
    assert taken[0] is renewal
    assert taken[1:] == queued
    with trio.fail_after(5):  # nothing left: waits until the deadline, then ticks
        assert await inbox.next(trio.current_time() + 0.01) == Tick()


async def test_a_request_wakes_a_loop_that_waits_for_input() -> None:
    """While the loop waits on an empty inbox, an arriving request is taken at once."""
    inbox = Inbox(16, Tick)
    renewal = RenewRequested("lease-1", "peer", 1)
    taken: list[object] = []
    async with trio.open_nursery() as nursery:

        async def wait() -> None:
            taken.append(await inbox.next(math.inf))

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        inbox.push_request(renewal)
    assert taken == [renewal]


async def test_the_loop_steps_appends_then_performs_and_ends_when_told() -> None:
    """Each input is stepped by the loop's stepper and in the log before its effects are
    performed; the role's "stopped" effect ends the batch, and the log replays."""
    engine, machines_hash = load_engine(WORKER)
    sink = io.BytesIO()
    the_policy = policy("flexible")
    recorder = Recorder(sink, WORKER, machines_hash, the_policy, SEED, fsync="never")
    stepper = Stepper(WORKER, engine, the_policy, SEED, recorder)
    inbox = Inbox(16, Tick)
    stopped = trio.Event()
    performed: list[tuple[object, int]] = []

    def perform(effect: object) -> None:
        # The entry that produced the effect is already in the log.
        performed.append((effect, recorder.seq))
        if isinstance(effect, NodeStopped):
            stopped.set()

    for event in (ad("req-1"), ShutdownRequested()):
        await inbox.send(event)
    stats = LoopStats()
    with trio.fail_after(10):
        await run_loop(stepper, inbox, perform, stopped=stopped, stats=stats)
    assert stats.steps == 2
    assert any(isinstance(e, NodeStopped) for e, _ in performed)
    assert all(seq >= 1 for _, seq in performed)
    report = replay(sink.getvalue().splitlines(keepends=True), engine, machines_hash, role=WORKER)
    assert report.ok
    assert report.events == 2
    assert report.node_stopped


def test_a_runs_log_file_is_private_and_found_as_the_newest_run(tmp_path: Path) -> None:
    """It holds the id seed and job specs: 0600 in a 0700 directory, like a worker's segments;
    named like segment 1, so `hypha-sm replay DIR` picks it."""
    from hypha_sm.log.store import newest_run_of
    from hypha_sm.roles.scheduler.core.role import SCHEDULER

    directory = tmp_path / "events"
    with open_run_log(directory, SCHEDULER) as sink:
        sink.write(b"x")
    (path,) = directory.iterdir()
    assert path.stat().st_mode & 0o777 == 0o600
    assert directory.stat().st_mode & 0o777 == 0o700
    assert newest_run_of(directory, ["worker", "scheduler"]) == [path]
