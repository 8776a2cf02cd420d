"""A job cannot take over its node: as root, each job runs as a user of its own.

Found by attack: jobs ran as the node's user, so a job read both node private keys and
``/proc/<node>/environ`` (where the ``HYPHA_*``/``OTEL_*`` variables stripped from its own
environment were visible anyway), listed another job's work dir and posted progress through that
job's bridge socket. Now a node started as root gives each job a uid and gid of its own
(``job_user = "auto"``): everything of the node's and of other jobs is out of reach, while
the job still reads its own files and talks to its own bridge.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint
from hypha_sm.roles.worker.users import JobUsers, check_reachable, unreachable
from hypha_sm.wire import messages as m
from hypha_sm.wire.identity import Identity
from tests.netkit import running_gateway, wait_connected, wait_healthy
from tests.nodeproc import ECHO, Ear, start_node, take_lease, worker_config

SCHED = Identity.from_seed(bytes([43]) * 32)
GATEWAY = Identity.from_seed(bytes([44]) * 32)
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "job.py"
SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory other users can pass through (pytest's temp dirs are private to root)."""
    d = Path(tempfile.mkdtemp(prefix="hypha-users-"))
    d.chmod(0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_uids_go_round_the_range_and_skip_accounts() -> None:
    """Each live job a uid of its own; released ids come back only after the others."""
    nobody = 65534  # an account: never handed out
    users = JobUsers("auto", (nobody - 1, nobody + 1), as_root=True)
    got = [users.allocate(f"job-{n}") for n in range(2)]
    assert [c.uid for c in got if c] == [nobody - 1, nobody + 1]
    with pytest.raises(RuntimeError, match="no free uid"):
        users.allocate("job-2")
    users.release("job-0")
    again = users.allocate("job-3")
    assert again is not None
    assert again.uid == nobody - 1
    assert JobUsers("node", as_root=True).allocate("j") is None
    assert JobUsers("auto", as_root=False).allocate("j") is None
    assert "not root" in (JobUsers("auto", as_root=False).warning() or "")


def test_paths_other_users_cannot_reach_are_named(open_dir: Path) -> None:
    """The start-up check names the first closed directory on each path."""
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    (closed / "tool").write_text("#!/bin/sh\n")
    (closed / "tool").chmod(0o755)
    assert unreachable(open_dir) is None
    assert unreachable(closed / "tool") == closed
    problems = check_reachable([str(closed / "tool")], closed / "work")
    assert len(problems) == 2
    assert all(str(closed) in p for p in problems)


@pytest.mark.net
@pytest.mark.slow
async def test_a_job_running_as_its_own_user_cannot_reach_the_node_or_another_job(
    tmp_path: Path, open_dir: Path
) -> None:
    """Two jobs on a root node with job_user = auto. The second tries the node key, the event
    log, /proc/<node>/environ, the first job's work dir and bridge socket: all denied; its own
    dir and bridge work."""
    if os.geteuid() != 0:
        pytest.skip("per-job users need a node running as root (CI runs as root)")
    if not SYSTEM_PYTHON.exists():  # noqa: ASYNC240 - once, before anything runs
        pytest.skip("needs a system python that other users can run")
    job_script = open_dir / "job.py"
    shutil.copyfile(FIXTURE, job_script)
    job_script.chmod(0o644)
    work = open_dir / "work"
    key = open_dir / "node-key.pem"
    create_key_file(key, force=True)
    ear = Ear()
    env = {k: v for k, v in os.environ.items() if k != "HYPHA_JOB_USER"}
    env["HYPHA_SECRET_FOR_TEST"] = "node-only"
    log_path = tmp_path / "node.log"
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        config = worker_config(
            tmp_path,
            work,
            gw.listen,
            ["snoop"],
            cmd=str(SYSTEM_PYTHON),
            script=job_script,
            node_key=f'"{key}"',
        )
        node, worker = await start_node(config, log_path, env=env)
        try:
            with Endpoint(SCHED) as sched, sched.publisher(dial=[gw.ingest]) as pub:
                address = await nursery.start(sched.serve, "tcp://127.0.0.1:0", ear.handle)
                with trio.fail_after(60):
                    await wait_connected(pub)
                    await wait_healthy(sched, worker)
                    leases = [
                        await take_lease(sched, pub, ear, worker, address, f"req-{n}")
                        for n in range(2)
                    ]
                    # The victim: sleeps with its bridge open.
                    await sched.request(worker, m.DispatchJob("victim", leases[0], ECHO, "{}"))
                    while not (victims := list(work.glob("hypha-*/bridge.sock"))):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                    victim_dir = victims[0].parent
                    segment = next((work / "events").glob("*.jsonl"))
                    targets = {
                        "read": {
                            "node_key": str(key),
                            "event_log": str(segment),
                            "node_environ": f"/proc/{node.pid}/environ",
                            "own_job_py": str(job_script),
                        },
                        "list": {"victim_dir": str(victim_dir), "own_dir": "."},
                        "connect": {
                            "victim_bridge": str(victims[0]),
                            "own_bridge": "bridge.sock",
                        },
                    }
                    await sched.request(
                        worker, m.DispatchJob("snoop", leases[1], ECHO, json.dumps(targets))
                    )
                    while not ear.ended("snoop"):  # noqa: ASYNC110
                        await trio.sleep(0.05)
        finally:
            node.send_signal(signal.SIGTERM)
            with trio.move_on_after(20):
                await node.wait()
            if node.returncode is None:
                node.kill()
        nursery.cancel_scope.cancel()
    log = log_path.read_text()
    snoop = json.loads(re.search(r"SNOOP (\{.*\})", log).group(1))  # type: ignore[union-attr]
    assert 64000 <= snoop["uid"] <= 64999
    assert snoop["gid"] == snoop["uid"]
    assert {k: snoop[k] for k in ("node_key", "event_log", "node_environ")} == dict.fromkeys(
        ("node_key", "event_log", "node_environ"), "PermissionError"
    )
    assert snoop["victim_dir"] == "PermissionError"
    assert snoop["victim_bridge"] == "PermissionError"
    # ... while its own things work: the test is not denied everything for another reason.
    assert snoop["own_job_py"] == "read"
    assert snoop["own_dir"] == "listed"
    assert snoop["own_bridge"] == "connected"
    assert "Each job runs as a user of its own (uids 64000-64999)" in log
