"""A job's processes cannot escape its end, or a crash of its node.

Found by attack: a job that double-forks, calls ``setsid``, changes to ``/`` and ignores
SIGTERM. After a ``kill -9`` of the node and a restart, the grandchild outside the work dir
survived and its cgroup was left behind; without a cgroup, both daemons survived a normal job
end while the log said "every process gone". Now: a restart empties and removes the node's
leftover job cgroups and kills what carries a leftover job's marker; without a cgroup the node
(a child subreaper) adopts orphaned descendants and kills them with the job, finds marked ones
wherever they went, and says what it checked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest
import trio

from hypha_sm.net.transport import Endpoint
from hypha_sm.roles.worker.limits import find_cgroup_parent
from hypha_sm.roles.worker.process import ProcessJob, ProcessSettings, ProcessSpec
from hypha_sm.roles.worker.sweep import (
    MARKER,
    become_subreaper,
    cgroup_scope,
    is_subreaper,
    marker_of,
)
from hypha_sm.wire import messages as m
from hypha_sm.wire.identity import Identity
from tests.netkit import running_gateway, wait_connected, wait_healthy
from tests.nodeproc import ECHO, Ear, start_node, take_lease, worker_config

JOB = str(Path(__file__).resolve().parent / "fixtures" / "job.py")
SCHED = Identity.from_seed(bytes([41]) * 32)
GATEWAY = Identity.from_seed(bytes([42]) * 32)


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def kill_all(pids: list[int]) -> None:
    for pid in pids:  # never leave a test process behind
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def subreaper() -> Iterator[None]:
    """This process adopts orphans for the test, as `hypha-sm run` does; then as before."""
    was = is_subreaper()
    assert become_subreaper()
    assert is_subreaper()
    try:
        yield
    finally:
        become_subreaper(was)


async def test_daemons_that_leave_the_tree_die_with_their_job_without_a_cgroup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, subreaper: None
) -> None:
    """No cgroup: the job starts two daemons (double fork, setsid, cd /, SIGTERM ignored; one
    scrubs its environment) and exits 0. Both are killed when the job ends, and the log says
    what was checked."""
    out = tmp_path / "pids.json"
    spec = ProcessSpec("job-d", "d1", sys.executable, [JOB, "daemons", str(out), "exit"])
    job = ProcessJob(spec, ProcessSettings(work_dir=tmp_path / "work", use_cgroup=False))
    caplog.set_level(logging.INFO, "hypha_sm.roles.worker.process")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await job.start(nursery)
            code = await job.wait()
    pids = json.loads(out.read_text())
    survivors = [p for p in pids if alive(p)]
    kill_all(pids)
    assert code == 0
    assert len(pids) == 2
    assert survivors == []
    assert (
        "every process gone (checked: marker, process group, tree, cwd, adopted children)"
        in caplog.text
    )


def test_every_job_process_carries_its_marker(tmp_path: Path) -> None:
    """The job's environment names its work dir id, and its children inherit it."""
    env = {**os.environ, MARKER: "w42"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"], env=env)
    try:
        deadline = time.monotonic() + 5
        while marker_of(child.pid) is None and time.monotonic() < deadline:
            time.sleep(0.01)  # on a loaded machine the exec may still be under way
        assert marker_of(child.pid) == "w42"
        assert marker_of(os.getpid()) is None
    finally:
        child.kill()
        child.wait()


@pytest.mark.net
@pytest.mark.slow
async def test_a_restart_after_kill_9_kills_escaped_daemons_and_removes_leftover_cgroups(
    tmp_path: Path,
) -> None:
    """A real node runs the daemons job; kill -9 of the node leaves them running (and, where a
    cgroup was made, the cgroup); the restarted node kills both and removes the cgroup."""
    ear = Ear()
    out = tmp_path / "pids.json"
    work = tmp_path / "work"
    parent = find_cgroup_parent()
    scope = cgroup_scope(work)
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        config = worker_config(tmp_path, work, gw.listen, ["daemons", str(out), "sleep"])
        with Endpoint(SCHED) as sched, sched.publisher(dial=[gw.ingest]) as pub:
            address = await nursery.start(sched.serve, "tcp://127.0.0.1:0", ear.handle)
            node, worker = await start_node(config, tmp_path / "first.log")
            with trio.fail_after(60):
                await wait_connected(pub)
                await wait_healthy(sched, worker)
                lease = await take_lease(sched, pub, ear, worker, address, "req-1")
                await sched.request(worker, m.DispatchJob("job-1", lease, ECHO, "{}"))
                while not out.exists():  # noqa: ASYNC110
                    await trio.sleep(0.05)
                pids = json.loads(out.read_text())
                cgroups = sorted(parent.glob(f"hypha-{scope}-*")) if parent else []
                node.send_signal(signal.SIGKILL)
                await node.wait()
                await trio.sleep(0.3)
                after_kill = [p for p in pids if alive(p)]
                restarted, _ = await start_node(config, tmp_path / "second.log")
                left = [p for p in pids if alive(p)]
                leftover = sorted(parent.glob(f"hypha-{scope}-*")) if parent else []
                restarted.send_signal(signal.SIGTERM)
                await restarted.wait()
            nursery.cancel_scope.cancel()
    kill_all(pids)
    log = (tmp_path / "second.log").read_text()
    assert after_kill == pids, "expected both daemons to outlive a kill -9 of the node"
    assert left == []
    if parent is not None:  # this machine lets the node make cgroups: one was made and removed
        assert len(cgroups) == 1
        assert leftover == []
        assert re.search(r"leftover cgroup .*: killed \[.*\] and removed it", log)
    assert re.search(r"start-up cleanup: 1 job dirs found, .* [1-9]\d* processes killed", log)
