"""Requests a peer waits on, each answered later by the core's reply effect that carries its token.

A role's shell turns a verified request into an event carrying a fresh token, pushes it to the
loop and waits; when the core's reply effect for that token is performed, the answer is handed
to the waiting handler. A peer that gave up leaves nothing behind (the slot is removed when the
handler ends), and an answer for a token nobody waits on any more is dropped.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import trio

from hypha_sm.wire.messages import Message


@dataclass
class Pending:
    """One request waiting for its answer; ``context`` is what the shell keeps beside it."""

    context: Any = None
    done: trio.Event = field(default_factory=trio.Event)
    answer: Message | None = None


class Replies:
    """The requests of one node that wait for a reply effect."""

    def __init__(self) -> None:
        self._tokens = itertools.count(1)
        self._pending: dict[int, Pending] = {}

    def open(self, context: Any = None) -> tuple[int, Pending]:
        """A fresh token for a request, and its slot."""
        token = next(self._tokens)
        pending = Pending(context)
        self._pending[token] = pending
        return token, pending

    async def wait(self, token: int) -> Message:
        """The answer to ``token`` once the core's reply effect arrived."""
        pending = self._pending[token]
        try:
            await pending.done.wait()
        finally:
            self._pending.pop(token, None)
        assert pending.answer is not None
        return pending.answer

    def get(self, token: int) -> Pending | None:
        """The slot of a request still waiting (None if its peer gave up)."""
        return self._pending.get(token)

    def answer(self, token: int, message: Message) -> Pending | None:
        """Hand ``message`` to the request waiting on ``token``; its slot, or None."""
        pending = self._pending.get(token)
        if pending is not None:
            pending.answer = message
            pending.done.set()
        return pending


def start_later(nursery: trio.Nursery, work: Awaitable[None]) -> None:
    """Run ``work`` (an effect that takes time and reports back as an event) beside the loop."""

    async def run() -> None:
        await work

    nursery.start_soon(run)
