"""The training executor under ``accelerate launch`` with two processes on the CPU (gloo): rank 0
talks to the bridge and broadcasts what it learns, so rank 1 follows it through every round
(the original's other ranks never left their inner loop, hypha-execution.md §5.5)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trio
from safetensors.torch import load_file

from hypha_sm.devnet import Devnet

pytest.importorskip("accelerate")
pytestmark = [pytest.mark.net, pytest.mark.slow]

LAUNCH = [
    "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
    "--main_process_port", "0",
    "-m", "hypha_sm.executors.diloco",
    "--socket", "{SOCKET_PATH}", "--work-dir", "{WORK_DIR}", "--job", "{JOB_JSON}",
]  # fmt: skip


def test_two_accelerate_processes_per_worker_train_rounds_to_done(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Two ranks per worker (gloo), with the pseudo-gradients in bfloat16 on the wire: half the
    bytes up, the PS averages in float32 and answers in bfloat16."""
    devnet = Devnet(
        tmp_path, rounds=2, train_args=LAUNCH, precision="bfloat16", market_extras=False
    )
    code = trio.run(devnet.run)
    out = capfd.readouterr().out
    assert code == 0, out
    assert re.search(r"^round  2 ", out, re.MULTILINE), out
    logs = "".join((tmp_path / f"worker-{i}.log").read_text() for i in (1, 2, 3))
    assert logs.count("diloco executor: rank 0 of 2") == 2, logs[-4000:]
    assert logs.count("diloco executor: rank 1 of 2") == 2, logs[-4000:]
    assert logs.count("Finished training of 2 DiLoCo update rounds") == 2
    sizes = [
        json.loads(line)["metrics"]
        for line in (tmp_path / "metrics" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["round"] == 1
    ]
    params = sum(
        p.numel()
        for p in load_file(str(tmp_path / "checkpoints" / "round-0-rank-0.safetensors")).values()
    )
    for metrics in sizes:  # 2 bytes per parameter each way, plus the headers
        assert 2 * params <= metrics["bytes_sent"] < 2 * params + 16384
        assert 2 * params <= metrics["bytes_received"] < 2 * params + 16384
    # Both workers' global weights are the same after every round (checkpoints of rank 0).
    for rnd in range(3):
        first = (tmp_path / "checkpoints" / f"round-{rnd}-rank-0.safetensors").read_bytes()
        assert first == (tmp_path / "checkpoints" / f"round-{rnd}-rank-1.safetensors").read_bytes()
