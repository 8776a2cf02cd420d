"""Health and `hypha-sm probe`: healthy only while listening and connected to a gateway."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from hypha_sm.config.worker import WorkerSettings
from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint
from hypha_sm.roles.worker.run import run_worker
from hypha_sm.wire.identity import Identity
from tests.netkit import running_gateway, wait_healthy

pytestmark = pytest.mark.net


def settings(tmp_path: Path, gateway: str) -> WorkerSettings:
    create_key_file(tmp_path / "node.pem", force=True)
    return WorkerSettings(
        node_key=tmp_path / "node.pem",
        gateway_addresses=[gateway],
        listen_addresses=["tcp://127.0.0.1:0"],
        work_dir=tmp_path / "w",
        resources={"cpu": 1, "memory": 1, "storage": 1},
        executors=[
            {"class": "aggregate", "name": "parameter-server", "runtime": "parameter-server"}
        ],
    )


async def run_probe(address: str, ms: int = 1500) -> tuple[int, str]:
    """Exit code and output of `hypha-sm probe` run as its own process."""
    result: subprocess.CompletedProcess[bytes] = await trio.run_process(
        [sys.executable, "-m", "hypha_sm.cli", "probe", address, "--timeout", str(ms)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).decode()


async def test_probe_exits_0_only_while_the_worker_is_connected_to_a_gateway(
    tmp_path: Path,
) -> None:
    """Connected to a gateway: healthy (exit 0). No gateway reachable: unhealthy (exit 1)."""
    async with (
        running_gateway(Endpoint(Identity.from_seed(bytes([41]) * 32))) as gw,
        trio.open_nursery() as nursery,
    ):
        worker = await nursery.start(run_worker, settings(tmp_path, gw.listen))
        with Endpoint(Identity.from_seed(bytes([42]) * 32)) as asker, trio.fail_after(10):
            await wait_healthy(asker, worker)
        healthy = await run_probe(worker)
        nursery.cancel_scope.cancel()
    assert healthy[0] == 0, healthy[1]
    assert "healthy" in healthy[1]

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(run_worker, settings(tmp_path, "tcp://127.0.0.1:9"))
        unhealthy = await run_probe(worker)
        nursery.cancel_scope.cancel()
    assert unhealthy[0] == 1, unhealthy[1]
    assert "unhealthy" in unhealthy[1]


async def test_probe_of_nothing_fails_within_its_timeout() -> None:
    """No node at the address: exit 1 with the reason, within the timeout."""
    with trio.fail_after(10):
        result = await run_probe("tcp://127.0.0.1:9", ms=500)
    assert result[0] == 1
    assert "no healthy answer" in result[1]
