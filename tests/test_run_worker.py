"""`run_worker` end to end on real NNG sockets with a real job process and its bridge."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from hypha_sm.config.worker import WorkerSettings
from hypha_sm.log.replay import replay, replay_series
from hypha_sm.log.store import newest_run, read_lines, read_series
from hypha_sm.machines_io import load_engine
from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint, Publisher
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.roles.worker.run import run_worker
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import Identity
from tests.helpers import process_alive
from tests.netkit import running_gateway, wait_connected, wait_healthy

pytestmark = pytest.mark.net

SCHED = Identity.from_seed(bytes([31]) * 32)
GATEWAY = Identity.from_seed(bytes([32]) * 32)
TRAIN = m.Executor(cls="train", name="echo")
JOB = (
    "import os, sys, pathlib; "
    "pathlib.Path('out.txt').write_text(os.environ['JOB_JSON']); "
    "assert os.path.exists(os.environ['SOCKET_PATH']); print('job ran', flush=True)"
)


async def test_a_worker_runs_a_real_job_from_a_real_advertisement(tmp_path: Path) -> None:
    """advertise → offer → accept → dispatch → the process runs (with its bridge) → finished."""
    async with scheduler_and_worker(tmp_path, ["-c", JOB]) as running:
        endpoint, pub, sched, sched_address, worker = running
        with trio.fail_after(20):
            await advertise_accept_dispatch(
                endpoint,
                pub,
                sched,
                sched_address,
                worker,
                request_id="req-1",
                job_id="job-1",
                resources=m.Resources(cpu=1, memory=1),
                spec='{"hello": "world"}',
            )
            assert sched.offers[0].worker_address == worker
            await sched.wait_for(lambda: any(s.status != "running" for s in sched.statuses))
    statuses = sched.statuses
    assert [s.status for s in statuses] == ["running", "finished"]
    assert statuses[-1].exit_code == 0
    # A successful job's work dir is removed; the event log replays.
    assert not list((tmp_path / "work").glob("hypha-*"))
    (log_file,) = (tmp_path / "work" / "events").glob("*.jsonl")
    engine, machines_hash = load_engine(WORKER)
    report = replay(
        log_file.read_bytes().splitlines(keepends=True), engine, machines_hash, role=WORKER
    )
    assert report.ok, (report.divergence, report.error)
    assert report.events >= 8


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "job.py"


class FakeScheduler:
    """A scheduler endpoint that records offers and statuses (and acknowledges them)."""

    def __init__(self) -> None:
        self.offers: list[m.WorkerOffer] = []
        self.statuses: list[m.JobStatus] = []
        self.seen = trio.Event()

    async def handle(self, opened: Opened) -> m.Message:
        message = opened.message
        self.seen.set()
        self.seen = trio.Event()
        if isinstance(message, m.WorkerOffer):
            self.offers.append(message)
            return m.OfferAck(message.lease_id)
        assert isinstance(message, m.JobStatus)
        self.statuses.append(message)
        return m.StatusAck(message.job_id)

    async def wait_for(self, condition: object) -> None:
        while not condition():  # type: ignore[operator]
            await self.seen.wait()


def worker_settings(
    tmp_path: Path, gateway: str, args: list[str], **overrides: Any
) -> WorkerSettings:
    """A worker whose one executor (train/echo) runs ``python ARGS``."""
    create_key_file(tmp_path / "node.pem", force=True)
    return WorkerSettings(
        node_key=tmp_path / "node.pem",
        gateway_addresses=[gateway],
        listen_addresses=["tcp://127.0.0.1:0"],
        work_dir=tmp_path / "work",
        resources={"cpu": 2, "memory": 4, "storage": 10},
        offer={"price": 100, "floor": 100, "strategy": "flexible"},
        executors=[
            {
                "class": "train",
                "name": "echo",
                "runtime": "process",
                "cmd": sys.executable,
                "args": args,
            }
        ],
        **overrides,
    )


def fixture(*mode: str) -> list[str]:
    """Executor args running tests/fixtures/job.py in ``mode``."""
    return [str(FIXTURE), *mode]


async def advertise_accept_dispatch(
    endpoint: Endpoint,
    pub: Publisher,
    sched: FakeScheduler,
    sched_address: str,
    worker: str,
    *,
    request_id: str,
    job_id: str,
    resources: m.Resources,
    spec: str = "{}",
) -> str:
    """The scheduler's side of a job: advertise, take the offer, accept it, dispatch; the lease id."""
    await wait_connected(pub)
    await wait_healthy(endpoint, worker)
    offered = len(sched.offers)
    ad = m.Advertisement(
        request_id, str(SCHED.peer_id), sched_address, resources, (TRAIN,), 100.0, time.time() + 5
    )
    await pub.publish(ad)
    await sched.wait_for(lambda: len(sched.offers) > offered)
    lease = sched.offers[-1].lease_id
    renewed = await endpoint.request(worker, m.RenewLease(lease))
    assert isinstance(renewed.message, m.LeaseRenewed)
    dispatched = await endpoint.request(worker, m.DispatchJob(job_id, lease, TRAIN, spec))
    assert isinstance(dispatched.message, m.JobDispatched)
    return lease


