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
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from hypha_sm.config.init import write_example
from hypha_sm.log.replay import replay_series
from hypha_sm.log.store import newest_run, read_series
from hypha_sm.machines_io import load_engine
from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint
from hypha_sm.shell.process import FAILED_MARK
from hypha_sm.shell.storage import dir_usage
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import Identity
from tests.netkit import running_gateway, wait_connected, wait_healthy
from tests.test_run_worker import advertise_accept_dispatch, fixture, scheduler_and_worker

pytestmark = pytest.mark.net

SCHED = Identity.from_seed(bytes([61]) * 32)
GATEWAY = Identity.from_seed(bytes([62]) * 32)
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "job.py"
TRAIN = m.Executor(cls="train", name="echo")


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


def _config(tmp_path: Path, work_dir: Path, gateway: str, mode: list[str], **keys: object) -> Path:
    path = tmp_path / "worker.toml"
    write_example(path, work_dir=work_dir)
    create_key_file(tmp_path / "worker-node-key.pem", force=True)
    text = path.read_text()
    text = text.replace('["tcp://127.0.0.1:7000"]', f'["{gateway}"]')
    text = text.replace('["tcp://0.0.0.0:7200"]', '["tcp://127.0.0.1:0"]')
    text = text.replace('cmd = "python"', f'cmd = "{sys.executable}"')
    text = text.replace('name = "diloco-transformer"', 'name = "echo"')
    args = ", ".join(f'"{a}"' for a in [str(FIXTURE), *mode])
    text = re.sub(r'args = \["-m", "hypha_sm.executors.train".*\]', f"args = [{args}]", text)
    text = re.sub(r"strategy = .*", 'strategy = "flexible"', text)
    text = re.sub(r"storage = .*", "storage = 100", text)  # more than the disk has
    for key, value in keys.items():
        text = re.sub(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.MULTILINE)
    path.write_text(text)
    return path


async def _start(path: Path, log: Path) -> tuple[trio.Process, str]:
    with log.open("wb") as sink:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "hypha_sm.cli", "run", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    with trio.fail_after(20):
        while not (found := re.search(r"serving on (\S+);", await trio.Path(log).read_text())):
            if proc.poll() is not None:
                raise AssertionError((await trio.Path(log).read_text())[-2000:])
            await trio.sleep(0.05)
    return proc, found.group(1)


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
    statuses: list[m.JobStatus] = []
    offers: list[m.WorkerOffer] = []

    async def handle(opened: Opened) -> m.Message:
        if isinstance(opened.message, m.WorkerOffer):
            offers.append(opened.message)
            return m.OfferAck(opened.message.lease_id)
        assert isinstance(opened.message, m.JobStatus)
        statuses.append(opened.message)
        return m.StatusAck(opened.message.job_id)

    with small_disk(tmp_path / "disk", 32) as disk:
        work = disk / "work"
        kept = _kept_failed_dir(work, "hypha-earlier-failure", 4)
        config = _config(tmp_path, work, "GATEWAY", ["fill"], disk_reserve_mb=2)
        async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
            config.write_text(config.read_text().replace("GATEWAY", gw.listen))
            with Endpoint(SCHED) as sched, sched.publisher(dial=[gw.ingest]) as pub:
                address = await nursery.start(sched.serve, "tcp://127.0.0.1:0", handle)
                node, worker = await _start(config, tmp_path / "node.log")
                try:
                    with trio.fail_after(60):
                        await wait_connected(pub)
                        await wait_healthy(sched, worker)

                        async def advertise(n: int) -> None:
                            ad = m.Advertisement(
                                f"req-{n}",
                                str(SCHED.peer_id),
                                address,
                                m.Resources(cpu=1, memory=1, storage=50),
                                (TRAIN,),
                                100.0,
                                time.time() + 5,
                            )
                            await pub.publish(ad)

                        await advertise(1)
                        while not offers:  # noqa: ASYNC110
                            await trio.sleep(0.02)
                        lease = offers[0].lease_id
                        await sched.request(worker, m.RenewLease(lease))
                        await sched.request(worker, m.DispatchJob("job-1", lease, TRAIN, "{}"))
                        renewed = 0
                        while not any(s.status == "failed" for s in statuses):
                            answer = await sched.request(worker, m.RenewLease(lease), timeout=5)
                            renewed += isinstance(answer.message, m.LeaseRenewed)
                            await trio.sleep(0.3)
                        # Room again: the next advertisement is offered.
                        n = 1
                        while len(offers) < 2:
                            n += 1
                            await advertise(n)
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
        engine, machines_hash = load_engine()
        report = replay_series(read_series(segments), engine, machines_hash)
        leftovers = list(work.glob("hypha-*"))
    failed = next(s for s in statuses if s.status == "failed")
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
        config = _config(tmp_path, work, "tcp://127.0.0.1:9", ["exit", "0"], disk_reserve_mb=1)
        node, _ = await _start(config, tmp_path / "node.log")
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
