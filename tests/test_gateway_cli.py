"""`hypha-sm gateway run` as a real process: config file plus flags, health, records, SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from hypha_sm.cli import main
from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import Ack, Health, HealthReply, Lookup, LookupReply, PeerRecord

pytestmark = pytest.mark.net


def start_gateway(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    create_key_file(tmp_path / "gw-key.pem")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'node_key = "{tmp_path / "gw-key.pem"}"\n'
        'listen = "tcp://127.0.0.1:0"\n'
        'ingest = "tcp://127.0.0.1:0"\n'
        'publish = "tcp://127.0.0.1:0"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypha_sm.cli", "gateway", "run", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"ready: listen (\S+) ingest (\S+) publish (\S+)", line)
    if not found:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"gateway did not start: {line!r} {err}")
    return proc, dict(zip(("listen", "ingest", "publish"), found.groups(), strict=True))


async def test_a_gateway_process_serves_records_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    """The gateway answers health and stores a node's record; SIGTERM stops it with exit 0."""
    proc, addresses = start_gateway(tmp_path, "--ingest", "tcp://127.0.0.1:0")
    try:
        node = Identity.from_seed(bytes([9]) * 32)
        with Endpoint(node) as client:
            health = await client.request(addresses["listen"], Health(), timeout=5)
            record = PeerRecord(str(node.peer_id), ("tcp://127.0.0.1:7300",), time.time() + 60)
            stored = await client.request(addresses["listen"], record, timeout=5)
            found = await client.request(
                addresses["listen"], Lookup(peer=str(node.peer_id)), timeout=5
            )
        assert health.message == HealthReply(True)
        assert stored.message == Ack()
        assert isinstance(found.message, LookupReply)
        assert len(found.message.records) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0
    assert "gateway stopped" in err


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('listen = "tcp://127.0.0.1:0"\n', "node_key: missing (required)"),
        ('node_key = "k.pem"\nrelay_queue = 0\n', "relay_queue = 0"),
        (
            'node_key = "k.pem"\nlisten = "tls+tcp://127.0.0.1:0"\n',
            "need cert_pem, key_pem, trust_pem",
        ),
        ('node_key = "k.pem"\nlisten_on = "x"\n', "listen_on: unknown key"),
    ],
)
def test_bad_gateway_configs_fail_with_their_own_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, message: str
) -> None:
    """Each bad config exits 2 naming the key and the problem; nothing starts."""
    config = tmp_path / "gateway.toml"
    config.write_text(toml)
    assert main(["gateway", "run", str(config)]) == 2
    assert message in capsys.readouterr().err