@asynccontextmanager
async def scheduler_and_worker(
    tmp_path: Path, args: list[str], **overrides: Any
) -> AsyncIterator[tuple[Endpoint, Publisher, FakeScheduler, str, str]]:
    """A scheduler (serving offers and statuses, publishing ads) and a worker dialling it."""
    sched = FakeScheduler()
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        with Endpoint(SCHED) as endpoint, endpoint.publisher(dial=[gw.ingest]) as pub:
            sched_address = await nursery.start(endpoint.serve, "tcp://127.0.0.1:0", sched.handle)
            settings = worker_settings(tmp_path, gw.listen, args, **overrides)
            worker = await nursery.start(run_worker, settings)
            yield endpoint, pub, sched, sched_address, worker
            nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_lease_expiry_kills_a_term_ignoring_tree_and_returns_the_reservation(
    tmp_path: Path,
) -> None:
    """The scheduler stops renewing: the lease expires, every process of the TERM-ignoring tree
    is killed and the job is reported cancelled (lease_expired); then no process runs in its
    work dir, the event log's final state holds no reservation, and the lease is unknown."""
    pids_file = tmp_path / "pids.json"
    pids: list[int] = []
    try:
        async with scheduler_and_worker(tmp_path, fixture("tree", str(pids_file))) as running:
            endpoint, pub, sched, sched_address, worker = running
            with trio.fail_after(60):  # a deadline for a broken stop, not a measurement
                lease = await advertise_accept_dispatch(
                    endpoint,
                    pub,
                    sched,
                    sched_address,
                    worker,
                    request_id="req-2",
                    job_id="job-2",
                    resources=m.Resources(cpu=1, memory=1),
                )
                while not pids_file.exists():  # noqa: ASYNC110 - the job writes it when ready
                    await trio.sleep(0.05)
                await trio.sleep(0.2)
                data = json.loads(pids_file.read_text())
                pids = list(data.values()) if isinstance(data, dict) else list(data)
                # No more renewals: the lease expires 10 s after the last one.
                await sched.wait_for(lambda: any(s.status == "cancelled" for s in sched.statuses))
                alive = [pid for pid in pids if process_alive(pid)]
                in_work_dir = _processes_in(tmp_path / "work")
                late = await endpoint.request(worker, m.RenewLease(lease))
    finally:
        for pid in pids:  # whatever was asserted, no test process outlives the test
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert alive == []
    assert in_work_dir == []
    cancelled = next(s for s in sched.statuses if s.status == "cancelled")
    assert cancelled.reason == "lease_expired"
    assert late.message == m.RenewFailed(lease, "lease_expired")  # its owner is told why
    engine, machines_hash = load_engine(WORKER)
    report = replay_series(
        read_series(newest_run(tmp_path / "work" / "events")), engine, machines_hash, role=WORKER
    )
    assert report.ok, (report.divergence, report.error)
    assert report.state.reserved == (0, 0, 0, 0)
    assert report.state.reservations == {}


