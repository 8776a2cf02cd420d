"""A full disk does not kill the node, and a job cannot use more disk than its lease.

Found by attack: a job that filled its work dir's file system made the next event-log write
raise ENOSPC in the recorder; the node died, the lease was lost, and on restart the header write
failed again with a traceback until the failed job's dir was removed by hand. Now the node
frees the kept dirs of failed jobs, stops offering, stops the job using the most disk, keeps its
state and its log (entries wait in memory until the disk takes them), and offers again once
there is room; on restart it frees failed dirs before it gives up with one line. A job over its
lease's storage is stopped and reported failed with the figures.

The full-disk tests mount a small tmpfs (root; CI runs as root) and run real node processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from hypha_sm.log.replay import replay_series
from hypha_sm.log.store import newest_run, read_series
from hypha_sm.machines_io import load_engine
from hypha_sm.net.transport import Endpoint
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.roles.worker.storage import dir_usage
from hypha_sm.roles.worker.workdirs import FAILED_MARK
from hypha_sm.wire import messages as m
from hypha_sm.wire.identity import Identity
from tests.netkit import running_gateway, wait_connected, wait_healthy
from tests.nodeproc import ECHO, Ear, advertise, start_node, worker_config
from tests.test_run_worker import advertise_accept_dispatch, fixture, scheduler_and_worker

pytestmark = pytest.mark.net

SCHED = Identity.from_seed(bytes([61]) * 32)
GATEWAY = Identity.from_seed(bytes([62]) * 32)


@contextmanager
def small_disk(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` MiB at ``path``: a file system that really fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _kept_failed_dir(work_dir: Path, name: str, mb: int) -> Path:
    """What an earlier failed job left: a marked dir holding ``mb`` MiB."""
    kept = work_dir / name
    kept.mkdir(parents=True)
    (kept / FAILED_MARK).write_text("1\n")
    (kept / "big.bin").write_bytes(b"y" * (mb << 20))
    return kept


@pytest.mark.slow
async def test_a_job_that_fills_the_disk_is_stopped_and_the_node_lives_on(tmp_path: Path) -> None:
    """A job fills the work dir's disk (and keeps it full); the event log hits ENOSPC. The node
    removes the old failed dir, stops offering, stops that job (reported failed: disk_full),
    answers renewals throughout, then offers again; the log replays."""
    ear = Ear()
    with small_disk(tmp_path / "disk", 32) as disk:
        work = disk / "work"
        kept = _kept_failed_dir(work, "hypha-earlier-failure", 4)
        async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
            config = worker_config(tmp_path, work, gw.listen, ["fill"], disk_reserve_mb=2)
            with Endpoint(SCHED) as sched, sched.publisher(dial=[gw.ingest]) as pub:
                address = await nursery.start(sched.serve, "tcp://127.0.0.1:0", ear.handle)
                node, worker = await start_node(config, tmp_path / "node.log")
                want = m.Resources(cpu=1, memory=1, storage=50)
                try:
                    with trio.fail_after(60):
                        await wait_connected(pub)
                        await wait_healthy(sched, worker)
                        await advertise(pub, SCHED, "req-1", address, resources=want)
                        while not ear.offers:  # noqa: ASYNC110
                            await trio.sleep(0.02)
                        lease = ear.offers[0].lease_id
                        await sched.request(worker, m.RenewLease(lease))
                        await sched.request(worker, m.DispatchJob("job-1", lease, ECHO, "{}"))
                        renewed = 0
                        while not ear.ended("job-1"):
                            answer = await sched.request(worker, m.RenewLease(lease), timeout=5)
                            renewed += isinstance(answer.message, m.LeaseRenewed)
                            await trio.sleep(0.3)
                        # Room again: the next advertisement is offered.
                        n = 1
                        while len(ear.offers) < 2:
                            n += 1
                            await advertise(pub, SCHED, f"req-{n}", address, resources=want)
                            await trio.sleep(0.5)
                        health = await sched.request(worker, m.Health())
                finally:
                    node.send_signal(signal.SIGTERM)
                    with trio.move_on_after(20):
                        await node.wait()
                    if node.returncode is None:
                        node.kill()
                nursery.cancel_scope.cancel()
        log = (tmp_path / "node.log").read_text()
        segments = newest_run(work / "events")
        engine, machines_hash = load_engine(WORKER)
        report = replay_series(read_series(segments), engine, machines_hash, role=WORKER)
        leftovers = list(work.glob("hypha-*"))
    failed = next(s for s in ear.statuses if s.status == "failed")
    assert failed.reason.startswith("disk_full"), failed
    assert renewed >= 1
    assert health.message == m.HealthReply(True)
    assert not kept.exists()  # freed first
    assert leftovers == []  # the filling job's dir went too
    assert "no new offers" in log
    assert "free again" in log
    assert node.returncode == 0
    assert report.ok, (report.divergence, report.error)
    assert report.node_stopped


@pytest.mark.slow
async def test_a_node_restarts_on_a_full_disk_by_freeing_failed_job_dirs(tmp_path: Path) -> None:
    """The disk is full of an earlier failed job's dir: the node removes it and starts (before,
    the event-log header write failed with a traceback on every start)."""
    with small_disk(tmp_path / "disk", 8) as disk:
        work = disk / "work"
        kept = _kept_failed_dir(work, "hypha-earlier-failure", 1)
        fd = os.open(kept / "fill.bin", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"z" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        config = worker_config(
            tmp_path, work, "tcp://127.0.0.1:9", ["exit", "0"], disk_reserve_mb=1
        )
        node, _ = await start_node(config, tmp_path / "node.log")
        node.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await node.wait()
        log = (tmp_path / "node.log").read_text()
        events = list((work / "events").glob("*.jsonl"))
    assert "removed 1 kept failed job dirs to start" in log
    assert "Traceback" not in log
    assert events
    assert not kept.exists()


async def test_a_job_over_its_lease_storage_is_stopped_and_reported_failed(
    tmp_path: Path,
) -> None:
    """The lease allows 5 MB; the job writes 8 MB and sleeps: it is stopped within a check or
    two and reported failed with what it used; its dir is removed."""
    async with scheduler_and_worker(tmp_path, fixture("write", str(8_000_000))) as running:
        endpoint, pub, sched, sched_address, worker = running
        with trio.fail_after(30):
            await advertise_accept_dispatch(
                endpoint,
                pub,
                sched,
                sched_address,
                worker,
                request_id="req-q",
                job_id="job-q",
                resources=m.Resources(cpu=1, memory=1, storage=0.005),
            )
            await sched.wait_for(lambda: any(s.status == "failed" for s in sched.statuses))
    failed = next(s for s in sched.statuses if s.status == "failed")
    assert re.fullmatch(r"storage_exceeded: 0\.00[89]\d* GB used of 0\.005 GB", failed.reason)
    assert list((tmp_path / "work").glob("hypha-*")) == []


def test_dir_usage_counts_allocated_blocks_and_hard_links_once(tmp_path: Path) -> None:
    """What the monitor measures: blocks in use, sparse files by what they hold, links once."""
    (tmp_path / "a.bin").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "a.bin", tmp_path / "b.bin")
    with (tmp_path / "sparse.bin").open("wb") as f:
        f.truncate(1 << 30)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.bin").write_bytes(b"y" * 50_000)
    (tmp_path / "loop").symlink_to(tmp_path)
    used = dir_usage(tmp_path)
    assert 150_000 <= used < 400_000
