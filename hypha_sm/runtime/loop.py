"""The one runtime loop every role runs: wait, step, append, perform.

Theory of operation. One task owns a role's state (``Stepper``). It waits for the next input (a
verified request, a message, the report of an effect) or for the next deadline, whichever comes
first, then steps the core with that input and every other input already waiting (up to
``batch``, requests first); each step's entry is appended to the event log as it steps. Once
per such wake-up, if the steps produced effects, the log is synced (``batch`` fsync policy) and
only then are the effects handed to the role's shell, in order. Every effect that finishes later
reports back as an input. The loop never looks at a machine's phase; it knows no role.
"""

from __future__ import annotations

import collections
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Generic, TypeVar

import trio

from hypha_sm.core.engine import Engine
from hypha_sm.core.role import Role, StepResult
from hypha_sm.core.trace import Now
from hypha_sm.log.store import FILE_MODE, Recorder, make_private_dir, new_run_id
from hypha_sm.machines_io import load_engine

S = TypeVar("S")
#: Inputs stepped per wake-up before the loop performs their effects and lets others run.
WAKE_BATCH = 64


class Stepper(Generic[S]):
    """Owns a role's state: steps it with each input and hands the entry to the recorder.

    Without a recorder it just steps (tests, the devnet's throwaway roles). With one, a full
    segment is rotated before the step (its header holds a snapshot of the state before the
    input) and the entry is appended after it, before anyone sees an effect.
    """

    def __init__(
        self,
        role: Role[S, Any, Any],
        engine: Engine,
        policy: Any,
        seed: bytes,
        recorder: Recorder | None = None,
    ) -> None:
        self.role = role
        self.engine = engine
        self.state: S = role.initial(engine, policy, seed)
        self.recorder = recorder
        if recorder is not None and role.capture is not None:
            recorder.snapshot_source = self.snapshot

    def snapshot(self) -> Any:
        """The state as its role's snapshot (between steps only)."""
        if self.role.capture is None:
            raise ValueError(f"a {self.role.name}'s state has no snapshot")
        return self.role.capture(self.state)

    def feed(self, event: Any, now: Now) -> StepResult:
        """Step the core with one input at ``now`` and record it; the step's result."""
        recorder = self.recorder
        if recorder is not None and recorder.due():
            recorder.rotate_quietly()
        result = self.role.step(self.state, event, now)
        if recorder is not None:
            recorder.append(event, now, result)
        return result

    def next_deadline(self) -> float:
        """When the next deadline falls due (``inf`` if none)."""
        return self.role.next_deadline(self.state)

    def close(self) -> None:
        """Close the recorder (syncing it per its policy), if there is one."""
        if self.recorder is not None:
            self.recorder.close()

    def __enter__(self) -> Stepper[S]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def recorded_stepper(
    role: Role[S, Any, Any],
    policy: Any,
    event_log: BinaryIO | None,
    seed: bytes | None = None,
) -> Stepper[S]:
    """A role's core on its machines, recording to ``event_log`` (a plain v1 log; None: none).

    The seed is drawn here unless given (tests pass one to replay a run).
    """
    seed = seed if seed is not None else secrets.token_bytes(16)
    engine, machines_hash = load_engine(role)
    recorder = (
        None
        if event_log is None
        else Recorder(event_log, role, machines_hash, policy, seed, fsync="never")
    )
    return Stepper(role, engine, policy, seed, recorder)


def open_run_log(directory: Path, role: Role[Any, Any, Any]) -> BinaryIO:
    """A new file for one run's event log in ``directory``.

    Private like a worker's segments (0600 in a 0700 directory: it holds the id seed and job
    specs), and named like segment 1 of a rotated log, so ``hypha-sm replay DIR`` finds the
    newest run.
    """
    make_private_dir(directory)
    path = directory / f"{role.name}-{new_run_id()}-000001.jsonl"
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb")


class Inbox:
    """The loop's inputs: requests a peer waits on first, then everything else in order.

    A flood of advertisements must not delay a renewal behind thousands of queued inputs, so a
    request (``push_request``) jumps the queue and wakes the loop if it waits. At most one per
    request in flight, which the transport bounds; the rest is a bounded channel.
    """

    def __init__(self, size: int, tick: Callable[[], Any]) -> None:
        self._send, self._receive = trio.open_memory_channel[Any](size)
        self._urgent: collections.deque[Any] = collections.deque()
        self._idle: trio.CancelScope | None = None  # the loop's wait for input, if waiting
        self._tick = tick

    async def send(self, event: Any) -> None:
        """Queue an input (waits while the channel is full)."""
        await self._send.send(event)

    def push_request(self, event: Any) -> None:
        """Queue a request ahead of every other input, waking the loop if it waits."""
        self._urgent.append(event)
        if self._idle is not None:
            self._idle.cancel()

    def ready(self) -> Any | None:
        """An input that is already waiting (a request first), or None."""
        if self._urgent:
            return self._urgent.popleft()
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            return None

    async def next(self, deadline: float) -> Any:
        """A waiting request first, then the channel in order; the role's tick at the deadline."""
        # Let other tasks run between wake-ups (request handlers, bridges, the bulk server): a
        # backlog of inputs must not hold the loop for its whole length.
        await trio.lowlevel.checkpoint()
        ready = self.ready()
        if ready is not None:
            return ready
        with trio.move_on_at(deadline) as idle:
            self._idle = idle  # a request that arrives cancels the wait
            try:
                return await self._receive.receive()
            finally:
                self._idle = None
        return self._urgent.popleft() if self._urgent else self._tick()


@dataclass
class LoopStats:
    """What the loop counted."""

    steps: int = 0
    #: Wake-ups whose steps produced effects (each one log sync with ``fsync = batch``).
    wakeups_with_effects: int = 0


async def run_loop(
    stepper: Stepper[Any],
    inbox: Inbox,
    perform: Callable[[Any], None],
    *,
    stopped: trio.Event,
    stats: LoopStats | None = None,
    on_step: Callable[[Any, Any, Now], None] | None = None,
    on_log_trouble: Callable[[], None] | None = None,
    wall: Callable[[], float] = time.time,
    batch: int = WAKE_BATCH,
) -> None:
    """Step ``stepper`` with ``inbox``'s inputs and deadlines until ``stopped`` is set.

    ``perform`` carries out one effect (it must not block: effects that take time start a task
    and report back through the inbox). ``on_step`` sees every step (telemetry);
    ``on_log_trouble`` is called after a wake-up in which the event log failed to write.
    """
    stats = stats if stats is not None else LoopStats()
    recorder = stepper.recorder
    role_stopped = stepper.role.stopped
    while not stopped.is_set():
        effects: list[Any] = []
        event: Any = await inbox.next(stepper.next_deadline())
        for _ in range(batch):
            if event is None:
                break
            now = Now(trio.current_time(), wall())
            result = stepper.feed(event, now)
            if on_step is not None:
                on_step(event, result, now)
            stats.steps += 1
            effects.extend(result.effects)
            if role_stopped(result.effects):
                break
            event = inbox.ready()
        if recorder is not None and recorder.error is not None and on_log_trouble is not None:
            on_log_trouble()  # e.g. the disk monitor frees space and tells the core
        if effects:
            # The entries reach the disk before anyone sees an effect. In a thread: a disk
            # busy with a job's checkpoints must not stall the sockets meanwhile.
            if recorder is not None and recorder.fsync == "batch" and recorder.unsynced:
                await trio.to_thread.run_sync(recorder.sync)
            stats.wakeups_with_effects += 1
        for effect in effects:
            perform(effect)
    if recorder is not None:
        recorder.flush()
