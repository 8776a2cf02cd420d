"""Server-sent events: the stream of files peers send a job, with keep-alives."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import trio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hypha_sm.roles.worker.bridge.interfaces import ReceivedFile

log = logging.getLogger("hypha_sm.roles.worker.bridge")


# -- SSE -------------------------------------------------------------------------------------


def sse_event(data: Mapping[str, Any], event: str | None = None) -> bytes:
    """One server-sent event (JSON data on a single line)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


SSE_KEEPALIVE = b": keepalive\n\n"


class EventStream(Response):
    """``text/event-stream`` of received files, with keep-alive comments, until disconnect."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[ReceivedFile],
        describe: Callable[[ReceivedFile], dict[str, Any]],
        keepalive: float,
    ) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        self.events = events
        self.describe = describe
        self.keepalive = keepalive

    async def _pump(self, out: trio.MemorySendChannel[bytes]) -> None:
        async with out:
            try:
                async for item in self.events:
                    await out.send(sse_event(self.describe(item)))
            except Exception as exc:
                log.warning("bridge receive failed: %r", exc)
                await out.send(
                    sse_event({"code": "receive_failed", "detail": str(exc)}, event="error")
                )
            finally:
                aclose = getattr(self.events, "aclose", None)
                if aclose is not None:
                    with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await aclose()

    @staticmethod
    async def _watch_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        send_ch, recv_ch = trio.open_memory_channel[bytes](64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, send_ch)
            nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
            async with recv_ch:
                while True:
                    chunk = SSE_KEEPALIVE
                    with trio.move_on_after(self.keepalive):
                        try:
                            chunk = await recv_ch.receive()
                        except trio.EndOfChannel:
                            break
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()
