"""Dispatch received → executor process started, vs a bare spawn of the same command.

Both sides time from "go" until the child process has written one byte to a pipe (it is running
Python code). hypha-sm: the ``LocalExecutor.start`` path a dispatch takes after the core's
decision (work dir 0700, the job's bridge bound on its Unix socket, templated args/env, own
session, limits, spawn); the core's own decision is ~10 µs and left out. Baseline:
``subprocess.Popen`` of the same command. Target: <= 2x. Usage: python bench/bench_dispatch.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from hypha_sm.config.worker import ExecutorSettings
from hypha_sm.core.resources import Amounts
from hypha_sm.roles.worker.core.effects import StartJob
from hypha_sm.roles.worker.core.policy import ExecutorSpec
from hypha_sm.roles.worker.jobs import LocalExecutor
from hypha_sm.roles.worker.process import ProcessSettings

# The child says it runs by writing to a FIFO (a FIFO survives close_fds, unlike a pipe).
CHILD = "import sys; open(sys.argv[1], 'wb').write(b'u')"


def _read_one(fifo: Path) -> None:
    with fifo.open("rb") as f:
        f.read(1)


def bare(reps: int, base: Path) -> list[float]:
    times = []
    for n in range(reps):
        fifo = base / f"bare-{n}.fifo"
        os.mkfifo(fifo)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(fifo)])
        _read_one(fifo)
        times.append(time.perf_counter() - start)
        proc.wait()
    return times


async def hypha(reps: int, base: Path) -> list[float]:
    times = []
    async with trio.open_nursery() as nursery:
        for n in range(reps):
            fifo = base.parent / f"ours-{n}.fifo"
            os.mkfifo(fifo)
            config = ExecutorSettings.model_validate(
                {
                    "class": "train",
                    "name": "b",
                    "runtime": "process",
                    "cmd": sys.executable,
                    "args": ["-c", CHILD, str(fifo)],
                }
            )
            executor = LocalExecutor(nursery, ProcessSettings(work_dir=base), [config])
            job = StartJob(
                job_id=f"j{n}",
                lease_id="l",
                executor=ExecutorSpec(cls="train", name="b", runtime="process"),
                spec="{}",
                work_dir_id=f"{n:08d}-0000-4000-8000-000000000000",
                resources=Amounts(cpu=1),
            )
            start = time.perf_counter()
            await executor.start(job)
            await trio.to_thread.run_sync(_read_one, fifo)
            times.append(time.perf_counter() - start)
            await executor.wait(job.job_id)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        base_times = bare(args.reps, Path(tmp))
        ours = trio.run(hypha, args.reps, Path(tmp) / "work")
    b, h = statistics.median(base_times), statistics.median(ours)
    print(f"bare Popen until the child runs:        median {b * 1e3:6.1f} ms")
    print(f"hypha-sm start (work dir, bridge, spawn): median {h * 1e3:6.1f} ms")
    print(f"ratio {h / b:.2f}x (target <= 2x): {'PASS' if h / b <= 2 else 'MISS'}")


if __name__ == "__main__":
    main()
