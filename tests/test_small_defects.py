"""The smaller holes the attack found, each with the test that failed before its fix.

- A NUL byte in a job spec left the job's bridge listening (300 dispatches, 305 sockets).
- A spec over ~128 KiB could never start ("Argument list too long"): it now goes by file.
- A job id with a newline forged log lines: every message is escaped to one line.
- The bridge answered deeply nested JSON with a 500 and a traceback (now 400), and a planted
  ``.part`` symlink with a 500 (now the fetch ignores it; an occupied name is a 409).
- Damaged event logs ended replay with a traceback (an impossible capacity in the header).
- The scheduler accepted offers with negative or absurd prices.
- ``{JOB_JSON}`` inside ``sh -c "..."`` lets a scheduler run commands: check-config warns.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]
import pytest
import trio

from hypha_sm.cli import main
from hypha_sm.config.scheduler import JobSettings
from hypha_sm.core.resources import Amounts, convert
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.scheduler.core.events import OfferReceived
from hypha_sm.roles.scheduler.core.machines import unwanted
from hypha_sm.roles.scheduler.core.reducer import initial_state
from hypha_sm.roles.scheduler.core.role import SCHEDULER
from hypha_sm.roles.scheduler.scheduler import plan_of
from hypha_sm.roles.worker.bridge import BridgeError, JobBridge, open_inside
from hypha_sm.roles.worker.process import MAX_INLINE_SPEC
from hypha_sm.runtime.textlog import SafeFormatter, escape_controls
from hypha_sm.wire import messages as m
from tests.netkit import wait_connected, wait_healthy
from tests.nodeproc import advertise
from tests.test_run_worker import (
    SCHED,
    TRAIN,
    advertise_accept_dispatch,
    fixture,
    scheduler_and_worker,
)

pytestmark = pytest.mark.net


def unix_sockets() -> int:
    """Unix sockets this process holds open."""
    return len(psutil.Process().net_connections(kind="unix"))


async def test_nul_bytes_in_specs_fail_the_start_and_leave_no_bridge_behind(
    tmp_path: Path,
) -> None:
    """300 dispatches whose spec holds a NUL byte under one accepted lease: each is refused
    (start_failed), and the node holds no more sockets or job dirs than before."""
    async with scheduler_and_worker(tmp_path, fixture("exit", "0")) as running:
        endpoint, pub, sched, sched_address, worker = running
        with trio.fail_after(60):
            await wait_connected(pub)
            await wait_healthy(endpoint, worker)
            await advertise(pub, SCHED, "req-nul", sched_address)
            await sched.wait_for(lambda: bool(sched.offers))
            lease = sched.offers[0].lease_id
            await endpoint.request(worker, m.RenewLease(lease))
            before = unix_sockets()
            refusals = set()
            for n in range(300):
                answer = await endpoint.request(
                    worker, m.DispatchJob(f"job-{n}", lease, TRAIN, '{"x": "a\x00b"}')
                )
                assert isinstance(answer.message, m.DispatchFailed)
                refusals.add((answer.message.reason, "null byte" in answer.message.detail))
            await trio.sleep(0.2)
            after = unix_sockets()
    assert refusals == {("start_failed", True)}
    assert after <= before + 2, (before, after)
    assert list((tmp_path / "work").glob("hypha-*")) == []


async def test_a_256_kib_spec_starts_and_reaches_the_job_by_file(tmp_path: Path) -> None:
    """The kernel refuses arguments and variables over 128 KiB: a larger spec is written to
    $JOB_JSON_FILE and {JOB_JSON} names that file; a small one is also inline as before."""
    out = tmp_path / "report.json"
    spec = json.dumps({"blob": "b" * (256 * 1024)})
    assert len(spec) > 2 * MAX_INLINE_SPEC
    async with scheduler_and_worker(
        tmp_path, fixture("report", str(out), "{JOB_JSON}")
    ) as running:
        endpoint, pub, sched, sched_address, worker = running
        with trio.fail_after(30):
            await advertise_accept_dispatch(
                endpoint,
                pub,
                sched,
                sched_address,
                worker,
                request_id="req-big",
                job_id="job-big",
                resources=m.Resources(cpu=1, memory=1),
                spec=spec,
            )
            await sched.wait_for(lambda: any(s.status != "running" for s in sched.statuses))
    report = json.loads(out.read_text())
    assert sched.statuses[-1].status == "failed"  # report OUT CODE: the third arg is the code
    assert report["spec_file"] == spec
    assert report["env"]["JOB_JSON"] is None
    assert report["env"]["JOB_JSON_FILE"].endswith("/job.json")
    assert report["argv"][3] == report["env"]["JOB_JSON_FILE"]  # {JOB_JSON} is the path


def test_a_newline_in_remote_text_cannot_forge_a_log_line() -> None:
    """A job id with a newline (or an escape sequence) stays on its record's one line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("hypha_sm.test.forgery")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "job %s: started", "x\nINFO hypha_sm.roles.worker.run: all is well\x1b[2J\r"
        )
        try:
            raise ValueError("a traceback keeps its lines")
        except ValueError:
            logger.exception("job %s failed", "y\u2028z")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == (
        "WARNING hypha_sm.test.forgery: job x\\x0aINFO hypha_sm.roles.worker.run: all is well"
        "\\x1b[2J\\x0d: started"
    )
    assert lines[1] == "ERROR hypha_sm.test.forgery: job y\\u2028z failed"
    assert lines[2] == "Traceback (most recent call last):"
    assert escape_controls("tab\tstays") == "tab\tstays"


@pytest.fixture
def bridge_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hb-") as d:
        yield Path(d)


