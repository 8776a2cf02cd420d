"""The context the worker's guards and actions see: the engine's ``Ctx`` over the worker state."""

from __future__ import annotations

from typing import TypeAlias

from hypha_sm.core.engine import Ctx as _Ctx
from hypha_sm.roles.worker.core.state import WorkerState

Ctx: TypeAlias = _Ctx[WorkerState]
