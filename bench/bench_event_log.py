"""The event log's cost: steps/s with each ``event_log_fsync`` policy against no log at all.

The same realistic input sequence (``bench_replay.record``'s busy worker: advertisement bursts,
offers, acceptances, renewals, dispatches, exits, acks) is stepped through the core:

- ``no log``: ``step`` alone (the baseline, same run);
- ``never``: every entry written straight to a real segment file (one ``write`` per entry);
- ``batch``: as ``never``, plus one ``fdatasync`` per loop wake-up that produced effects; the
  wake-up size is how many inputs the node found waiting at once, 1 (a quiet node: every
  renewal is its own wake-up, the worst case) or 16 (a busy one);
- ``always``: one ``fdatasync`` after every entry.

The files go to a temporary directory on the file system of ``--dir`` (default: the current
directory's), so the disk is the one a worker would use. Medians of ``--repeat`` runs.

Usage: python bench/bench_event_log.py [--events N] [--repeat R] [--dir PATH]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_replay import POLICY, record

from hypha_sm.log.codec import decode_entry
from hypha_sm.log.store import Recorder
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.worker.core.events import Event, Now
from hypha_sm.roles.worker.core.reducer import initial_state, step
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.runtime.loop import Stepper


def inputs(count: int) -> list[tuple[Event, Now]]:
    lines = record(count).splitlines(keepends=True)[1:]
    return [
        (e.event, e.now)
        for e in (decode_entry(line, i, WORKER) for i, line in enumerate(lines, 2))
    ]


def run_step_only(events: list[tuple[Event, Now]], _: Path) -> float:
    engine, _hash = load_engine(WORKER)
    state = initial_state(engine, POLICY, bytes(16))
    start = time.perf_counter()
    for event, now in events:
        step(state, event, now)
    return time.perf_counter() - start


def run_logged(fsync: str, wake: int) -> Callable[[list[tuple[Event, Now]], Path], float]:
    def run(events: list[tuple[Event, Now]], directory: Path) -> float:
        engine, machines_hash = load_engine(WORKER)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            rec = Recorder.open_rotating(
                Path(tmp),
                WORKER,
                machines_hash,
                POLICY,
                bytes(16),
                fsync=fsync,  # type: ignore[arg-type]
            )
            stepper = Stepper(WORKER, engine, POLICY, bytes(16), rec)
            start = time.perf_counter()
            effects = False
            for n, (event, now) in enumerate(events, start=1):
                effects |= bool(stepper.feed(event, now).effects)
                if n % wake == 0 and effects:  # the node's loop: one sync per wake-up
                    rec.sync()
                    effects = False
            rec.sync()
            elapsed = time.perf_counter() - start
            syncs = rec.syncs
            rec.close()
        run.syncs = syncs  # type: ignore[attr-defined]
        return elapsed

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("."))
    args = parser.parse_args()
    events = inputs(args.events)
    cases: list[tuple[str, Callable[[list[tuple[Event, Now]], Path], float]]] = [
        ("no log (step only)", run_step_only),
        ("never", run_logged("never", 1)),
        ("batch, 16 inputs per wake-up", run_logged("batch", 16)),
        ("batch, 1 input per wake-up", run_logged("batch", 1)),
        ("always", run_logged("always", 1)),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.repeat):  # alternate the cases: the machine is noisy
        for name, run in cases:
            times[name].append(run(events, args.dir))
    print(
        f"python {platform.python_version()}, {len(events):,} inputs, log dir {args.dir.resolve()}"
    )
    base = len(events) / statistics.median(times[cases[0][0]])
    print(f"{'policy':32} {'steps/s':>12} {'vs no log':>10} {'syncs':>8}")
    for name, run in cases:
        rate = len(events) / statistics.median(times[name])
        syncs = getattr(run, "syncs", 0)
        print(f"{name:32} {rate:>12,.0f} {rate / base:>9.2f}x {syncs:>8,}")


if __name__ == "__main__":
    main()
