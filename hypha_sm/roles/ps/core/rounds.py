"""The parameter server's state, the guards and actions of its round machine, and ``step``.

One record (``round``, key ``job``) runs the machine. Which files count is decided here: a
file counts if it comes from a live worker of the job, names this round (or no round), has a
usable header with the round's layout, and is its sender's first this round. Anything else is
dropped with a counted reason. A worker that could not be reached with an update leaves the
live set (and the quorum); the rounds go on with the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from hypha_sm.core.engine import Ctx as _Ctx
from hypha_sm.core.engine import Engine, Registry
from hypha_sm.core.host import Host
from hypha_sm.core.record import Record
from hypha_sm.core.spec import MachineSpec
from hypha_sm.core.trace import Now, TraceEntry
from hypha_sm.roles.ps.core.model import (
    Aggregate,
    Aggregated,
    AggregateFailed,
    DropFile,
    Effect,
    Event,
    FileArrived,
    Finished,
    Notice,
    PSPlan,
    Publish,
    Published,
    RemoveFiles,
    Reported,
    ReportFailed,
    ReportUpdated,
    Stop,
    Tick,
)

KINDS = ("round",)
JOB = "job"


class RoundRec(Record):
    """The job's rounds."""

    __slots__ = ()
    kind = "round"


class PSState(Host[Effect]):
    """The round in progress, the live workers, and the layout every file must have."""

    def __init__(self, engine: Engine, plan: PSPlan, seed: bytes) -> None:
        super().__init__(engine, KINDS, seed)
        self.plan = plan
        self.round = 1
        self.live: list[str] = list(plan.workers)
        #: This round's files by sender: (path, samples).
        self.files: dict[str, tuple[str, int]] = {}
        #: The layout every file must share (set by the first file ever taken).
        self.signature = ""
        self.update_path = ""
        self.finished: tuple[bool, str] | None = None

    def needed(self) -> int:
        """Files that close a round at its deadline."""
        quorum = self.plan.quorum or len(self.live)
        return max(1, min(quorum, len(self.live)))

    def describe(self) -> dict[str, Any]:
        out = Host.describe(self)
        out.update(round=self.round, live=list(self.live), files=sorted(self.files))
        return out


Ctx = _Ctx[PSState]
ROUND = Registry.new("round")
REGISTRIES = {"round": ROUND}


def unwanted(state: PSState, event: FileArrived) -> str:
    """Why a file does not count this round ("" if it does)."""
    if event.peer not in state.plan.workers:
        return "stranger"
    if event.peer not in state.live:
        return "not_live"
    if event.problem:
        return "malformed"
    if event.round and event.round < state.round:
        return "late"
    if event.round > state.round:
        return "early"
    if event.peer in state.files:
        return "duplicate"
    if state.signature and event.signature != state.signature:
        return "layout_differs"
    return ""


@ROUND.guard
def not_wanted(ctx: Ctx) -> bool:
    """The file does not count (see ``unwanted``)."""
    return bool(unwanted(ctx.state, ctx.event))


@ROUND.guard
def completes_round(ctx: Ctx) -> bool:
    """With this file every live worker has sent its own."""
    state, event = ctx.state, ctx.event
    return len(state.files) + 1 >= len(state.live) and event.peer not in state.files


@ROUND.guard
def quorum_met(ctx: Ctx) -> bool:
    """Enough files arrived for the round to close without the stragglers."""
    state = ctx.state
    return len(state.files) >= state.needed()


@ROUND.guard
def nobody_reached(ctx: Ctx) -> bool:
    """The update reached no worker."""
    published: Published = ctx.event
    return not any(v == "delivered" for v in published.outcomes.values())


@ROUND.guard
def last_round(ctx: Ctx) -> bool:
    """The scheduler said training is done."""
    reported: Reported = ctx.event
    return reported.done


def _drop(state: PSState, event: FileArrived, reason: str) -> None:
    state.count(f"files.dropped.{reason}")
    state.emit(DropFile(event.path, event.peer, reason))


@ROUND.action
def drop_file(ctx: Ctx) -> None:
    """The file does not count: delete it, count why."""
    state, event = ctx.state, ctx.event
    _drop(state, event, unwanted(state, event) or "round_closed")


@ROUND.action
def take_file(ctx: Ctx) -> None:
    """The file counts for this round."""
    state, event = ctx.state, ctx.event
    state.files[event.peer] = (event.path, event.samples)
    state.signature = state.signature or event.signature
    state.count("files.taken")


@ROUND.action
def start_deadline(ctx: Ctx) -> None:
    """The round's first file starts the stragglers' clock."""
    state = ctx.state
    state.arm_after(ctx.rec, state.plan.round_timeout)


@ROUND.action
def note_stragglers(ctx: Ctx) -> None:
    """Close the round without the workers that did not send in time."""
    state = ctx.state
    missing = [w for w in state.live if w not in state.files]
    state.count("rounds.partial")
    state.emit(
        Notice(
            "warning",
            f"round {state.round}: closing with {len(state.files)} of {len(state.live)} "
            f"pseudo-gradients; {len(missing)} late",
        )
    )


