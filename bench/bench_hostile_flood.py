"""A stranger's floods against a real worker process: its memory and its event log, after each.

One worker (``hypha-sm run``, a real process) behind a real gateway; a stranger with a valid
key, which never accepts anything, sends in turn:

1. 5,000 advertisements with a 50 KB reply address and a bid below the floor (declined);
2. 5,000 advertisements with a 200-byte reply address, below the floor (declined);
3. 600 dispatches for a lease that does not exist, each with a 500 KB spec.

After each flood it prints the worker's resident memory (RSS, from /proc) and the bytes in
its event-log directory. Run it on two trees to compare (the figures in the hardening note
came from the commit before the fix and the fix, one after the other on the same box).

Usage: python bench/bench_hostile_flood.py [--ads N] [--dispatches N]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import trio

from hypha_sm.init import write_example
from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint, NetError
from hypha_sm.roles.gateway.gateway import Gateway
from hypha_sm.wire import messages as m
from hypha_sm.wire.identity import Identity

STRANGER = Identity.from_seed(bytes([99]) * 32)
GATEWAY = Identity.from_seed(bytes([98]) * 32)


def config(tmp: Path, gateway: str) -> Path:
    path = tmp / "worker.toml"
    write_example(path, work_dir=tmp / "work")
    create_key_file(tmp / "worker-node-key.pem")
    text = path.read_text()
    text = text.replace('["tcp://127.0.0.1:7000"]', f'["{gateway}"]')
    text = text.replace('["tcp://0.0.0.0:7200"]', '["tcp://127.0.0.1:0"]')
    text = text.replace('job_user = "auto"', 'job_user = "node"')  # see bench_renew_flood
    path.write_text(text)
    return path


def log_bytes(tmp: Path) -> int:
    return sum(p.stat().st_size for p in (tmp / "work" / "events").glob("*.jsonl"))


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 1e6


async def main(ads: int, dispatches: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        gateway = Gateway(
            Endpoint(GATEWAY),
            listen="tcp://127.0.0.1:0",
            ingest="tcp://127.0.0.1:0",
            publish="tcp://127.0.0.1:0",
        )
        with gateway.transport, Endpoint(STRANGER) as stranger:
            async with trio.open_nursery() as nursery:
                gw = await nursery.start(gateway.run)
                log = tmp / "node.log"
                with log.open("wb") as sink:
                    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
                        [sys.executable, "-m", "hypha_sm.cli", "run", str(config(tmp, gw.listen))],
                        stderr=sink,
                        stdout=subprocess.DEVNULL,
                    )
                try:
                    while not (found := re.search(r"serving on (\S+);", log.read_text())):  # noqa: ASYNC110
                        await trio.sleep(0.05)
                    worker = found.group(1)
                    await trio.sleep(1.0)
                    print(f"{'after':48} {'worker RSS':>12} {'event log':>12}")
                    print(
                        f"{'start':48} {rss_mb(proc.pid):>9.0f} MB {log_bytes(tmp) / 1e6:>9.1f} MB"
                    )
                    with stranger.publisher(dial=[gw.ingest]) as pub:
                        while not pub.connections:  # noqa: ASYNC110
                            await trio.sleep(0.01)
                        for label, address in (
                            (f"{ads:,} ads, 50 KB reply address, declined", "x" * 50_000),
                            (f"{ads:,} ads, 200 B reply address, declined", "y" * 200),
                        ):
                            for n in range(ads):
                                await pub.publish(
                                    m.Advertisement(
                                        f"{label[:3]}-{n}",
                                        str(STRANGER.peer_id),
                                        f"tcp://{address}:1",
                                        m.Resources(cpu=1, memory=1),
                                        (m.Executor("train", "diloco-transformer"),),
                                        1.0,
                                        time.time() + 5,
                                    )
                                )
                                if n % 50 == 49:
                                    await trio.sleep(0.02)
                            await trio.sleep(2.0)
                            print(
                                f"{label:48} {rss_mb(proc.pid):>9.0f} MB {log_bytes(tmp) / 1e6:>9.1f} MB"
                            )
                    spec = '{"blob": "' + "z" * 500_000 + '"}'
                    refused = 0
                    for n in range(dispatches):
                        try:
                            await stranger.request(
                                worker,
                                m.DispatchJob(
                                    f"job-{n}", "no-such-lease", m.Executor("train", "x"), spec
                                ),
                                timeout=5,
                            )
                        except NetError:
                            refused += 1
                    await trio.sleep(1.0)
                    label = f"{dispatches} dispatches, 500 KB spec, unknown lease"
                    print(
                        f"{label:48} {rss_mb(proc.pid):>9.0f} MB {log_bytes(tmp) / 1e6:>9.1f} MB"
                    )
                finally:
                    proc.terminate()
                    proc.wait()
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--ads", type=int, default=5000)
    parser.add_argument("--dispatches", type=int, default=600)
    args = parser.parse_args()
    trio.run(main, args.ads, args.dispatches)
