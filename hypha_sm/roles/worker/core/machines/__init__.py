"""Guards and actions for each machine in ``machines/``, registered by name.

Each module owns one machine. Guards are pure predicates over a ``Ctx``; actions change the
record and the state through the state's primitives and emit effects. Neither ever changes a
phase: the engine does that, along the declared transition the library picked.
"""

from __future__ import annotations

from hypha_sm.core.engine import Registry
from hypha_sm.roles.worker.core.machines import batch, job, lease, node, request

REGISTRIES: dict[str, Registry] = {
    m.REGISTRY.machine: m.REGISTRY for m in (node, batch, request, lease, job)
}
