"""Restart after `kill -9` of the node: the next start kills the job's leftover processes."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import trio

from hypha_sm.net.transport import Endpoint
from hypha_sm.wire import messages as m
from hypha_sm.wire.identity import Identity
from tests.helpers import process_alive
from tests.netkit import running_gateway, wait_connected, wait_healthy
from tests.nodeproc import ECHO, Ear, start_node, take_lease, worker_config

pytestmark = [pytest.mark.net, pytest.mark.slow]

SCHED = Identity.from_seed(bytes([51]) * 32)
GATEWAY = Identity.from_seed(bytes([52]) * 32)


async def test_restart_after_kill_9_kills_orphaned_job_processes_and_removes_their_dir(
    tmp_path: Path,
) -> None:
    """kill -9 leaves the job's setsid grandchild running; the next start finds and kills it."""
    ear = Ear()
    pids_file = tmp_path / "pids.json"
    pids: list[int] = []
    try:
        async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
            with Endpoint(SCHED) as sched, sched.publisher(dial=[gw.ingest]) as pub:
                sched_address = await nursery.start(sched.serve, "tcp://127.0.0.1:0", ear.handle)
                path = worker_config(
                    tmp_path, tmp_path / "work", gw.listen, ["tree", str(pids_file)]
                )
                node, worker = await start_node(path, tmp_path / "first.log")
                with trio.fail_after(30):
                    await wait_connected(pub)
                    await wait_healthy(sched, worker)
                    lease = await take_lease(sched, pub, ear, worker, sched_address, "req-9")
                    await sched.request(worker, m.DispatchJob("job-9", lease, ECHO, "{}"))
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
    finally:
        for pid in pids:  # whatever is asserted below, never leave a test process behind
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert survivors, "expected the setsid grandchild to outlive a kill -9 of the node"
    assert job_dirs
    assert left == []
    assert not list((tmp_path / "work").glob("hypha-*"))
    assert restarted.returncode == 0
    summary = re.search(
        r"start-up cleanup: .* (\d+) processes killed", (tmp_path / "second.log").read_text()
    )
    assert summary is not None
    assert int(summary.group(1)) >= len(survivors)  # counted, not just the word
