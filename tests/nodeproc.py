"""Real worker processes for end-to-end tests: a config from the example, a start, a scheduler's
ear, and advertisements.

``worker_config`` writes ``hypha-sm init``'s example with loopback addresses, this interpreter
(or another ``cmd``) running ``tests/fixtures/job.py`` with the given arguments as the
``train/echo`` executor, the flexible strategy, and any top-level keys replaced.
``start_node`` runs ``hypha-sm run`` and returns once it serves. ``Ear`` records what a
scheduler's request address hears (offers and job statuses) and acknowledges it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import trio

from hypha_sm.init import write_example
from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint, Publisher
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import Identity

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "job.py"
ECHO = m.Executor(cls="train", name="echo")


def worker_config(
    tmp_path: Path,
    work_dir: Path,
    gateway: str,
    job_args: list[str],
    *,
    cmd: str = sys.executable,
    script: Path = FIXTURE,
    **keys: object,
) -> Path:
    """``tmp_path/worker.toml`` (and its node key): one echo executor running ``script``."""
    path = tmp_path / "worker.toml"
    write_example(path, work_dir=work_dir)
    create_key_file(tmp_path / "worker-node-key.pem", force=True)
    text = path.read_text()
    text = text.replace('["tcp://127.0.0.1:7000"]', f'["{gateway}"]')
    text = text.replace('["tcp://0.0.0.0:7200"]', '["tcp://127.0.0.1:0"]')
    text = text.replace(f'cmd = "{sys.executable}"', f'cmd = "{cmd}"')
    text = text.replace('name = "diloco-transformer"', 'name = "echo"')
    args = ", ".join(f'"{a}"' for a in [str(script), *job_args])
    text = re.sub(r'args = \["-m", "hypha_sm.executors.diloco".*\]', f"args = [{args}]", text)
    text = re.sub(r"strategy = .*", 'strategy = "flexible"', text)
    for key, value in keys.items():
        text = re.sub(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.MULTILINE)
    path.write_text(text)
    return path


async def start_node(
    config: Path, log: Path, *, env: Mapping[str, str] | None = None
) -> tuple[trio.Process, str]:
    """``hypha-sm run config`` with its stderr in ``log``; the process and its address."""
    with log.open("wb") as sink:  # the child keeps its own copy of the descriptor
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "hypha_sm.cli", "run", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env=env,
        )
    text = trio.Path(log)
    with trio.fail_after(20):
        while not (found := re.search(r"serving on (\S+);", await text.read_text())):
            if proc.poll() is not None:
                raise AssertionError((await text.read_text())[-3000:])
            await trio.sleep(0.05)
    return proc, found.group(1)


class Ear:
    """A scheduler's request address: records offers and job statuses, acknowledges them."""

    def __init__(self) -> None:
        self.offers: list[m.WorkerOffer] = []
        self.statuses: list[m.JobStatus] = []

    async def handle(self, opened: Opened) -> m.Message:
        message = opened.message
        if isinstance(message, m.WorkerOffer):
            self.offers.append(message)
            return m.OfferAck(message.lease_id)
        assert isinstance(message, m.JobStatus)
        self.statuses.append(message)
        return m.StatusAck(message.job_id)

    def ended(self, job_id: str) -> bool:
        """Whether ``job_id`` has a final status."""
        return any(s.job_id == job_id and s.status != "running" for s in self.statuses)


async def advertise(
    pub: Publisher,
    scheduler: Identity,
    request_id: str,
    reply_address: str,
    *,
    resources: m.Resources | None = None,
    bid: float = 100.0,
) -> None:
    """Publish one advertisement for the echo executor, valid for 5 s."""
    await pub.publish(
        m.Advertisement(
            request_id,
            str(scheduler.peer_id),
            reply_address,
            resources or m.Resources(cpu=1, memory=1),
            (ECHO,),
            bid,
            time.time() + 5,
        )
    )


async def take_lease(
    sched: Endpoint,
    pub: Publisher,
    ear: Ear,
    worker: str,
    reply_address: str,
    request_id: str,
    *,
    resources: m.Resources | None = None,
) -> str:
    """Advertise, wait for the worker's offer and accept it (the first renewal); the lease."""
    offered = len(ear.offers)
    await advertise(pub, sched.identity, request_id, reply_address, resources=resources)
    while len(ear.offers) <= offered:  # noqa: ASYNC110 - the ear fills as offers arrive
        await trio.sleep(0.02)
    lease = ear.offers[offered].lease_id
    renewed = await sched.request(worker, m.RenewLease(lease))
    assert isinstance(renewed.message, m.LeaseRenewed), renewed.message
    return lease
