"""Errors raised by the core.

Remote misbehaviour is never an exception: it becomes a rejection (a reply, a counter and a trace
entry). These exceptions mean the machines or the code are wrong, and they propagate.
"""

from __future__ import annotations


class HyphaSMError(Exception):
    """Base of every error hypha-sm raises on purpose."""


class SpecError(HyphaSMError):
    """A machine definition in ``machines/`` is invalid.

    The message names the file, the machine, the state (when one is involved) and the problem, so
    the definition can be fixed without reading code.
    """

    def __init__(self, file: str, machine: str, state: str | None, problem: str) -> None:
        self.file = file
        self.machine = machine
        self.state = state
        self.problem = problem
        where = f"{file}: machine {machine!r}"
        if state is not None:
            where += f", state {state!r}"
        super().__init__(f"{where}: {problem}")


class InvalidTransition(HyphaSMError):
    """Code tried to change a phase outside a declared transition, or fired an undeclared event."""

    def __init__(self, machine: str, key: str, phase: str, event: str, detail: str) -> None:
        self.machine = machine
        self.key = key
        self.phase = phase
        self.event = event
        super().__init__(f"{machine} {key!r} in phase {phase!r} on {event!r}: {detail}")


class InvariantViolation(HyphaSMError):
    """An internal invariant broke (for example a reservation released twice). A bug: never caught."""


class SnapshotError(HyphaSMError, ValueError):
    """A snapshot read from outside (a log segment's header) is inconsistent; the text says how."""
