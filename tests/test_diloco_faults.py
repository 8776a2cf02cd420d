"""DiLoCo under faults, with real processes: a training worker killed mid-round, the parameter
server killed. Each run is the devnet (gateway, data node, scheduler, workers) with a short
round deadline."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import process_alive

pytest.importorskip("torch")
pytestmark = [pytest.mark.net, pytest.mark.slow]


def _devnet(directory: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hypha_sm.cli", "devnet", "--dir", str(directory), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run_until(process: subprocess.Popen[str], pattern: str, seen: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return
    raise AssertionError("".join(seen))


def _pids(lines: list[str]) -> dict[str, int]:
    return {
        m[0]: int(m[1]) for m in re.findall(r"(worker-\d)\s+tcp://\S+ \(pid (\d+)", "".join(lines))
    }


def _server(directory: Path, workers: dict[str, int]) -> str:
    for name in workers:
        if "parameter server for" in (directory / f"{name}.log").read_text():
            return name
    raise AssertionError("no worker runs the parameter server")


def test_a_training_worker_killed_mid_round_leaves_the_round_to_the_others(
    tmp_path: Path,
) -> None:
    """Three training workers, quorum two, a 4 s round deadline: one worker's node is killed
    (SIGKILL) in round 2; that round closes at its deadline over the two survivors, the later
    rounds without waiting, and the job completes on them."""
    process = _devnet(
        tmp_path, "--rounds", "4", "--workers", "3", "--quorum", "2", "--round-timeout", "4"
    )
    seen: list[str] = []
    try:
        _run_until(process, r"^round  1 ", seen)
        workers = _pids(seen)
        server = _server(tmp_path, workers)
        victim = next(name for name in sorted(workers) if name != server)
        os.kill(workers[victim], signal.SIGKILL)
        out, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    text = "".join(seen) + out
    assert process.returncode == 0, text
    assert re.search(r"^round  4 ", text, re.MULTILINE), text
    assert "1 worker(s) left on the way" in text or "finished exit 0" in text
    assert len(re.findall(r": finished exit 0", text)) == 3, text  # the PS and two trainers
    server_log = (tmp_path / f"{server}.log").read_text()
    assert "pseudo-gradients; 1 late" in server_log, server_log[-3000:]
    assert "left the job" in server_log
    assert not any(process_alive(pid) for name, pid in workers.items() if name != victim)


def test_a_killed_parameter_server_fails_the_job_with_a_clear_reason(tmp_path: Path) -> None:
    """The parameter server's node is killed in round 2: the scheduler ends the job saying the
    parameter server ended; the training jobs are stopped and nothing is left running."""
    process = _devnet(tmp_path, "--rounds", "6")
    seen: list[str] = []
    try:
        _run_until(process, r"^round  1 ", seen)
        workers = _pids(seen)
        server = _server(tmp_path, workers)
        os.kill(workers[server], signal.SIGKILL)
        started = time.monotonic()
        out, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    text = "".join(seen) + out
    assert process.returncode != 0, text
    assert "training failed: the parameter server ended (lost" in text, text
    assert time.monotonic() - started < 120
    assert not any(process_alive(pid) for pid in workers.values())
    for name in workers:
        assert not list((tmp_path / f"work-{name[-1]}").glob("hypha-*/bridge.sock"))
