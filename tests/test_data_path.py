"""The data path end to end over real sockets and a real job process: a gateway, a data node,
a scheduler and a worker whose job fetches every slice of an epoch through its bridge."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from hypha_sm.config.scheduler import JobSettings
from hypha_sm.config.worker import WorkerSettings
from hypha_sm.log.replay import replay
from hypha_sm.machines_io import load_engine
from hypha_sm.net.discovery import Gateways
from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint
from hypha_sm.roles.data.node import DataNode, load_datasets, plan_of
from hypha_sm.roles.scheduler.core.role import SCHEDULER
from hypha_sm.roles.scheduler.scheduler import Outcome, Scheduler
from hypha_sm.roles.worker import slices as slices_module
from hypha_sm.roles.worker.run import run_worker
from hypha_sm.wire.identity import Identity
from tests.helpers import remove_leftover_cgroups
from tests.netkit import LOOPBACK, running_gateway, wait_healthy
from tests.nodeproc import start_node, worker_config
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


def data_node(
    tmp_path: Path,
    gateway: str,
    directory: Path,
    identity: Identity = DATA_NODE,
    kind: type[DataNode] = DataNode,
    address: str = LOOPBACK,
) -> DataNode:
    """A data node serving ``directory`` (checked now), trusting SCHED's grants."""
    config = settings(tmp_path, gateway, directory)
    datasets = load_datasets(config.datasets)
    plan = plan_of(config, datasets)
    return kind(Endpoint(identity), datasets, plan, gateways=[gateway], address=address)


async def run_on_a_worker(
    nursery: trio.Nursery,
    tmp_path: Path,
    gateway: str,
    job: JobSettings,
    *,
    data_nodes: int = 1,
    event_log: io.BytesIO | None = None,
    during: Callable[[Scheduler], Awaitable[None]] | None = None,
) -> tuple[Outcome, Scheduler]:
    """A worker in this process; once it is healthy and ``data_nodes`` data nodes announced
    the dataset, the scheduler runs ``job`` on it (``during`` runs beside it)."""
    with Endpoint(SCHED) as sched:
        address = await nursery.start(run_worker, worker(tmp_path, gateway))
        lookup = Gateways(sched, [gateway])
        with trio.fail_after(10):
            await wait_healthy(sched, address)
            while len(await lookup.lookup_dataset("fox")) < data_nodes:  # noqa: ASYNC110
                await trio.sleep(0.05)
        scheduler = Scheduler(
            sched, job, gateways=[gateway], address=LOOPBACK, event_log=event_log
        )
        if during is not None:
            nursery.start_soon(during, scheduler)
        with trio.fail_after(120):
            outcome = await scheduler.run()
    return outcome, scheduler


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
        node = data_node(tmp_path, gw.listen, directory)
        datasets = node.datasets
        await nursery.start(node.run)
        log = io.BytesIO()
        outcome, scheduler = await run_on_a_worker(
            nursery, tmp_path, gw.listen, job, event_log=log
        )
        node.transport.close()
        nursery.cancel_scope.cancel()
    slices = scheduler.state.records["slice"]
    counters = dict(scheduler.state.counters)
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


def _check_slices(got: list[dict[str, object]], datasets: dict[str, Any], count: int) -> None:
    manifest = datasets["fox"].manifest
    assert sorted(int(Path(str(g["path"])).name) for g in got) == list(range(count))
    for entry in got:
        piece = manifest.slices[int(Path(str(entry["path"])).name)]
        assert entry["sha256"] == entry["read_sha256"] == piece.sha256


def _job(out: Path, count: int, pause: float = 0.0, executor: str = "slices") -> JobSettings:
    return JobSettings(
        executor={"class": "train", "name": executor},
        resources={"cpu": 1, "memory": 1},
        workers=1,
        bid=100.0,
        advertise_timeout=20.0,
        renew_interval=1.0,
        timeout=120.0,
        dataset="fox",
        epochs=1,
        spec={"dataset": "fox", "slices": count, "out": str(out), "pause": pause},
    )


async def test_a_slice_a_data_node_holds_corrupted_comes_from_another_data_node(
    tmp_path: Path,
) -> None:
    """Two data nodes serve the dataset; every slice file of one is changed after its start
    check. Its sends fail verification at the worker, and each slice comes from the other."""
    good, bad = dataset(tmp_path / "a"), dataset(tmp_path / "b")
    out = tmp_path / "out"
    out.mkdir()
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        honest = data_node(tmp_path, gw.listen, good, Identity.from_seed(bytes([113]) * 32))
        broken = data_node(tmp_path, gw.listen, bad, Identity.from_seed(bytes([114]) * 32))
        for node in (honest, broken):
            await nursery.start(node.run)
        for piece in broken.datasets["fox"].manifest.slices:
            (bad / piece.file).write_bytes(b"changed after the check")
        outcome, _ = await run_on_a_worker(
            nursery, tmp_path, gw.listen, _job(out, 25), data_nodes=2
        )
        for node in (honest, broken):
            node.transport.close()
        nursery.cancel_scope.cancel()
    assert outcome.ok, outcome
    _check_slices(json.loads((out / "slices-0.json").read_text()), honest.datasets, 25)
    assert broken.state.counters["fetches.failed"] >= 1


