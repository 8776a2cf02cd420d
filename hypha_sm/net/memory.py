"""An in-memory transport with ``Endpoint``'s interface, for testing the layers above.

Envelopes are sealed and opened exactly as over NNG (same ``Transport`` code, same counters),
only the bytes move through trio memory channels. What NNG does is imitated where the upper
layers can see it:

- A request waits for the address to be served (NNG redials), then for a free handler slot
  (the server's ``contexts``); an unanswered request waits out its timeout.
- An envelope over the size limit is refused as ``oversized``; one over the hard limit (twice
  that) closes "the connection": the server counts a connection error and the requester gets
  ``connection_lost`` at once.
- Pub/sub drops a frame when a subscription's queue (``pubsub_buffer``) is full, silently;
  the subscriber counts the gap from the frame numbers, as over NNG.

One ``MemoryNetwork`` is one isolated network: addresses are plain strings within it. An
address ending in ``:0`` gets a fresh port number, as NNG would bind one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from hypha_sm.net.transport.base import (
    DRAIN_BATCH,
    HARD_LIMIT_FACTOR,
    Handler,
    NetConfig,
    Publisher,
    Subscription,
    Transport,
    log,
)
from hypha_sm.net.transport.failures import NetError
from hypha_sm.wire.envelope import Opener
from hypha_sm.wire.identity import Identity

_RESET = b""  # the answer a requester gets when the server "closes the connection"


@dataclass(slots=True)
class _Call:
    data: bytes
    answer: trio.MemorySendChannel[bytes]


@dataclass(slots=True)
class _Server:
    calls: trio.MemorySendChannel[_Call]


@dataclass(slots=True)
class _Hub:
    publishers: list[_MemoryPublisher] = field(default_factory=list)
    subscriptions: list[_MemorySubscription] = field(default_factory=list)


class MemoryNetwork:
    """The addresses of one in-memory network: servers, and pub/sub meeting points."""

    def __init__(self) -> None:
        self._servers: dict[str, _Server] = {}
        self._listening: set[str] = set()
        self._hubs: dict[str, _Hub] = {}
        self._changed = trio.Event()
        self._ids = itertools.count(1)

    def _listen(self, address: str) -> str:
        """Claim ``address`` (a ``:0`` port becomes a fresh one); returns it as bound."""
        if address.endswith(":0"):
            address = f"{address[:-1]}{40000 + next(self._ids)}"
        if address in self._listening:
            raise NetError("bad_address", address, detail="address in use")
        self._listening.add(address)
        return address

    def _unlisten(self, address: str) -> None:
        self._listening.discard(address)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _server(self, address: str) -> _Server:
        """The server at ``address``, waiting for it to appear (like an NNG redial)."""
        while (server := self._servers.get(address)) is None:
            await self._changed.wait()
        return server

    def _hub(self, address: str) -> _Hub:
        return self._hubs.setdefault(address, _Hub())


class MemoryEndpoint(Transport):
    """A node on a ``MemoryNetwork``; same methods and behaviour as ``Endpoint``."""

    def __init__(
        self,
        network: MemoryNetwork,
        identity: Identity,
        config: NetConfig | None = None,
        *,
        wall: Callable[[], float] = time.time,
        entropy: Callable[[int], bytes] = os.urandom,
        opener: Opener | None = None,
    ) -> None:
        super().__init__(identity, config, wall=wall, entropy=entropy, opener=opener)
        self.network = network

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer requests on ``address`` with ``config.contexts`` handler tasks."""
        net = self.network
        address = net._listen(address)
        send, receive = trio.open_memory_channel[_Call](0)
        try:
            async with send, receive, trio.open_nursery() as nursery:
                for _ in range(self.config.contexts):
                    nursery.start_soon(self._serve_calls, receive.clone(), handler, address)
                net._servers[address] = _Server(send)
                net._notify()
                task_status.started(address)
        finally:
            net._servers.pop(address, None)
            net._unlisten(address)

    async def _serve_calls(
        self, calls: trio.MemoryReceiveChannel[_Call], handler: Handler, address: str
    ) -> None:
        async with calls:
            async for call in calls:
                with call.answer:
                    if len(call.data) > HARD_LIMIT_FACTOR * self.config.recv_max_size:
                        self._counts.connection_errors += 1
                        log.debug("%s: %d-byte frame, connection closed", address, len(call.data))
                        call.answer.send_nowait(_RESET)
                        continue
                    answer = await self._answer(call.data, handler, lambda: "memory")
                    if answer is not None:
                        call.answer.send_nowait(answer)

    async def _exchange(self, address: str, envelope: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
        reached = False
        with trio.move_on_after(timeout):
            server = await self.network._server(address)
            reached = True
            send, receive = trio.open_memory_channel[bytes](1)
            async with receive:
                try:
                    await server.calls.send(_Call(envelope, send))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise NetError("connection_lost", address, detail="server stopped") from None
                try:
                    answer = await receive.receive()
                except trio.EndOfChannel:
                    await trio.sleep_forever()  # no answer: wait out the timeout, like NNG
                if answer == _RESET:
                    raise NetError("connection_lost", address, detail="closed by the server")
                return answer
        if self._closed:
            raise NetError("closed", address)
        reason = "timeout" if reached else "unreachable"
        raise NetError(reason, address, detail=f"no answer in {timeout:g} s")

    def publisher(self, *, listen: Sequence[str] = (), dial: Sequence[str] = ()) -> Publisher:
        """A publisher attached to the meeting point of each address."""
        return _MemoryPublisher(self, listen, dial)

    def subscribe(self, *, dial: Sequence[str] = (), listen: Sequence[str] = ()) -> Subscription:
        """A subscription attached to the meeting point of each address."""
        return _MemorySubscription(self, dial, listen)


def _attach(
    net: MemoryNetwork, listen: Sequence[str], dial: Sequence[str]
) -> tuple[tuple[str, ...], list[_Hub]]:
    """Claim the listening addresses; returns them as bound, and the hubs to join."""
    bound: list[str] = []
    try:
        bound.extend(net._listen(address) for address in listen)
    except NetError:
        for done in bound:
            net._unlisten(done)
        raise
    return tuple(bound), [net._hub(a) for a in (*bound, *dial)]


class _MemoryPublisher(Publisher):
    def __init__(
        self, transport: MemoryEndpoint, listen: Sequence[str], dial: Sequence[str]
    ) -> None:
        super().__init__(transport)
        self._net = transport.network
        self._listen, self._hubs = _attach(self._net, listen, dial)
        self._source = {id(h): next(self._net._ids) for h in self._hubs}
        for hub in self._hubs:
            hub.publishers.append(self)

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._listen

    @property
    def connections(self) -> int:
        return sum(len(h.subscriptions) for h in self._hubs)

    async def _send_frame(self, frame: bytes) -> None:
        await trio.lowlevel.checkpoint()
        for hub in self._hubs:
            source = self._source[id(hub)]
            for sub in hub.subscriptions:
                sub._deliver(frame, source)

    def close(self) -> None:
        self._closed = True
        for hub in self._hubs:
            if self in hub.publishers:
                hub.publishers.remove(self)
        self._hubs = []
        for address in self._listen:
            self._net._unlisten(address)
        self._listen = ()


class _MemorySubscription(Subscription):
    def __init__(
        self, transport: MemoryEndpoint, dial: Sequence[str], listen: Sequence[str]
    ) -> None:
        super().__init__(transport)
        self._net = transport.network
        self._send, self._receive = trio.open_memory_channel[tuple[bytes, int]](
            transport.config.pubsub_buffer
        )
        self._hard_limit = HARD_LIMIT_FACTOR * transport.config.publication_max_size
        self._listen, self._hubs = _attach(self._net, listen, dial)
        for hub in self._hubs:
            hub.subscriptions.append(self)

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._listen

    @property
    def connections(self) -> int:
        return sum(len(h.publishers) for h in self._hubs)

    def _deliver(self, frame: bytes, source: int) -> None:
        if len(frame) > self._hard_limit:
            self._transport._counts.connection_errors += 1
            log.debug("subscription: %d-byte frame, connection closed", len(frame))
            return
        # A full queue drops, like NNG; the numbering gap reveals it to the subscriber.
        with contextlib.suppress(
            trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
        ):
            self._send.send_nowait((frame, source))

    async def _receive_frame(self) -> tuple[bytes, int]:
        try:
            return await self._receive.receive()
        except (trio.ClosedResourceError, trio.EndOfChannel):
            raise NetError("closed", ",".join(self._listen) or "subscription") from None

    def _take_queued(self) -> list[tuple[bytes, int]]:
        frames: list[tuple[bytes, int]] = []
        while len(frames) < DRAIN_BATCH - 1:
            try:
                frames.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                break
        return frames

    def close(self) -> None:
        for hub in self._hubs:
            if self in hub.subscriptions:
                hub.subscriptions.remove(self)
        self._hubs = []
        for address in self._listen:
            self._net._unlisten(address)
        self._listen = ()
        self._send.close()
        self._receive.close()
