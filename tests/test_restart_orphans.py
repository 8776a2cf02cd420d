"""Restart after `kill -9` of the node: the next start kills the job's leftover processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from hypha_sm.config.init import write_example
from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import Identity
from tests.helpers import process_alive
from tests.netkit import running_gateway, wait_connected, wait_healthy

pytestmark = [pytest.mark.net, pytest.mark.slow]

SCHED = Identity.from_seed(bytes([51]) * 32)
GATEWAY = Identity.from_seed(bytes([52]) * 32)
TRAIN = m.Executor(cls="train", name="diloco-transformer")
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "job.py"


def config(tmp_path: Path, gateway: str, pids: Path) -> Path:
    path = tmp_path / "worker.toml"
    write_example(path, work_dir=tmp_path / "work")
    create_key_file(tmp_path / "worker-node-key.pem")
    text = path.read_text()
    text = text.replace('["tcp://127.0.0.1:7000"]', f'["{gateway}"]')
    text = text.replace('["tcp://0.0.0.0:7200"]', '["tcp://127.0.0.1:0"]')
    text = text.replace('cmd = "python"', f'cmd = "{sys.executable}"')
    text = re.sub(
        r'args = \["-m", "hypha_sm.executors.train".*\]',
        f'args = ["{FIXTURE}", "tree", "{pids}"]',
        text,
    )
    path.write_text(text)
    return path


async def start_node(path: Path, log: Path) -> tuple[trio.Process, str]:
    with log.open("wb") as sink:  # the child keeps its own copy of the descriptor
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "hypha_sm.cli", "run", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    log_file = trio.Path(log)
    with trio.fail_after(20):
        while not (found := re.search(r"serving on (\S+);", await log_file.read_text())):  # noqa: ASYNC110 - polling a log file
            await trio.sleep(0.05)
    return proc, found.group(1)


async def test_restart_after_kill_9_kills_orphaned_job_processes_and_removes_their_dir(
    tmp_path: Path,
) -> None:
    """kill -9 leaves the job's setsid grandchild running; the next start finds and kills it."""
    offers: list[m.WorkerOffer] = []

    async def handle(opened: Opened) -> m.Message:
        if isinstance(opened.message, m.WorkerOffer):
            offers.append(opened.message)
            return m.OfferAck(opened.message.lease_id)
        assert isinstance(opened.message, m.JobStatus)
        return m.StatusAck(opened.message.job_id)

    pids_file = tmp_path / "pids.json"
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        with Endpoint(SCHED) as sched, sched.publisher(dial=[gw.ingest]) as pub:
            sched_address = await nursery.start(sched.serve, "tcp://127.0.0.1:0", handle)
            path = config(tmp_path, gw.listen, pids_file)
            node, worker = await start_node(path, tmp_path / "first.log")
            with trio.fail_after(30):
                await wait_connected(pub)
                await wait_healthy(sched, worker)
                await pub.publish(
                    m.Advertisement(
                        "req-9",
                        str(SCHED.peer_id),
                        sched_address,
                        m.Resources(cpu=1, memory=1),
                        (TRAIN,),
                        150.0,
                        time.time() + 5,
                    )
                )
                while not offers:  # noqa: ASYNC110 - waiting on the handler above
                    await trio.sleep(0.02)
                await sched.request(worker, m.RenewLease(offers[0].lease_id))
                await sched.request(
                    worker, m.DispatchJob("job-9", offers[0].lease_id, TRAIN, "{}")
                )
                while not pids_file.exists():  # noqa: ASYNC110 - the job writes it when ready
                    await trio.sleep(0.05)
                await trio.sleep(0.3)
                data = json.loads(pids_file.read_text())
                pids = list(data.values()) if isinstance(data, dict) else list(data)
                node.send_signal(signal.SIGKILL)
                await node.wait()
                await trio.sleep(0.5)
                survivors = [p for p in pids if process_alive(p)]
                job_dirs = list((tmp_path / "work").glob("hypha-*"))
                restarted, _ = await start_node(path, tmp_path / "second.log")
                await trio.sleep(0.5)
                left = [p for p in pids if process_alive(p)]
                restarted.send_signal(signal.SIGTERM)
                await restarted.wait()
            nursery.cancel_scope.cancel()
    assert survivors, "expected the setsid grandchild to outlive a kill -9 of the node"
    assert job_dirs
    assert left == []
    assert not list((tmp_path / "work").glob("hypha-*"))
    assert restarted.returncode == 0
    assert "killed" in (tmp_path / "second.log").read_text()
    for pid in pids:  # belt and braces: never leave a test process behind
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
