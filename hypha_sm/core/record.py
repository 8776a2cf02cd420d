"""The base of every machine record: a key, a phase only the engine moves, and one deadline.

A record's ``phase`` is read-only from the outside. Only the engine moves it, and only along a
declared transition; any other assignment raises ``InvalidTransition``. Records use
``__slots__`` to stay small (the engine targets 100,000 live machines at well under 1 KB of
overhead each).
"""

from __future__ import annotations

import math
from typing import ClassVar

from hypha_sm.core.errors import InvalidTransition


class Record:
    """Base of every machine record: a key, a phase, and one deadline (``inf`` when none)."""

    __slots__ = ("_phase", "deadline", "key")
    kind: ClassVar[str] = ""

    def __init__(self, key: str) -> None:
        self.key = key
        self._phase = ""
        self.deadline = math.inf

    @property
    def phase(self) -> str:
        """The current phase; changed only by the engine through a declared transition."""
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        raise InvalidTransition(
            self.kind,
            self.key,
            self._phase,
            "<assignment>",
            f"phase set to {value!r} outside a declared transition",
        )

    def fields(self) -> dict[str, object]:
        """Every slot's value, for snapshots and timelines."""
        out: dict[str, object] = {"phase": self._phase}
        for cls in type(self).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if name != "_phase":
                    out[name] = getattr(self, name)
        return out
