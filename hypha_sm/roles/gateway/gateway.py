"""The gateway role: advertisement relay, signed peer directory, dataset records, health.

- **Relay.** Schedulers' publishers dial ``ingest``; workers' subscriptions dial ``publish``.
  Every advertisement is verified (signature, skew, replay, and its ``scheduler`` field must be
  its signer) and relayed byte for byte, so workers verify the scheduler's own signature and the
  gateway can drop but never forge. A bounded queue sits between receiving and publishing: when
  it is full the advertisement is dropped and counted as overload, never silently.
- **Directory.** ``listen`` answers requests: ``peer_record`` and ``dataset_record`` (stored
  only from their authors, expiring, bounded), ``lookup`` (returns the authors' signed
  envelopes), ``health``, and ``gateway_info`` (its ingest and publish addresses, so nodes
  configure one address per gateway).
- Several gateways can run at once: nodes dial all of them; subscriptions de-duplicate.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from hypha_sm.net.transport import Publisher, Subscription, Transport
from hypha_sm.roles.gateway.directory import Directory
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.messages import (
    Ack,
    Advertisement,
    DatasetRecord,
    GatewayInfo,
    GatewayInfoReply,
    Health,
    HealthReply,
    Lookup,
    LookupReply,
    Message,
    PeerRecord,
    Refused,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayAddresses:
    """The addresses a running gateway actually bound (ports chosen for ``:0``)."""

    listen: str
    ingest: str
    publish: str


@dataclass
class GatewayStats:
    """What the gateway relayed, dropped for overload, and refused, by reason."""

    relayed: int = 0
    overload_dropped: int = 0
    refused: Counter[str] = field(default_factory=Counter)


class Gateway:
    """One gateway on a transport. ``run`` until cancelled."""

    def __init__(
        self,
        transport: Transport,
        *,
        listen: str,
        ingest: str,
        publish: str,
        max_records: int = 100_000,
        max_directory_bytes: int = 64 << 20,
        relay_queue: int = 1024,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.listen = listen
        self.ingest = ingest
        self.publish = publish
        self.directory = Directory(max_records=max_records, max_bytes=max_directory_bytes)
        self.relay_queue = relay_queue
        self.stats = GatewayStats()
        self._wall = wall
        self._info = GatewayInfoReply(ingest="", publish="")

    async def run(
        self, *, task_status: trio.TaskStatus[GatewayAddresses] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the directory and relay advertisements until cancelled."""
        send, receive = trio.open_memory_channel[bytes](self.relay_queue)
        with (
            self.transport.subscribe(listen=[self.ingest]) as inbound,
            self.transport.publisher(listen=[self.publish]) as outbound,
        ):
            self._info = GatewayInfoReply(inbound.addresses[0], outbound.addresses[0])
            async with trio.open_nursery() as nursery:
                listen = await nursery.start(self.transport.serve, self.listen, self._answer)
                nursery.start_soon(self._take_in, inbound, send)
                nursery.start_soon(self._send_out, outbound, receive)
                addresses = GatewayAddresses(listen, inbound.addresses[0], outbound.addresses[0])
                log.info(
                    "gateway %s: requests %s, ingest %s, publish %s",
                    self.transport.peer_id,
                    addresses.listen,
                    addresses.ingest,
                    addresses.publish,
                )
                task_status.started(addresses)

    async def _take_in(self, inbound: Subscription, send: trio.MemorySendChannel[bytes]) -> None:
        async for opened in inbound:
            message = opened.message
            if not isinstance(message, Advertisement):
                self._refuse("not_an_advertisement", opened)
                continue
            if message.scheduler != str(opened.sender):
                self._refuse("not_author", opened)
                continue
            try:
                send.send_nowait(opened.envelope)
            except trio.WouldBlock:
                self.stats.overload_dropped += 1
                log.debug("relay queue full: dropped advertisement %s", message.request_id)

    async def _send_out(
        self, outbound: Publisher, receive: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        async for envelope in receive:
            await outbound.relay(envelope)
            self.stats.relayed += 1

    async def _answer(self, opened: Opened) -> Message:
        message = opened.message
        now = self._wall()
        if isinstance(message, PeerRecord | DatasetRecord):
            reason = self.directory.store(opened, now)
            if reason is None:
                return Ack()
            self._refuse(reason, opened)
            return Refused(reason)
        if isinstance(message, Lookup):
            if message.peer:
                return LookupReply(tuple(self.directory.lookup_peer(message.peer, now)))
            return LookupReply(tuple(self.directory.lookup_dataset(message.dataset, now)))
        if isinstance(message, Health):
            return HealthReply(True)
        if isinstance(message, GatewayInfo):
            return self._info
        self._refuse("unsupported", opened)
        return Refused("unsupported")

    def _refuse(self, reason: str, opened: Opened) -> None:
        self.stats.refused[reason] += 1
        log.debug("refused %s from %s: %s", type(opened.message).__name__, opened.sender, reason)