def _processes_in(directory: Path) -> list[int]:
    """Pids of live processes whose cwd is inside ``directory``."""
    import psutil  # type: ignore[import-untyped]

    root = directory.resolve()
    found = []
    for p in psutil.process_iter():
        try:
            cwd = Path(p.cwd())
        except (psutil.Error, OSError):
            continue
        if (cwd == root or root in cwd.parents) and process_alive(p.pid):
            found.append(p.pid)
    return found


async def test_a_crashing_job_is_reported_failed_and_its_resources_return(tmp_path: Path) -> None:
    """A job exiting 3 is reported failed with exit code 3 and its lease ends at once."""
    async with scheduler_and_worker(tmp_path, fixture("exit", "3")) as running:
        endpoint, pub, sched, sched_address, worker = running
        with trio.fail_after(20):
            lease = await advertise_accept_dispatch(
                endpoint,
                pub,
                sched,
                sched_address,
                worker,
                request_id="req-3",
                job_id="job-3",
                resources=m.Resources(cpu=2, memory=4),
            )
            await sched.wait_for(lambda: any(s.status == "failed" for s in sched.statuses))
            late = await endpoint.request(worker, m.RenewLease(lease))
            # The whole capacity is free again: a new advertisement for all of it is offered.
            await pub.publish(
                m.Advertisement(
                    "req-4",
                    str(SCHED.peer_id),
                    sched_address,
                    m.Resources(cpu=2, memory=4),
                    (TRAIN,),
                    100.0,
                    time.time() + 5,
                )
            )
            await sched.wait_for(lambda: len(sched.offers) == 2)
    failed = next(s for s in sched.statuses if s.status == "failed")
    assert failed.exit_code == 3
    assert late.message == m.RenewFailed(lease, "job_ended")  # its owner is told why
    assert list((tmp_path / "work").glob("hypha-*"))  # a failed job's dir is kept to inspect


def _last_index(segments: list[Path]) -> int:
    """The number of the newest segment (``…-000004.jsonl`` → 4); 0 if there is none."""
    return max((int(p.stem.rsplit("-", 1)[1]) for p in segments), default=0)


async def test_a_busy_worker_rotates_its_event_log_and_every_segment_replays(
    tmp_path: Path,
) -> None:
    """A stream of advertisements fills several 64 KiB segments while the node runs; each
    segment replays on its own (from its snapshot) and the kept series replays as one log."""
    small_log = {"event_log_max_bytes": 64 << 10, "event_log_keep": 3}
    async with scheduler_and_worker(tmp_path, fixture("exit", "0"), **small_log) as running:
        endpoint, pub, _, sched_address, worker = running
        with trio.fail_after(30):
            await wait_connected(pub)
            await wait_healthy(endpoint, worker)
            for n in range(1200):  # asks for more than the worker has: declined, logged
                await pub.publish(
                    m.Advertisement(
                        f"req-{n}",
                        str(SCHED.peer_id),
                        sched_address,
                        m.Resources(cpu=64, memory=1),
                        (TRAIN,),
                        100.0,
                        time.time() + 5,
                    )
                )
                if n % 50 == 49:
                    await trio.sleep(0.05)
            events = tmp_path / "work" / "events"
            while _last_index(newest_run(events)) < 4:  # noqa: ASYNC110
                await trio.sleep(0.05)
    segments = newest_run(events)
    assert len(segments) == 3  # segments 1 and 2 were deleted (keep = 3)
    assert not any(p.name.endswith(("-000001.jsonl", "-000002.jsonl")) for p in segments)
    engine, machines_hash = load_engine(WORKER)
    for segment in segments:
        report = replay(read_lines(segment), engine, machines_hash, role=WORKER)
        assert report.ok, (segment.name, report.divergence, report.error)
    series = replay_series(read_series(segments), engine, machines_hash, role=WORKER)
    assert series.ok, (series.divergence, series.error)
    assert series.segments == 3
