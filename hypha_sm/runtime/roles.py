"""Every role this version runs, by name: what the CLI's ``replay`` and ``machines`` look up.

A log's header names its role (``codec.role_of``); the machines root has a directory per role.
"""

from __future__ import annotations

from typing import Any

from hypha_sm.core.role import Role
from hypha_sm.log.codec import LogFormatError
from hypha_sm.roles.data.core.role import DATA
from hypha_sm.roles.ps.core.role import PS
from hypha_sm.roles.scheduler.core.role import SCHEDULER
from hypha_sm.roles.worker.core.role import WORKER

ROLES: dict[str, Role[Any, Any, Any]] = {
    WORKER.name: WORKER,
    SCHEDULER.name: SCHEDULER,
    DATA.name: DATA,
    PS.name: PS,
}


def role_named(name: str) -> Role[Any, Any, Any]:
    """The role a log names; LogFormatError if this version does not know it."""
    role = ROLES.get(name)
    if role is None:
        raise LogFormatError(
            f"line 1: a log of role {name!r}, which this version does not run "
            f"(it runs {', '.join(sorted(ROLES))})"
        )
    return role
