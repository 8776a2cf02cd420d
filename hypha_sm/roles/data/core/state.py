"""The data node's state: its node record, a record per slice being sent, and what it counts."""

from __future__ import annotations

from hypha_sm.core.engine import Engine
from hypha_sm.core.host import Host
from hypha_sm.core.record import Record
from hypha_sm.roles.data.core.effects import Effect, ReplyFetch
from hypha_sm.roles.data.core.events import FetchRequested
from hypha_sm.roles.data.core.plan import DataPlan, Served

KINDS = ("node", "fetch")
NODE = "node"


class NodeRec(Record):
    """The node itself."""

    __slots__ = ()
    kind = "node"


class FetchRec(Record):
    """One slice being sent, keyed ``<peer>/<transfer id>``."""

    __slots__ = ("reply_to", "transfer_id")
    kind = "fetch"

    def __init__(self, key: str, reply_to: int, transfer_id: str) -> None:
        super().__init__(key)
        self.reply_to = reply_to
        self.transfer_id = transfer_id


class DataState(Host[Effect]):
    """Every live record of the data node, and its plan."""

    def __init__(self, engine: Engine, plan: DataPlan, seed: bytes) -> None:
        super().__init__(engine, KINDS, seed)
        self.plan = plan
        self.served: dict[str, Served] = {d.name: d for d in plan.datasets}

    def refuse(self, payload: object, reason: str) -> None:
        """Answer a refused fetch with the reason."""
        if isinstance(payload, FetchRequested):
            self.emit(ReplyFetch(payload.reply_to, payload.transfer_id, reason))
