"""The data path end to end over real sockets and a real job process: a gateway, a data node,
a scheduler and a worker whose job fetches every slice of an epoch through its bridge."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import trio

from hypha_sm.config.scheduler import JobSettings
from hypha_sm.config.worker import WorkerSettings
from hypha_sm.log.replay import replay
from hypha_sm.machines_io import load_engine
from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint
from hypha_sm.roles.data.node import DataNode, load_datasets, plan_of
from hypha_sm.roles.scheduler.core.role import SCHEDULER
from hypha_sm.roles.scheduler.scheduler import Scheduler
from hypha_sm.roles.worker.run import run_worker
from hypha_sm.wire.identity import Identity
from tests.netkit import LOOPBACK, running_gateway, wait_healthy
from tests.test_data_node import dataset, settings

pytestmark = pytest.mark.net

GATEWAY = Identity.from_seed(bytes([111]) * 32)
DATA_NODE = Identity.from_seed(bytes([112]) * 32)
SCHED = Identity.from_seed(bytes([103]) * 32)  # the scheduler test_data_node's settings trust
JOB = Path(__file__).resolve().parent / "fixtures" / "bridge_job.py"


def worker(tmp_path: Path, gateway: str) -> WorkerSettings:
    create_key_file(tmp_path / "worker.pem")
    return WorkerSettings(
        node_key=tmp_path / "worker.pem",
        gateway_addresses=[gateway],
        listen_addresses=["tcp://127.0.0.1:0"],
        work_dir=tmp_path / "work",
        resources={"cpu": 1, "memory": 1, "storage": 1},
        offer={"price": 50, "floor": 10, "strategy": "flexible"},
        executors=[
            {
                "class": "train",
                "name": "slices",
                "runtime": "process",
                "cmd": sys.executable,
                "args": [str(JOB), "slices"],
            }
        ],
    )


@pytest.mark.parametrize("fetched", [25, 3])
async def test_a_job_fetches_every_slice_of_an_epoch_once_through_its_bridge(
    tmp_path: Path, fetched: int
) -> None:
    """25 slices, one epoch: each arrives once at artifacts/<index>, whole, with the bytes the
    data node holds; the scheduler hears each one done; the job finishes. A job that stops
    after 3 leaves the slice fetched ahead for it (prefetch 1) unused: it goes back."""
    directory = dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    job = JobSettings(
        executor={"class": "train", "name": "slices"},
        resources={"cpu": 1, "memory": 1},
        workers=1,
        bid=100.0,
        advertise_timeout=20.0,
        renew_interval=1.0,
        timeout=120.0,
        dataset="fox",
        epochs=1,
        spec={"dataset": "fox", "slices": fetched, "out": str(out)},
    )
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        config = settings(tmp_path, gw.listen, directory)
        datasets = load_datasets(config.datasets)
        with Endpoint(DATA_NODE) as dn, Endpoint(SCHED) as sched:
            node = DataNode(
                dn, datasets, plan_of(config, datasets), gateways=[gw.listen], address=LOOPBACK
            )
            await nursery.start(node.run)
            address = await nursery.start(run_worker, worker(tmp_path, gw.listen))
            with trio.fail_after(10):
                await wait_healthy(sched, address)
            log = io.BytesIO()
            scheduler = Scheduler(
                sched, job, gateways=[gw.listen], address=LOOPBACK, event_log=log
            )
            with trio.fail_after(120):
                outcome = await scheduler.run()
            slices = scheduler.state.records["slice"]
            counters = dict(scheduler.state.counters)
        nursery.cancel_scope.cancel()
    assert outcome.ok, outcome
    got = json.loads((out / "slices-0.json").read_text())
    manifest = datasets["fox"].manifest
    assert sorted(int(Path(g["path"]).name) for g in got) == list(range(fetched))
    for entry in got:
        piece = manifest.slices[int(Path(entry["path"]).name)]
        assert entry["size"] == piece.size
        assert entry["sha256"] == entry["read_sha256"] == piece.sha256
        assert entry["path"].endswith(f"artifacts/{Path(entry['path']).name}")
    assert counters["slices.done"] == fetched  # the last one reported as the job ended
    assert counters.get("slices.reclaimed.worker_lost", 0) == (1 if fetched < 25 else 0)
    assert not slices  # retired with the run
    # The scheduler's log, slice machine and all, replays to the same effects.
    engine, machines_hash = load_engine(SCHEDULER)
    report = replay(
        log.getvalue().splitlines(keepends=True), engine, machines_hash, role=SCHEDULER
    )
    assert report.ok, report.divergence
    assert report.node_stopped
