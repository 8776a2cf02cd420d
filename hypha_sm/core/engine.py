"""The run-time engine: machine definitions bound to pure guards and actions, on `transitions`.

Each machine kind gets ONE ``transitions.Machine``, built from the definition in ``machines/``
with the registered guards as its conditions and the registered actions as its callbacks, and
ONE model object (a flyweight): records stay plain ``__slots__`` objects.

Firing an event on a record takes one of two paths over that same Machine:

- the table path (the default): the engine reads the Machine's ordered transitions for the
  record's phase and the event, and runs the first whose condition holds: its ``before`` and
  ``after`` callbacks, then its destination. This is what ``Machine.trigger`` does for our
  definitions (no state callbacks, no queueing), minus the library's per-call dispatch cost,
  which is about 70% of the time (docs/decisions.md has the measurements);
- the library path (``via_library=True``): load the phase into the flyweight, call the
  library's ``trigger``, copy the phase back. The tests run both paths over the same inputs and
  require identical traces, effects and states.

Actions never trigger another record of their own kind directly (that would clobber the
flyweight); they post internal events, which the state processes after the current transition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

from transitions import Machine

from hypha_sm.core.errors import InvalidTransition, InvariantViolation, SpecError
from hypha_sm.core.record import Record
from hypha_sm.core.spec import MachineSpec
from hypha_sm.core.trace import CREATED, IGNORED, REJECTED, TraceEntry

__all__ = ["CREATED", "IGNORED", "REJECTED", "Ctx", "Engine", "KindRuntime", "Registry"]

#: The role's state type a machine's guards and actions see (a ``Host`` subclass).
S = TypeVar("S")


class Ctx(Generic[S]):
    """What a guard or action sees: the role's state, the record, and the event's payload."""

    __slots__ = ("event", "fired", "rec", "state")

    def __init__(self, state: S, rec: Any, event: Any) -> None:
        self.state = state
        self.rec = rec
        self.event = event
        self.fired = -1


class _Host(Protocol):
    """What the engine needs of a role's state (``hypha_sm.core.host.Host`` provides it)."""

    trace: list[TraceEntry]

    def drop(self, rec: Record) -> None: ...

    def reject(
        self, kind: str, key: str, phase: str, event: str, payload: object, reason: str
    ) -> None: ...


Guard = Callable[[Ctx[Any]], bool]
Action = Callable[[Ctx[Any]], None]
ActionWithArg = Callable[[Ctx[Any], str], None]


@dataclass(frozen=True, slots=True)
class Registry:
    """The guards and actions one machine's definition may name. Registered explicitly."""

    machine: str
    guards: dict[str, Guard]
    actions: dict[str, Action]
    actions_with_arg: dict[str, ActionWithArg]

    @classmethod
    def new(cls, machine: str) -> Registry:
        """An empty registry for ``machine``."""
        return cls(machine, {}, {}, {})

    def guard(self, fn: Guard) -> Guard:
        """Register a pure predicate under its function name."""
        self.guards[fn.__name__] = fn
        return fn

    def action(self, fn: Action) -> Action:
        """Register an action that takes no argument."""
        self.actions[fn.__name__] = fn
        return fn

    def action_with_arg(self, fn: ActionWithArg) -> ActionWithArg:
        """Register an action written as ``name(arg)`` in the machine file."""
        self.actions_with_arg[fn.__name__] = fn
        return fn


