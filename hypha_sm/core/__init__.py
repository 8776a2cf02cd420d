"""The role-free engine: machine definitions, the engine that runs them, and the host of records.

Rules for every role built on it (enforced by import-linter and ruff's banned-api, see
pyproject.toml):

1. Purity. Nothing here, and nothing in a role's ``core``, performs I/O, reads a clock, draws
   entropy, or imports trio or pynng. Time arrives with every input as ``Now``; ids come from
   the seeded ``IdGen`` of the host.
2. One door. A role's state changes only inside its ``step``; the runtime holds one state and
   feeds it.
3. The table is the truth. Phases change only along transitions declared in
   ``machines/<role>/*.toml``, fired by the `transitions` library; guards and actions are pure
   functions named there. Assigning a phase anywhere else raises ``InvalidTransition``.
4. Inputs are facts, outputs are requests. Events are past-tense; effects are imperatives, and
   every effect that can fail or finish later comes back as an event.
5. Remote input never crashes a node: it is handled, ignored or rejected with a counted reason.
   A broken internal invariant raises ``InvariantViolation`` and stops everything.
6. The core knows no role: ``hypha_sm.core`` never imports ``hypha_sm.roles``.
"""
