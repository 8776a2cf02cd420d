"""The pure core of the worker: events in, (state, effects) out.

Rules (enforced by import-linter and ruff's banned-api, see pyproject.toml):

1. Purity. Nothing here performs I/O, reads a clock, draws entropy, or imports trio or pynng.
   Time arrives with every input as ``Now``; ids come from the seeded ``IdGen`` in the state.
2. One door. The state changes only inside ``step``; the shell holds one state and feeds it.
3. The table is the truth. Phases change only along transitions declared in ``machines/<role>/*.toml``,
   fired by the `transitions` library; guards and actions are pure functions named there.
   Assigning a phase anywhere else raises ``InvalidTransition``.
4. Inputs are facts, outputs are requests. Events are past-tense; effects are imperatives, and
   every effect that can fail or finish later comes back as an event.
5. Remote input never crashes the worker: it is handled, ignored or rejected with a counted
   reason. A broken internal invariant raises ``InvariantViolation`` and stops everything.
"""

from hypha_sm.core.events import Event, Now
from hypha_sm.core.reducer import Step, build_engine, initial_state, next_deadline, step

__all__ = ["Event", "Now", "Step", "build_engine", "initial_state", "next_deadline", "step"]