class KindRuntime:
    """One machine kind: its spec, its `transitions.Machine`, and its dispositions."""

    def __init__(
        self, spec: MachineSpec, registry: Registry, *, via_library: bool = False
    ) -> None:
        self.via_library = via_library
        self.kind = spec.name
        self.terminal = spec.terminal
        self.deadline_event: dict[str, str] = {
            s.name: s.deadline for s in spec.states if s.deadline is not None
        }
        #: (phase, event) pairs declared as ignored, and rejected ones with their reasons.
        self.ignored = frozenset((state.name, ev) for state in spec.states for ev in state.ignore)
        self.rejected = {
            (state.name, ev): reason
            for state in spec.states
            for ev, reason in state.reject.items()
        }
        table = []
        for t in spec.transitions:
            callbacks: list[Callable[[Ctx[Any]], None]] = []
            for ref in t.effects:
                if ref.arg is None:
                    if ref.name not in registry.actions:
                        raise _unresolved(spec, t.src, ref.name, registry, "action")
                    callbacks.append(registry.actions[ref.name])
                else:
                    if ref.name not in registry.actions_with_arg:
                        raise _unresolved(spec, t.src, ref.name, registry, "action(arg)")
                    callbacks.append(_bind(registry.actions_with_arg[ref.name], ref.arg))
            conditions = []
            if t.guard is not None:
                if t.guard not in registry.guards:
                    raise _unresolved(spec, t.src, t.guard, registry, "guard")
                conditions.append(registry.guards[t.guard])
            table.append(
                {
                    "trigger": t.event,
                    "source": t.src,
                    "dest": t.dst,  # None: an internal transition (no exit/enter)
                    "conditions": conditions,
                    # Marks which declared transition fired; a new phase also starts with no
                    # deadline (its actions arm the one it needs).
                    "before": [_begin(t.index, clear_deadline=t.dst not in (None, t.src))],
                    "after": callbacks,
                }
            )
        used_guards = {t.guard for t in spec.transitions if t.guard}
        used_actions = {r.name for t in spec.transitions for r in t.effects}
        for name in sorted(set(registry.guards) - used_guards):
            raise spec.error(f"guard {name!r} is registered in code but no transition uses it")
        unused = set(registry.actions) | set(registry.actions_with_arg)
        for name in sorted(unused - used_actions):
            raise spec.error(f"action {name!r} is registered in code but no transition uses it")

        self.model: Any = _Flyweight()  # `transitions` adds `trigger` and the event methods
        self.machine = Machine(
            model=self.model,
            states=[s.name for s in spec.states],
            transitions=table,
            initial=spec.initial,
            auto_transitions=False,
            send_event=False,
            model_attribute="state",
        )
        self.table = self._compile()
        self._busy = False

    def _compile(self) -> dict[tuple[str, str], tuple[_Option, ...]]:
        """The Machine's transitions per (phase, event), in order, as (guard, callbacks, dest)."""
        table: dict[tuple[str, str], tuple[_Option, ...]] = {}
        for event_name, event in self.machine.events.items():
            for src, transitions in event.transitions.items():
                options = []
                for tr in transitions:
                    if len(tr.conditions) > 1 or any(c.target is not True for c in tr.conditions):
                        raise InvariantViolation(
                            "engine supports one positive guard per transition"
                        )
                    guard = tr.conditions[0].func if tr.conditions else None
                    options.append(cast(_Option, (guard, (*tr.before, *tr.after), tr.dest)))
                table[(src, event_name)] = tuple(options)
        return table

    def fire(self, state: _Host, rec: Record, event: str, payload: object) -> None:
        """Fire ``event`` on ``rec`` through the library; record the transition taken."""
        src = rec._phase
        options = self.table.get((src, event))
        if options is None:
            if (src, event) in self.ignored:
                state.trace.append((self.kind, rec.key, src, event, None, IGNORED))
                return
            reason = self.rejected.get((src, event))
            if reason is None:
                raise InvalidTransition(
                    self.kind, rec.key, src, event, "no transition, ignore or reject is declared"
                )
            state.reject(self.kind, rec.key, src, event, payload, reason)
            return
        if self._busy:
            raise InvariantViolation(f"re-entrant fire on {self.kind}: post an event instead")
        ctx = Ctx(state, rec, payload)
        self._busy = True
        try:
            dst = self._via_library(ctx, src, event) if self.via_library else None
            if not self.via_library:
                for guard, callbacks, dest in options:
                    if guard is None or guard(ctx):
                        for callback in callbacks:
                            callback(ctx)
                        dst = dest or src
                        break
        finally:
            self._busy = False
        if dst is None or ctx.fired < 0:
            raise InvalidTransition(self.kind, rec.key, src, event, "no declared transition fired")
        if rec._phase != src:
            raise InvalidTransition(
                self.kind, rec.key, src, event, "an action changed the phase directly"
            )
        rec._phase = dst
        state.trace.append((self.kind, rec.key, src, event, dst, ctx.fired))
        if dst in self.terminal:
            state.drop(rec)
        elif dst != src and dst in self.deadline_event and rec.deadline == math.inf:
            raise InvariantViolation(
                f"{self.kind} {rec.key!r} entered {dst!r} without arming its deadline"
            )

    def _via_library(self, ctx: Ctx[Any], src: str, event: str) -> str | None:
        model = self.model
        model.state = src
        if not model.trigger(event, ctx):
            return None
        dst: str = model.state
        return dst


_Option = tuple[Guard | None, tuple[Callable[[Ctx[Any]], None], ...], str | None]


class _Flyweight:
    """The single model object of a kind's `transitions.Machine`; holds only the loaded phase."""

    state: str


def _begin(index: int, *, clear_deadline: bool) -> Callable[[Ctx[Any]], None]:
    if clear_deadline:

        def begin_phase(ctx: Ctx[Any]) -> None:
            ctx.fired = index
            ctx.rec.deadline = math.inf

        return begin_phase

    def begin(ctx: Ctx[Any]) -> None:
        ctx.fired = index

    return begin


def _bind(fn: ActionWithArg, arg: str) -> Callable[[Ctx[Any]], None]:
    def bound(ctx: Ctx[Any]) -> None:
        fn(ctx, arg)

    bound.__name__ = f"{fn.__name__}({arg})"
    return bound


def _unresolved(
    spec: MachineSpec, state: str, name: str, registry: Registry, what: str
) -> SpecError:
    known = sorted(
        registry.guards
        if what == "guard"
        else registry.actions
        if what == "action"
        else registry.actions_with_arg
    )
    return spec.error(f"{what} {name!r} does not resolve; known: {known}", state)


class Engine:
    """Every machine kind, validated against its registry. Built once; shared by states."""

    def __init__(
        self,
        specs: Mapping[str, MachineSpec],
        registries: Mapping[str, Registry],
        *,
        via_library: bool = False,
    ) -> None:
        missing = sorted(set(registries) - set(specs))
        if missing:
            raise SpecError(
                "machines/", missing[0], None, "code expects this machine; no file defines it"
            )
        extra = sorted(set(specs) - set(registries))
        if extra:
            spec = specs[extra[0]]
            raise spec.error("no code registers guards and actions for this machine")
        self.specs = dict(specs)
        self.runtimes = {
            name: KindRuntime(specs[name], registries[name], via_library=via_library)
            for name in specs
        }
