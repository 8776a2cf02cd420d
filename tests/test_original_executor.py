"""An executor written for the original runs unchanged: a fixture that makes exactly the
original accelerate executor's calls (tests/fixtures/original_executor.py) trains through the
devnet (gateway, data node, scheduler, two training workers, parameter server) to Done."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from hypha_sm.devnet import Devnet

pytest.importorskip("torch")
pytestmark = [pytest.mark.net, pytest.mark.slow]

FIXTURE = Path(__file__).parent / "fixtures" / "original_executor.py"


def test_the_originals_calls_train_through_the_devnet_to_done(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Bare references, the original send/receive bodies, bare "update"/"update-received",
    statuses with round_time, metrics after the send: three rounds, every job exits 0."""
    args = [
        str(FIXTURE),
        "--socket",
        "{SOCKET_PATH}",
        "--work-dir",
        "{WORK_DIR}",
        "--job",
        "{JOB_JSON}",
    ]
    devnet = Devnet(tmp_path, rounds=3, train_args=args, market_extras=False)  # python runs them
    code = trio.run(devnet.run)
    out = capfd.readouterr().out
    assert code == 0, out
    assert len(re.findall(r": finished exit 0", out)) == 3, out
    assert re.search(r"^round  3 ", out, re.MULTILINE), out
    logs = "".join((tmp_path / f"worker-{i}.log").read_text() for i in (1, 2, 3))
    assert logs.count("Finished training of 3 DiLoCo update rounds") == 2