@ROUND.action
def aggregate(ctx: Ctx) -> None:
    """Average the files, take the outer step (off the loop); the update streams out as written."""
    state = ctx.state
    senders = [w for w in state.plan.workers if w in state.files]  # the job's order
    files = tuple(state.files[w][0] for w in senders)
    samples = [state.files[w][1] for w in senders]
    by_samples = state.plan.weighting == "samples" and all(s > 0 for s in samples)
    weights = tuple(float(s) if by_samples else 1.0 for s in samples)
    state.emit(Aggregate(state.round, files, weights, state.round == 1, tuple(state.live)))


@ROUND.action
def publish(ctx: Ctx) -> None:
    """Send the update to every live worker."""
    state = ctx.state
    done: Aggregated = ctx.event
    state.update_path = done.path
    state.emit(Publish(state.round, done.path, tuple(state.live), done.blake3))


@ROUND.action
def forget_unreachable(ctx: Ctx) -> None:
    """A worker the update did not reach has left the job: it leaves the live set and quorum."""
    state = ctx.state
    published: Published = ctx.event
    for worker, outcome in sorted(published.outcomes.items()):
        if outcome != "delivered" and worker in state.live:
            state.live.remove(worker)
            state.count("workers.left")
            state.emit(Notice("warning", f"{worker[:12]}… left the job: {outcome}"))


@ROUND.action
def report(ctx: Ctx) -> None:
    """Tell the scheduler the update is out."""
    state = ctx.state
    state.emit(ReportUpdated(state.round))


def _clean(state: PSState, *, update: bool) -> None:
    paths = tuple(p for p, _ in state.files.values())
    if update and state.update_path:  # between rounds it is kept: the next is written over it
        paths += (state.update_path,)
    if paths:
        state.emit(RemoveFiles(paths))
    state.files = {}
    state.update_path = ""


@ROUND.action
def next_round(ctx: Ctx) -> None:
    """The next round starts collecting."""
    state = ctx.state
    _clean(state, update=False)
    state.count("rounds.done")
    state.round += 1


def _end(state: PSState, ok: bool, reason: str) -> None:
    _clean(state, update=True)
    state.finished = (ok, reason)
    if reason:
        state.emit(Notice("info" if ok else "error", reason))
    state.emit(Finished(ok, reason))


@ROUND.action
def finish(ctx: Ctx) -> None:
    """The scheduler said the last round is done."""
    state = ctx.state
    state.count("rounds.done")
    _end(state, True, "")


@ROUND.action_with_arg
def fail(ctx: Ctx, why: str) -> None:
    """The round cannot complete: the job fails with a reason the scheduler sees."""
    state = ctx.state
    event = ctx.event
    detail = getattr(event, "reason", "")
    if why == "below_quorum":
        detail = f"{len(state.files)} of {state.needed()} pseudo-gradients in time"
    elif isinstance(event, Published):  # nobody reached: say why for each worker
        reasons = (f"{w[:12]}…: {o}" for w, o in sorted(event.outcomes.items()))
        detail = "; ".join(reasons)[:400]
    _end(state, False, f"round {state.round}: {why}" + (f": {detail}" if detail else ""))


@ROUND.action
def finish_stopped(ctx: Ctx) -> None:
    """Cancelled from outside."""
    _end(ctx.state, False, "stopped")


# -- step ------------------------------------------------------------------------------------


class Step(NamedTuple):
    """What one input did."""

    state: PSState
    effects: tuple[Effect, ...]
    trace: tuple[TraceEntry, ...]


def build_engine(specs: dict[str, MachineSpec]) -> Engine:
    """Bind the round machine to its guards and actions."""
    return Engine(specs, REGISTRIES)


def initial_state(engine: Engine, plan: PSPlan, seed: bytes) -> PSState:
    """Round 1, collecting."""
    state = PSState(engine, plan, seed)
    state.create(RoundRec(JOB))
    state.trace.clear()
    return state


def step(state: PSState, event: Event, now: Now) -> Step:
    """Apply one input at ``now``. Deterministic; mutates and returns ``state``."""
    state.begin(now)
    state.fire_due()
    if JOB not in state.records["round"]:
        state.count(f"late.{type(event).__name__}")
        if isinstance(event, FileArrived):
            state.emit(DropFile(event.path, event.peer, "job_over"))
    else:
        _ROUTES[type(event)](state, event)
    state.drain()
    return Step(state, tuple(state.effects), tuple(state.trace))


def _fire(name: str) -> Callable[[PSState, Any], None]:
    def route(state: PSState, event: Any) -> None:
        if getattr(event, "round", state.round) != state.round:
            state.count(f"late.{name}")  # a result of a round that ended meanwhile
        else:
            state.fire("round", JOB, name, event)

    return route


_ROUTES: dict[type, Callable[[PSState, Any], None]] = {
    Tick: lambda state, event: None,
    FileArrived: lambda state, event: state.fire("round", JOB, "file_arrived", event),
    Aggregated: _fire("aggregated"),
    AggregateFailed: _fire("aggregate_failed"),
    Published: _fire("published"),
    Reported: _fire("reported"),
    ReportFailed: _fire("report_failed"),
    Stop: lambda state, event: state.fire("round", JOB, "stop", event),
}


def next_deadline(state: PSState) -> float:
    """The monotonic time of the next deadline (``inf`` if none)."""
    return state.next_deadline()


def stopped(effects: Any) -> bool:
    """The job is over."""
    return any(isinstance(e, Finished) for e in effects)
