"""Writing event logs to files: the recorder the node runs with, and saving test inputs as logs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from hypha_sm import __version__
from hypha_sm.core.engine import Engine
from hypha_sm.core.events import Event, Now
from hypha_sm.core.policy import Policy
from hypha_sm.core.reducer import Step, initial_state, step
from hypha_sm.core.state import WorkerState
from hypha_sm.log.codec import FORMAT, VERSION, Entry, Header, encode_entry, encode_header


def make_header(machines_hash: str, policy: Policy, seed: bytes) -> Header:
    """The header for a log of a worker started with this policy and seed."""
    return Header(
        format=FORMAT,
        version=VERSION,
        machines_hash=machines_hash,
        engine_version=__version__,
        seed=seed.hex(),
        policy=policy,
    )


class Recorder:
    """Runs the core and appends every input, its time and its effects to a log.

    The entry is written after ``step`` computes the effects and before anyone performs them,
    so a crash never leaves an effect performed but unlogged.
    """

    def __init__(
        self, sink: BinaryIO, engine: Engine, machines_hash: str, policy: Policy, seed: bytes
    ) -> None:
        self.sink = sink
        self.state: WorkerState = initial_state(engine, policy, seed)
        self.seq = 0
        sink.write(encode_header(make_header(machines_hash, policy, seed)))

    def feed(self, event: Event, now: Now) -> Step:
        """Step the core with one input and record it."""
        result = step(self.state, event, now)
        self.seq += 1
        entry = Entry(self.seq, now.mono, now.wall, event, list(result.effects))
        self.sink.write(encode_entry(entry))
        return result

    def flush(self) -> None:
        """Push buffered lines to the file."""
        self.sink.flush()


def write_inputs(
    path: Path,
    engine: Engine,
    machines_hash: str,
    policy: Policy,
    seed: bytes,
    inputs: Iterable[tuple[Now, Event]],
) -> None:
    """Save a sequence of inputs as a log (used to keep failing property-test examples).

    Effects are recorded for each step that completes; the step that raises, if any, is
    written without effects, so replaying the log reproduces the failure at that entry.
    """
    with path.open("wb") as sink:
        sink.write(encode_header(make_header(machines_hash, policy, seed)))
        state = initial_state(engine, policy, seed)
        failed = False
        for seq, (now, event) in enumerate(inputs, start=1):
            effects = None
            if not failed:
                try:
                    effects = list(step(state, event, now).effects)
                except Exception:
                    failed = True
            sink.write(encode_entry(Entry(seq, now.mono, now.wall, event, effects)))


def read_lines(path: Path) -> Iterator[bytes]:
    """The log's lines, read lazily."""
    with path.open("rb") as f:
        yield from f
