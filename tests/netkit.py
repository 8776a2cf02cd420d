"""Network pieces the integration tests share: a real gateway, waiting for a healthy node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from hypha_sm.net.transport import NetError, Publisher, Transport
from hypha_sm.roles.gateway.gateway import Gateway, GatewayAddresses
from hypha_sm.wire import messages as m

LOOPBACK = "tcp://127.0.0.1:0"


@asynccontextmanager
async def running_gateway(
    transport: Transport, listen: str = LOOPBACK, ingest: str = LOOPBACK, publish: str = LOOPBACK
) -> AsyncIterator[GatewayAddresses]:
    """A real gateway on ``transport`` (closed at the end); yields the addresses it bound."""
    gateway = Gateway(transport, listen=listen, ingest=ingest, publish=publish)
    with transport:
        async with trio.open_nursery() as nursery:
            addresses: GatewayAddresses = await nursery.start(gateway.run)
            yield addresses
            nursery.cancel_scope.cancel()


async def wait_healthy(asker: Transport, address: str) -> None:
    """Ask ``address`` for its health until it says healthy (the caller bounds the time)."""
    while True:
        try:
            answer = await asker.request(address, m.Health(), timeout=1.0)
        except NetError:
            answer = None
        if answer is not None and answer.message == m.HealthReply(True):
            return
        await trio.sleep(0.02)


async def wait_connected(publisher: Publisher) -> None:
    """Until the publisher has a connection (NNG has no connect event to wait on)."""
    while not publisher.connections:  # noqa: ASYNC110
        await trio.sleep(0.01)
