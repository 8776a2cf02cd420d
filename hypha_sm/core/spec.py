"""Machine definitions: parse ``machines/<role>/*.toml`` data into an IR and validate it.

This module is pure: the shell reads the files and hands over ``(file name, bytes)`` pairs. The
checks follow python-statemachine's definition checks plus our own totality rule:

- exactly one initial state, every state reachable, no trap states;
- terminal states have no way out (they absorb);
- in machines marked ``deadlines_required``, every non-terminal state has a deadline edge;
- every (state, remote or result event) pair is handled, ignored or rejected, exactly once;
- each (state, event) group of transitions ends in one unguarded fallback, so a guard that does
  not hold can never leave an event unanswered;
- every event is used, and every name resolves (checked by the engine against the registries).

Errors name the file, machine, state and problem.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, cast

from hypha_sm.core.errors import SpecError

EventKind = Literal["remote", "result", "timer", "internal", "command"]
EVENT_KINDS: tuple[EventKind, ...] = ("remote", "result", "timer", "internal", "command")
#: Events from outside the core: each must be answered explicitly in every live state.
EXTERNAL_KINDS = frozenset({"remote", "result"})

_EFFECT_RE = re.compile(r"^([a-z_][a-z0-9_]*)(?:\(([a-z0-9_]+)\))?$")
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class EffectRef:
    """A named action on a transition, with an optional literal argument: ``release(expired)``."""

    name: str
    arg: str | None = None

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}({self.arg})"


@dataclass(frozen=True, slots=True)
class TransitionSpec:
    """One declared edge. ``dst`` None means internal: the phase stays, the effects still run."""

    index: int
    src: str
    event: str
    guard: str | None
    dst: str | None
    effects: tuple[EffectRef, ...]
    doc: str = ""

    @property
    def target(self) -> str:
        """The phase after the transition."""
        return self.src if self.dst is None else self.dst

    @property
    def label(self) -> str:
        """``event [guard] / effect, effect``, the label used in diagrams."""
        text = self.event
        if self.guard:
            text += f" [{self.guard}]"
        if self.effects:
            text += " / " + ", ".join(str(e) for e in self.effects)
        return text


@dataclass(frozen=True, slots=True)
class EventSpec:
    """An event a machine understands, and where it comes from."""

    name: str
    kind: EventKind
    doc: str = ""


@dataclass(frozen=True, slots=True)
class StateSpec:
    """A phase, its deadline event, and its explicit ignores and rejections."""

    name: str
    doc: str
    terminal: bool
    deadline: str | None
    ignore: frozenset[str]
    reject: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """A validated machine definition: the only truth for its topology."""

    name: str
    file: str
    description: str
    initial: str
    deadlines_required: bool
    states: tuple[StateSpec, ...]
    events: tuple[EventSpec, ...]
    transitions: tuple[TransitionSpec, ...]
    state_index: Mapping[str, StateSpec] = field(repr=False, compare=False)
    event_index: Mapping[str, EventSpec] = field(repr=False, compare=False)

    @property
    def terminal(self) -> frozenset[str]:
        """Names of the absorbing states."""
        return frozenset(s.name for s in self.states if s.terminal)

    def error(self, problem: str, state: str | None = None) -> SpecError:
        """A SpecError located in this machine."""
        return SpecError(self.file, self.name, state, problem)


def _fail(file: str, machine: str, problem: str, state: str | None = None) -> SpecError:
    return SpecError(file, machine, state, problem)


def _as_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return cast(list[str], value)
    raise TypeError("expected a string or a list of strings")


def _known_keys(
    table: Mapping[str, object], allowed: Iterable[str], file: str, machine: str, where: str
) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise _fail(file, machine, f"unknown key(s) {unknown} in {where}")


def parse_machine(file: str, text: bytes | str) -> MachineSpec:
    """Parse and validate one machine file's content. Raises SpecError naming what is wrong."""
    try:
        raw = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _fail(file, "?", f"not valid TOML: {exc}") from exc
    head = raw.get("machine")
    if not isinstance(head, dict) or not isinstance(head.get("name"), str):
        raise _fail(file, "?", "missing [machine] table with a string 'name'")
    name = head["name"]
    _known_keys(raw, ("machine", "events", "states", "transitions"), file, name, "the file")
    _known_keys(
        head,
        ("name", "description", "initial", "terminal", "deadlines_required"),
        file,
        name,
        "[machine]",
    )
    initial = head.get("initial")
    if not isinstance(initial, str):
        raise _fail(file, name, "exactly one initial state is required: set [machine] initial")
    try:
        terminal = set(_as_list(head.get("terminal", [])))
    except TypeError:
        raise _fail(file, name, "[machine] terminal must be a list of state names") from None

    events = _parse_events(file, name, raw.get("events", {}))
    states = _parse_states(file, name, raw.get("states", {}), terminal, events)
    if initial not in states:
        raise _fail(file, name, f"initial state {initial!r} is not declared under [states]")
    for t in sorted(terminal - set(states)):
        raise _fail(file, name, "terminal state is not declared under [states]", t)
    transitions = _parse_transitions(file, name, raw.get("transitions", []), states, events)

    spec = MachineSpec(
        name=name,
        file=file,
        description=str(head.get("description", "")),
        initial=initial,
        deadlines_required=bool(head.get("deadlines_required", False)),
        states=tuple(states.values()),
        events=tuple(events.values()),
        transitions=tuple(transitions),
        state_index=states,
        event_index=events,
    )
    _validate(spec)
    return spec


