"""Start ``hypha-sm gateway run`` as its own process for a benchmark (ports chosen by the OS)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import IO

from hypha_sm.net.keys import create_key_file
from hypha_sm.roles.gateway.gateway import GatewayAddresses

LOOPBACK = "tcp://127.0.0.1:0"


def start_gateway(
    tmp: Path, stderr: IO[str] | int = subprocess.PIPE
) -> tuple[subprocess.Popen[str], GatewayAddresses]:
    """The gateway process and the addresses it printed once ready (its stats go to stderr)."""
    create_key_file(tmp / "gw.pem", force=True)
    command = [sys.executable, "-m", "hypha_sm.cli", "gateway", "run"]
    addresses = ["--listen", LOOPBACK, "--ingest", LOOPBACK, "--publish", LOOPBACK]
    gw = subprocess.Popen(
        [*command, "--node-key", str(tmp / "gw.pem"), *addresses],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    assert gw.stdout is not None
    found = re.search(r"listen (\S+) ingest (\S+) publish (\S+)", gw.stdout.readline())
    assert found, "the gateway did not start"
    return gw, GatewayAddresses(*found.groups())