async def test_a_data_node_that_restarts_mid_job_costs_the_job_a_wait_not_its_run(
    tmp_path: Path,
) -> None:
    """The only data node stops after a few slices and comes back on the same address a
    second later: the fetches in between retry and the job fetches all 25."""
    directory = dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        node = data_node(tmp_path, gw.listen, directory)
        datasets = node.datasets
        first = trio.CancelScope()

        async def run_first(*, task_status: trio.TaskStatus[str]) -> None:
            with first:
                await node.run(task_status=task_status)

        bound = await nursery.start(run_first)

        async def restart(scheduler: Scheduler) -> None:
            while scheduler.state.counters["slices.handed_out"] < 4:  # noqa: ASYNC110
                await trio.sleep(0.02)
            first.cancel()
            node.transport.close()
            await trio.sleep(1.0)
            again = data_node(tmp_path, gw.listen, directory, address=bound)
            await nursery.start(again.run)

        job = _job(out, 25, pause=0.05)
        outcome, _ = await run_on_a_worker(nursery, tmp_path, gw.listen, job, during=restart)
        nursery.cancel_scope.cancel()
    assert outcome.ok, outcome
    _check_slices(json.loads((out / "slices-0.json").read_text()), datasets, 25)


@pytest.mark.slow  # waits out a lease (10 s)
async def test_a_worker_killed_while_holding_a_slice_gives_it_back_when_its_lease_lapses(
    tmp_path: Path,
) -> None:
    """kill -9 of the worker process while its job holds a slice (and one fetched ahead): the
    scheduler's renewals fail, the lease is lost at its expiry, and both slices go back to the
    pool."""
    directory = dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    work = tmp_path / "work"
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        node = data_node(tmp_path, gw.listen, directory)
        await nursery.start(node.run)
        toml = worker_config(tmp_path, work, gw.listen, ["slices"], script=JOB)
        proc, address = await start_node(toml, tmp_path / "worker.log")
        try:
            with Endpoint(SCHED) as sched:
                with trio.fail_after(10):
                    await wait_healthy(sched, address)
                job = _job(out, 25, pause=3.0, executor="echo")  # worker_config's executor
                scheduler = Scheduler(sched, job, gateways=[gw.listen], address=LOOPBACK)

                async def kill_when_held() -> None:
                    while scheduler.state.counters["slices.handed_out"] < 2:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                    proc.kill()

                nursery.start_soon(kill_when_held)
                with trio.fail_after(60):
                    outcome = await scheduler.run()
        finally:
            proc.kill()
            await proc.wait()
            remove_leftover_cgroups(work)
        nursery.cancel_scope.cancel()
    assert not outcome.ok
    assert [p.phase for p in outcome.placements] == ["lost"]
    assert scheduler.state.counters["slices.reclaimed.worker_lost"] == 2


async def test_a_slice_no_data_node_can_deliver_fails_the_fetch_with_each_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The only data node's slice files all changed after its check: the fetch fails (after
    its retries, here none) with a 502 that names the data node and why; the job sees it and
    the run is not ok. Nothing of the changed bytes reaches the job's artifacts."""
    monkeypatch.setattr(slices_module, "PULL_RETRIES", 0)
    caplog.set_level(logging.INFO)  # the job's stderr is logged at INFO
    directory = dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        node = data_node(tmp_path, gw.listen, directory)
        for piece in node.datasets["fox"].manifest.slices:
            (directory / piece.file).write_bytes(b"changed after the check")
        await nursery.start(node.run)
        outcome, _ = await run_on_a_worker(nursery, tmp_path, gw.listen, _job(out, 1))
        nursery.cancel_scope.cancel()
    assert not outcome.ok
    assert [p.phase for p in outcome.placements] == ["failed"]
    job_said = "\n".join(r.getMessage() for r in caplog.records if r.name == "hypha_sm.job")
    assert "502 upstream_error" in job_said  # the job's fetch failed with the reason
    assert f"…{str(DATA_NODE.peer_id)[-6:]}" in job_said  # naming the data node
    assert "sha256 mismatch" in job_said
    assert not list((tmp_path / "work").rglob("artifacts/0"))


class LyingDataNode(DataNode):
    """Serves other bytes for every slice, under a SHA-256 of its own making."""

    async def _send(self, effect: Any) -> None:
        garbage = self.datasets[effect.dataset].directory / "garbage.bin"
        garbage.write_bytes(b"not the slice you asked for " * 100)
        await self._push(
            effect.key,
            effect.peer,
            effect.bulk_address,
            effect.transfer_id,
            garbage,
            f"{effect.dataset}-{effect.index:05d}.safetensors",
            "slice",
            hashlib.sha256(garbage.read_bytes()).hexdigest(),  # its own hash, not the manifest's
        )


async def test_a_data_node_that_serves_other_bytes_under_its_own_hash_is_refused(
    tmp_path: Path,
) -> None:
    """The worker checks each slice against the manifest the scheduler's grant names (fetched
    and checked once), not against the hash a data node declares: the liar's transfers are
    refused before a byte flows and every slice comes from the honest data node."""
    good, bad = dataset(tmp_path / "a"), dataset(tmp_path / "b")
    out = tmp_path / "out"
    out.mkdir()
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        honest = data_node(tmp_path, gw.listen, good, Identity.from_seed(bytes([115]) * 32))
        liar = data_node(
            tmp_path, gw.listen, bad, Identity.from_seed(bytes([116]) * 32), kind=LyingDataNode
        )
        for node in (honest, liar):
            await nursery.start(node.run)
        outcome, _ = await run_on_a_worker(
            nursery, tmp_path, gw.listen, _job(out, 25), data_nodes=2
        )
        for node in (honest, liar):
            node.transport.close()
        nursery.cancel_scope.cancel()
    assert outcome.ok, outcome
    _check_slices(json.loads((out / "slices-0.json").read_text()), honest.datasets, 25)
    assert liar.state.counters["fetches.failed"] >= 1
    # It delivered nothing but, at most, the manifest (which it serves as it is).
    assert liar.state.counters.get("fetches.sent", 0) <= 1