def _parse_events(file: str, machine: str, table: object) -> dict[str, EventSpec]:
    if not isinstance(table, dict) or not table:
        raise _fail(file, machine, "[events] must declare at least one event")
    out: dict[str, EventSpec] = {}
    for ev_name, body in table.items():
        if not _NAME_RE.match(ev_name):
            raise _fail(file, machine, f"event name {ev_name!r} is not snake_case")
        if not isinstance(body, dict):
            raise _fail(file, machine, f"event {ev_name!r} must be a table with a 'kind'")
        _known_keys(body, ("kind", "doc"), file, machine, f"event {ev_name!r}")
        kind = body.get("kind")
        if kind not in EVENT_KINDS:
            raise _fail(
                file, machine, f"event {ev_name!r} has kind {kind!r}; allowed: {list(EVENT_KINDS)}"
            )
        out[ev_name] = EventSpec(ev_name, cast(EventKind, kind), str(body.get("doc", "")))
    return out


def _parse_states(
    file: str, machine: str, table: object, terminal: set[str], events: Mapping[str, EventSpec]
) -> dict[str, StateSpec]:
    if not isinstance(table, dict) or not table:
        raise _fail(file, machine, "[states] must declare at least one state")
    out: dict[str, StateSpec] = {}
    for st_name, body in table.items():
        if not _NAME_RE.match(st_name):
            raise _fail(file, machine, "state name is not snake_case", st_name)
        if not isinstance(body, dict):
            raise _fail(file, machine, "state must be a table", st_name)
        _known_keys(
            body, ("doc", "deadline", "ignore", "reject"), file, machine, f"[states.{st_name}]"
        )
        deadline = body.get("deadline")
        if deadline is not None and deadline not in events:
            raise _fail(file, machine, f"deadline event {deadline!r} is not declared", st_name)
        try:
            ignore = frozenset(_as_list(body.get("ignore", [])))
        except TypeError:
            raise _fail(file, machine, "'ignore' must be a list of event names", st_name) from None
        reject = body.get("reject", {})
        if not isinstance(reject, dict) or not all(isinstance(v, str) for v in reject.values()):
            raise _fail(file, machine, "'reject' must map event names to reasons", st_name)
        for ev in sorted(ignore | set(reject)):
            if ev not in events:
                raise _fail(file, machine, f"ignores or rejects undeclared event {ev!r}", st_name)
        for ev in sorted(ignore & set(reject)):
            raise _fail(file, machine, f"event {ev!r} is both ignored and rejected", st_name)
        for ev, reason in sorted(reject.items()):
            if events[ev].kind != "remote":
                raise _fail(
                    file, machine, f"only remote events can be rejected; {ev!r} is not", st_name
                )
            if not _NAME_RE.match(reason):
                raise _fail(file, machine, f"reject reason {reason!r} is not snake_case", st_name)
        is_terminal = st_name in terminal
        if is_terminal and (deadline or ignore or reject):
            raise _fail(
                file, machine, "a terminal state absorbs: no deadline, ignore or reject", st_name
            )
        out[st_name] = StateSpec(
            st_name, str(body.get("doc", "")), is_terminal, deadline, ignore, dict(reject)
        )
    return out


