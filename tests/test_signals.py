"""SIGHUP (the terminal closed) stops a worker node as cleanly as SIGTERM, with its line
(issue 14, item 8)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from tests.nodeproc import start_node, worker_config

pytestmark = [pytest.mark.net]


async def test_sighup_stops_the_worker_cleanly_and_says_so(tmp_path: Path) -> None:
    config = worker_config(tmp_path, tmp_path / "work", "tcp://127.0.0.1:1", ["sleep"])
    node, _ = await start_node(config, tmp_path / "node.log")
    node.send_signal(signal.SIGHUP)
    with trio.fail_after(30):
        code = await node.wait()
    log = (tmp_path / "node.log").read_text()
    assert code == 0, log[-2000:]
    assert "SIGHUP: stopping" in log
    assert "node stopped" in log


async def test_a_missing_certificate_does_not_stop_a_node_without_tls_addresses(
    tmp_path: Path,
) -> None:
    """With every address plain tcp://, the TLS files are not used, so a missing one is not an
    error (issue 14, item 4: `run` refused it)."""
    config = worker_config(tmp_path, tmp_path / "work", "tcp://127.0.0.1:1", ["sleep"])
    text = config.read_text().replace('# cert_pem = "worker-cert.pem"', 'cert_pem = "gone.pem"')
    text = text.replace('# key_pem = "worker-key.pem"', 'key_pem = "gone-key.pem"')
    config.write_text(
        text.replace('# trust_pem = "worker-trust.pem"', 'trust_pem = "gone-ca.pem"')
    )
    node, _ = await start_node(config, tmp_path / "node.log")  # it serves
    node.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await node.wait() == 0
