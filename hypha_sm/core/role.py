"""What a role brings to the engine, the event log and the runtime loop: one ``Role`` value.

A role (the worker, the scheduler) is a set of declared machines plus the pure code that runs
them: its state type, its events and effects, its ``step``. The role-free parts (the recorder,
replay, the loop, ``hypha-sm machines`` and ``diagram``) take a ``Role`` and never import a
role's modules, so adding a role is writing one of these and its machines directory.

Pure: the functions a role hands in must be deterministic, as ``step`` is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from hypha_sm.core.engine import Engine
from hypha_sm.core.spec import MachineSpec
from hypha_sm.core.trace import Now, TraceEntry

#: The role's state, its configuration (what a log header carries) and its snapshot type.
S = TypeVar("S")
C = TypeVar("C")
Snap = TypeVar("Snap")


class StepResult(Protocol):
    """What a role's ``step`` returns: the effects to perform and the transitions fired."""

    @property
    def effects(self) -> Sequence[Any]: ...

    @property
    def trace(self) -> Sequence[TraceEntry]: ...


def _unchanged(event: Any, result: Any) -> Any:
    del result
    return event


def _never(value: Any) -> bool:
    del value
    return False


def _same(snapshot: Any) -> Any:
    return snapshot


def _no_problem(config: Any) -> str | None:
    del config
    return None


@dataclass(frozen=True, eq=False)
class Role(Generic[S, C, Snap]):
    """One role's types and pure functions, as the role-free machinery needs them."""

    #: The role's name: its machines directory (``machines/<name>/``) and a log header's ``role``.
    name: str
    #: What a log header carries to rebuild the initial state (the worker's ``Policy``).
    config_type: type[C]
    #: The state between two steps as plain data (a rotated log's segments start from one).
    snapshot_type: type[Snap]
    #: The tagged union of the role's events and of its effects (msgspec types).
    event_type: Any
    effect_type: Any
    #: Bind machine definitions (by kind) to the role's guards and actions.
    build_engine: Callable[[dict[str, MachineSpec]], Engine]
    #: The state a run starts in, from its engine, configuration and id seed.
    initial: Callable[[Engine, C, bytes], S]
    #: Apply one input at ``now``; the role's one door to its state.
    step: Callable[[S, Any, Now], StepResult]
    #: The monotonic time of the state's next deadline (``inf`` if none).
    next_deadline: Callable[[S], float]
    #: The state as a snapshot, and back (same behaviour from there on). None for a role whose
    #: logs never rotate (a scheduler's run is one file); its logs have no snapshots.
    capture: Callable[[S], Snap] | None
    restore: Callable[[Snap, Engine, C, bytes], S] | None
    #: True when a step's effects say the role has stopped (the loop ends, replay notes it).
    stopped: Callable[[Sequence[Any]], bool]
    #: The snapshot with what does not change behaviour normalised (stale timer entries).
    effective: Callable[[Snap], Snap] = _same
    #: The event as it is written to the log (a role may shorten what strangers sent).
    logged: Callable[[Any, Any], Any] = _unchanged
    #: True if an event holds NaN or an infinity (JSON cannot carry them; the codec spells them).
    nonfinite_event: Callable[[Any], bool] = _never
    #: A snapshot with non-finite floats spelled as words for JSON, and whether any were.
    spell_snapshot: Callable[[Snap], tuple[Snap, bool]] = lambda s: (s, False)
    #: The state as plain data for people (``replay --until`` prints it); by default the snapshot.
    describe: Callable[[S], Any] | None = None
    #: Why a configuration read from a log cannot run (None if it can).
    config_problem: Callable[[C], str | None] = _no_problem