def _parse_transitions(
    file: str,
    machine: str,
    items: object,
    states: Mapping[str, StateSpec],
    events: Mapping[str, EventSpec],
) -> list[TransitionSpec]:
    if not isinstance(items, list) or not items:
        raise _fail(file, machine, "at least one [[transitions]] entry is required")
    out: list[TransitionSpec] = []
    for number, body in enumerate(items, start=1):
        where = f"transition #{number}"
        if not isinstance(body, dict):
            raise _fail(file, machine, f"{where} must be a table")
        _known_keys(body, ("from", "on", "guard", "to", "effects", "doc"), file, machine, where)
        try:
            sources = _as_list(body["from"])
            triggers = _as_list(body["on"])
            effect_names = _as_list(body.get("effects", []))
        except (KeyError, TypeError):
            raise _fail(
                file, machine, f"{where} needs 'from' and 'on' (strings or lists) and 'effects'"
            ) from None
        guard = body.get("guard")
        if guard is not None and (not isinstance(guard, str) or not _NAME_RE.match(guard)):
            raise _fail(file, machine, f"{where}: guard must be a snake_case name")
        dst = body.get("to")
        if dst is not None and dst not in states:
            raise _fail(file, machine, f"{where}: target state {dst!r} is not declared")
        effects = []
        for text in effect_names:
            match = _EFFECT_RE.match(text)
            if not match:
                raise _fail(
                    file, machine, f"{where}: effect {text!r} is not 'name' or 'name(arg)'"
                )
            effects.append(EffectRef(match.group(1), match.group(2)))
        for src in sources:
            if src not in states:
                raise _fail(file, machine, f"{where}: source state {src!r} is not declared")
            if states[src].terminal:
                raise _fail(
                    file, machine, f"{where}: a terminal state cannot have transitions", src
                )
            for ev in triggers:
                if ev not in events:
                    raise _fail(file, machine, f"{where}: event {ev!r} is not declared", src)
                out.append(
                    TransitionSpec(
                        index=len(out),
                        src=src,
                        event=ev,
                        guard=guard,
                        dst=dst,
                        effects=tuple(effects),
                        doc=str(body.get("doc", "")),
                    )
                )
    return out


def _validate(spec: MachineSpec) -> None:
    groups: dict[tuple[str, str], list[TransitionSpec]] = {}
    for t in spec.transitions:
        groups.setdefault((t.src, t.event), []).append(t)

    for (src, ev), group in groups.items():
        state = spec.state_index[src]
        if ev in state.ignore or ev in state.reject:
            raise spec.error(f"event {ev!r} is handled and also ignored or rejected", src)
        for t in group[:-1]:
            if t.guard is None:
                raise spec.error(
                    f"on {ev!r}: an unguarded transition must come last (later ones are unreachable)",
                    src,
                )
        if group[-1].guard is not None:
            raise spec.error(
                f"on {ev!r}: the last transition must be unguarded, so the event is always answered",
                src,
            )

    for state in spec.states:
        if state.deadline is not None:
            if spec.event_index[state.deadline].kind != "timer":
                raise spec.error(
                    f"deadline event {state.deadline!r} must be of kind 'timer'", state.name
                )
            if (state.name, state.deadline) not in groups:
                raise spec.error(
                    f"no transition handles its deadline event {state.deadline!r}", state.name
                )

    # Reachability from the initial state.
    edges: dict[str, set[str]] = {s.name: set() for s in spec.states}
    for t in spec.transitions:
        edges[t.src].add(t.target)
    seen = _reachable(edges, spec.initial) | {spec.initial}
    for state in spec.states:
        if state.name not in seen:
            raise spec.error(f"unreachable from the initial state {spec.initial!r}", state.name)

    # No traps: from every non-terminal state a terminal state (or, in a machine without
    # terminals, some other state) must be reachable.
    terminal = spec.terminal
    for state in spec.states:
        if state.terminal:
            continue
        if terminal:
            reach = _reachable(edges, state.name)
            if not reach & terminal:
                raise spec.error("trap state: no terminal state is reachable from it", state.name)
        elif not edges[state.name] - {state.name}:
            raise spec.error("trap state: it has no way out", state.name)

    handled = {(t.src, t.event) for t in spec.transitions}
    timers = {e.name for e in spec.events if e.kind == "timer"}
    for state in spec.states:
        if state.terminal:
            continue
        if spec.deadlines_required and not any((state.name, ev) in handled for ev in timers):
            raise spec.error(
                "no deadline edge: every live state of this machine needs a timer transition",
                state.name,
            )
        for declared in spec.events:
            if declared.kind not in EXTERNAL_KINDS:
                continue
            if (
                (state.name, declared.name) not in handled
                and declared.name not in state.ignore
                and declared.name not in state.reject
            ):
                raise spec.error(
                    f"{declared.kind} event {declared.name!r} is neither handled, ignored nor rejected",
                    state.name,
                )

    used = {t.event for t in spec.transitions}
    for state in spec.states:
        used |= state.ignore | set(state.reject)
    for declared in spec.events:
        if declared.name not in used:
            raise spec.error(f"event {declared.name!r} is declared but never used")


def _reachable(edges: Mapping[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    frontier = [start]
    while frontier:
        for nxt in edges[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def parse_machines(sources: Mapping[str, bytes]) -> dict[str, MachineSpec]:
    """Parse every machine file; names must be unique across files."""
    out: dict[str, MachineSpec] = {}
    for file in sorted(sources):
        spec = parse_machine(file, sources[file])
        if spec.name in out:
            raise spec.error(f"machine name also used in {out[spec.name].file}")
        out[spec.name] = spec
    return out


def machines_hash(sources: Mapping[str, bytes]) -> str:
    """A stable hash of the machine files (names and bytes), recorded in every event log."""
    digest = hashlib.sha256()
    for file in sorted(sources):
        digest.update(file.encode() + b"\0" + sources[file] + b"\0")
    return "sha256:" + digest.hexdigest()
