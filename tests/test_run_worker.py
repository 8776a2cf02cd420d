"""`run_worker` end to end on real NNG sockets with a real job process and its bridge."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import trio

from hypha_sm.config.worker import WorkerSettings
from hypha_sm.log.replay import replay
from hypha_sm.machines_io import load_engine
from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint
from hypha_sm.shell.run import run_worker
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import Identity

pytestmark = pytest.mark.net

SCHED = Identity.from_seed(bytes([31]) * 32)
TRAIN = m.Executor(cls="train", name="echo")
JOB = (
    "import os, sys, pathlib; "
    "pathlib.Path('out.txt').write_text(os.environ['JOB_JSON']); "
    "assert os.path.exists(os.environ['SOCKET_PATH']); print('job ran', flush=True)"
)


async def test_a_worker_runs_a_real_job_from_a_real_advertisement(tmp_path: Path) -> None:
    """advertise → offer → accept → dispatch → the process runs (with its bridge) → finished."""
    create_key_file(tmp_path / "node.pem")
    statuses: list[m.JobStatus] = []
    offers: list[m.WorkerOffer] = []
    seen = trio.Event()

    async def handle(opened: Opened) -> m.Message:
        nonlocal seen
        message = opened.message
        if isinstance(message, m.WorkerOffer):
            offers.append(message)
        elif isinstance(message, m.JobStatus):
            statuses.append(message)
        seen.set()
        return m.OfferAck("") if isinstance(message, m.WorkerOffer) else m.StatusAck("")

    with Endpoint(SCHED) as sched, sched.publisher(listen=["tcp://127.0.0.1:0"]) as pub:
        async with trio.open_nursery() as nursery:
            sched_address = await nursery.start(sched.serve, "tcp://127.0.0.1:0", handle)
            settings = WorkerSettings(
                node_key=tmp_path / "node.pem",
                gateway_addresses=[pub.addresses[0]],
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
                        "args": ["-c", JOB],
                    }
                ],
            )
            worker = await nursery.start(run_worker, settings)
            with trio.fail_after(20):
                while not pub.connections:  # noqa: ASYNC110 - NNG has no connect event
                    await trio.sleep(0.01)
                await trio.sleep(0.1)
                await pub.publish(
                    m.Advertisement(
                        "req-1",
                        str(SCHED.peer_id),
                        sched_address,
                        m.Resources(cpu=1, memory=1),
                        (TRAIN,),
                        100.0,
                        time.time() + 5,
                    )
                )
                while not offers:
                    await seen.wait()
                    seen = trio.Event()
                lease = offers[0].lease_id
                assert offers[0].worker_address == worker
                renewed = await sched.request(worker, m.RenewLease(lease))
                assert isinstance(renewed.message, m.LeaseRenewed)
                dispatched = await sched.request(
                    worker, m.DispatchJob("job-1", lease, TRAIN, '{"hello": "world"}')
                )
                assert isinstance(dispatched.message, m.JobDispatched)
                while not any(s.status != "running" for s in statuses):
                    await seen.wait()
                    seen = trio.Event()
            nursery.cancel_scope.cancel()
    assert [s.status for s in statuses] == ["running", "finished"]
    assert statuses[-1].exit_code == 0
    # A successful job's work dir is removed; the event log replays.
    assert not list((tmp_path / "work").glob("hypha-*"))
    (log_file,) = (tmp_path / "work" / "events").glob("*.jsonl")
    engine, machines_hash = load_engine()
    report = replay(log_file.read_bytes().splitlines(keepends=True), engine, machines_hash)
    assert report.ok, (report.divergence, report.error)
    assert report.events >= 8
