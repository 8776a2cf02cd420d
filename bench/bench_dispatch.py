"""Dispatch received → executor process started, vs a bare spawn of the same command.

Both sides time from "go" until the child process has written one byte to a pipe (it is running
Python code). hypha-sm: the ``LocalExecutor.start`` path a dispatch takes after the core's
decision (work dir 0700, the job's bridge bound on its Unix socket, templated args/env, own
session, limits, spawn); the core's own decision is ~10 µs and left out. Baseline:
``subprocess.Popen`` of the same command. Target: <= 2x. The two alternate, one of each per
repetition (the machine's speed drifts between minutes), and the ratio is the median of the
pairs' ratios. Usage: python bench/bench_dispatch.py
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
from hypha_sm.roles.worker.limits import find_cgroup_parent, slow_cgroup_migrations
from hypha_sm.roles.worker.process import ProcessSettings

# The child says it runs by writing to a FIFO (a FIFO survives close_fds, unlike a pipe).
CHILD = "import sys; open(sys.argv[1], 'wb').write(b'u')"


def _read_one(fifo: Path) -> None:
    with fifo.open("rb") as f:
        f.read(1)


def bare_once(base: Path, n: int) -> float:
    fifo = base / f"bare-{n}.fifo"
    os.mkfifo(fifo)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(fifo)])
    _read_one(fifo)
    elapsed = time.perf_counter() - start
    proc.wait()
    return elapsed


async def pairs(reps: int, base: Path) -> list[tuple[float, float]]:
    """(bare, hypha-sm) seconds, alternating, ``reps`` pairs (and one warm-up of each)."""
    out = []
    work = base / "work"
    async with trio.open_nursery() as nursery:
        for n in range(reps + 1):
            bare = bare_once(base, n)  # blocks the loop briefly: nothing else runs on it
            fifo = base / f"ours-{n}.fifo"
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
            executor = LocalExecutor(nursery, ProcessSettings(work_dir=work), [config])
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
            ours = time.perf_counter() - start
            await executor.wait(job.job_id)
            if n:  # the first pair warms caches up
                out.append((bare, ours))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        measured = trio.run(pairs, args.reps, Path(tmp))
    b = statistics.median(x for x, _ in measured)
    h = statistics.median(y for _, y in measured)
    ratio = statistics.median(y / x for x, y in measured)
    print(f"bare Popen until the child runs:        median {b * 1e3:6.1f} ms")
    print(f"hypha-sm start (work dir, bridge, spawn): median {h * 1e3:6.1f} ms")
    print(
        f"ratio, median of {len(measured)} alternating pairs {ratio:.2f}x "
        f"(target <= 2x): {'PASS' if ratio <= 2 else 'MISS'}"
    )
    where = find_cgroup_parent()
    if where is None:
        print("jobs ran without a cgroup (none writable here)")
    else:
        mounted = "without" if slow_cgroup_migrations() else "with"
        print(f"jobs ran in cgroups under {where}; cgroup2 mounted {mounted} favordynmods")


if __name__ == "__main__":
    main()