async def test_the_bridge_refuses_deep_json_and_ignores_planted_temp_files(
    tmp_path: Path, bridge_dir: Path
) -> None:
    """Over the real socket: 100,000 nested brackets are a 400 (not a 500); a symlink planted
    where a fetch's temp file used to go is ignored (the link's target is untouched); a
    directory planted at the artifact's name is a 409."""
    work = tmp_path / "work"
    (work / "artifacts").mkdir(parents=True)
    source = work / "data.bin"
    source.write_bytes(b"payload")
    victim = tmp_path / "victim.txt"
    victim.write_text("do not overwrite")
    (work / "artifacts" / ".data.bin.part").symlink_to(victim)
    (work / "artifacts" / "taken.bin").mkdir()
    (work / "taken.bin").write_bytes(b"x")
    bridge = JobBridge(work_dir=work, socket_path=bridge_dir / "b.sock", job_id="j")
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.serve)
        transport = httpx.AsyncHTTPTransport(uds=str(bridge.socket_path))
        async with httpx.AsyncClient(transport=transport, base_url="http://h") as client:
            deep = await client.post("/status/send", content=b"[" * 100_000 + b"]" * 100_000)
            fetched = await client.post(
                "/resources/fetch", json={"type": "uri", "value": f"file://{source}"}
            )
            taken = await client.post(
                "/resources/fetch", json={"type": "uri", "value": f"file://{work}/taken.bin"}
            )
        nursery.cancel_scope.cancel()
    assert deep.status_code == 400
    assert deep.json()["code"] == "invalid_json"
    assert fetched.status_code == 200, fetched.text
    assert (work / "artifacts" / "data.bin").read_bytes() == b"payload"
    assert victim.read_text() == "do not overwrite"
    assert taken.status_code == 409
    assert taken.json()["code"] == "conflict"
    assert not [
        p
        for p in (work / "artifacts").iterdir()
        if p.name.endswith(".part") and not p.is_symlink()
    ]


def test_files_are_checked_where_they_were_opened_not_by_their_path(tmp_path: Path) -> None:
    """A link inside the job's dir that points at the node key is refused (403) even though
    its path is inside; a FIFO in place of a file is refused at once, without hanging."""
    root = tmp_path / "job"
    root.mkdir()
    key = tmp_path / "node-key.pem"
    key.write_text("secret")
    (root / "innocent").symlink_to(key)
    os.mkfifo(root / "pipe")
    (root / "ok.bin").write_bytes(b"ok")
    with pytest.raises(BridgeError) as refused:
        open_inside(root / "innocent", [root], "innocent")
    assert refused.value.status == 403
    with pytest.raises(BridgeError) as fifo:
        open_inside(root / "pipe", [root], "pipe")
    assert fifo.value.status == 404
    fd = open_inside(root / "ok.bin", [root], "ok.bin")
    try:
        assert os.read(fd, 10) == b"ok"
    finally:
        os.close(fd)


def test_a_log_whose_header_policy_cannot_run_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An impossible capacity in the header: replay exits 2 with the reason, no traceback."""
    header = {
        "format": "hypha-sm/event-log",
        "version": 1,
        "machines_hash": "x",
        "engine_version": "0",
        "seed": "00" * 16,
        "policy": {"capacity": {"gpu": -1, "cpu": 1e300, "memory": 1, "storage": 1}},
    }
    log = tmp_path / "damaged.jsonl"
    log.write_text(json.dumps(header) + "\n")
    assert main(["replay", str(log)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hypha-sm: error: line 1: the policy cannot run: capacity.")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("price", "resources", "ok"),
    [
        (90.0, m.Resources(cpu=2, memory=2), True),
        (-5.0, m.Resources(cpu=2, memory=2), False),
        (1e300, m.Resources(cpu=2, memory=2), False),
        (float("nan"), m.Resources(cpu=2, memory=2), False),
        (90.0, m.Resources(cpu=1, memory=2), False),  # less than asked
        (90.0, m.Resources(cpu=float("inf"), memory=2), False),
        (100.0, m.Resources(cpu=8, memory=64), True),
    ],
)
def test_the_scheduler_takes_only_offers_it_can_pay_for_what_it_asked(
    price: float, resources: m.Resources, ok: bool
) -> None:
    """A price must be finite, not negative, at most the bid; resources at least the ask."""
    job = JobSettings(
        executor={"class": "train", "name": "x"}, resources={"cpu": 2, "memory": 2}, bid=100
    )
    engine, _ = load_engine(SCHEDULER)
    state = initial_state(engine, plan_of(job), bytes(16))
    offer = OfferReceived(
        1, "12D3KooWWorker", "", "lease", "tcp://127.0.0.1:1", price, convert(resources, Amounts)
    )
    assert (unwanted(state, state.records["allocation"]["job"], offer) == "") is ok


def test_check_config_warns_when_a_spec_would_become_shell_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sh -c "... {JOB_JSON}"`: a warning naming the executor and the safe way."""
    from hypha_sm.init import write_example

    path = tmp_path / "worker.toml"
    write_example(path, work_dir=tmp_path / "work")
    text = path.read_text().replace(
        f'cmd = "{sys.executable}"\nargs = ["-m", "hypha_sm.demo_job"]',
        'cmd = "/bin/sh"\nargs = ["-c", "train --job \'{JOB_JSON}\'"]',
    )
    path.write_text(text)
    (tmp_path / "worker-node-key.pem").write_text("")
    assert main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: executor train/bigram-demo: {JOB_JSON} inside the argument" in err
    assert "command injection" in err
    assert "diloco-transformer" not in err  # `--job {JOB_JSON}` alone is one argument
