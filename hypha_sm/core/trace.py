"""What a step hands back besides effects: the input's time and the transitions it fired."""

from __future__ import annotations

from typing import NamedTuple


class Now(NamedTuple):
    """The time of an input: ``mono`` for every deadline, ``wall`` only for what crosses the wire."""

    mono: float
    wall: float


#: A trace entry: (machine, key, from phase, event, to phase or None if ignored/rejected,
#: index of the declared transition that fired, or IGNORED / REJECTED / CREATED (< 0)).
TraceEntry = tuple[str, str, str, str, str | None, int]

#: Trace markers in place of a transition index (which is >= 0).
IGNORED = -1
REJECTED = -2
CREATED = -3
