"""`hypha-sm devnet` end to end: a gateway, the scheduler and two workers as real processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hypha_sm.log.codec import decode_entry
from hypha_sm.log.replay import replay
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.worker.core.events import RenewRequested
from hypha_sm.roles.worker.core.role import WORKER
from tests.helpers import process_alive

pytestmark = [pytest.mark.net, pytest.mark.slow]


def test_devnet_runs_the_demo_job_on_two_workers_end_to_end(tmp_path: Path) -> None:
    """ad → offer → accept → renewals → dispatch → each job fetches a file:// corpus, reports
    every round, sends its counts to the other worker and merges theirs → exit 0 → finished →
    leases released; every process stops; each worker's event log and the scheduler's replay
    (the scheduler's through the CLI, as a user would)."""
    result = subprocess.run(
        [sys.executable, "-m", "hypha_sm.cli", "devnet", "--dir", str(tmp_path), "--rounds", "4"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert len(re.findall(r"round [1-4]: loss=\d", out)) == 8, out
    merged = [float(x) for x in re.findall(r"round 5: merged_loss=([\d.]+)", out)]
    assert len(merged) == 2
    assert merged[0] == pytest.approx(merged[1])  # both merged the same counts
    assert len(re.findall(r": finished exit 0", out)) == 2, out

    engine, machines_hash = load_engine(WORKER)
    for i in (1, 2):
        work = tmp_path / f"work-{i}"
        assert not list(work.glob("hypha-*")), "a successful job's work dir is removed"
        (log_file,) = (work / "events").glob("*.jsonl")
        lines = log_file.read_bytes().splitlines(keepends=True)
        report = replay(lines, engine, machines_hash, role=WORKER)
        assert report.ok, (report.divergence, report.error)
        assert report.state.reserved == (0, 0, 0, 0), "the lease was released with its job"
        entries = [decode_entry(line, n, WORKER) for n, line in enumerate(lines[1:], start=2)]
        renewals = [e for e in entries if isinstance(e.event, RenewRequested)]
        assert len(renewals) >= 2, "accepted, then renewed while the job ran"
        log_text = (tmp_path / f"worker-{i}.log").read_text()
        assert "sent counts-" in log_text
    replayed = subprocess.run(
        [sys.executable, "-m", "hypha_sm.cli", "replay", str(tmp_path / "scheduler-events")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "(scheduler, v1," in replayed.stdout
    assert "effects match the recording" in replayed.stdout
    # Nothing keeps running: the gateway and workers were stopped.
    # The data node served the corpus as slices; the two jobs shared the epoch, every slice once.
    manifest = json.loads((tmp_path / "datasets" / "pydoc" / "dataset.json").read_text())
    logs = "".join((tmp_path / f"worker-{i}.log").read_text() for i in (1, 2))
    fetched = [int(n) for n in re.findall(r"fetched (\d+) slices of pydoc", logs)]
    assert len(fetched) == 2
    assert sum(fetched) == len(manifest["slices"])
    for events in ("scheduler-events", "data-events"):
        replayed = subprocess.run(
            [sys.executable, "-m", "hypha_sm.cli", "replay", str(tmp_path / events)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert "effects match the recording" in replayed.stdout
    pids = [int(pid) for pid in re.findall(r"pid (\d+)", out)]
    assert len(pids) == 4  # the gateway, the data node and two workers
    assert not any(process_alive(pid) for pid in pids)
