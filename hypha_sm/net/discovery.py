"""Talking to gateways: where to publish and subscribe, registering a node, finding a peer.

A node is configured with one address per gateway: the gateway's request address. It asks
each gateway (``gateway_info``) where schedulers publish (``ingest``) and where workers subscribe
(``publish``). A node registers its own signed ``peer_record`` and finds other nodes through
``lookup``; the records come back still signed by their authors and are verified here, so a
gateway can hide a node but never point us at a forged address.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hypha_sm.net.transport import NetError, Transport
from hypha_sm.wire.envelope import Opened, open_record
from hypha_sm.wire.messages import (
    Ack,
    DatasetRecord,
    GatewayInfo,
    GatewayInfoReply,
    Lookup,
    LookupReply,
    PeerRecord,
)

log = logging.getLogger(__name__)

_WILDCARDS = {"", "0.0.0.0", "::", "*"}


@dataclass(frozen=True, slots=True)
class LocatedGateway:
    """A gateway's request address and the ingest and publish addresses it reported."""

    address: str
    ingest: str
    publish: str


def has_wildcard_host(address: str) -> bool:
    """Whether ``address`` listens on all interfaces (``0.0.0.0``, ``::``): not dialable as is."""
    parts = urllib.parse.urlsplit(address)
    return parts.scheme != "ipc" and parts.hostname in _WILDCARDS


def dialable(bound: str, via: str) -> str:
    """``bound`` with a wildcard host (``0.0.0.0``, ``::``) replaced by the host of ``via``.

    A server that listens on all interfaces reports the wildcard; the peer that reached it at
    ``via`` can reach its other sockets at the same host.
    """
    if not has_wildcard_host(bound):
        return bound
    parts = urllib.parse.urlsplit(bound)
    host = urllib.parse.urlsplit(via).hostname
    if not host or host in _WILDCARDS:
        return bound
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{parts.port}"


class Gateways:
    """The configured gateways, seen from one node's transport."""

    def __init__(
        self,
        transport: Transport,
        addresses: Sequence[str],
        *,
        timeout: float = 2.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.addresses = list(addresses)
        self.timeout = timeout
        self._wall = wall

    async def locate(self, address: str) -> LocatedGateway:
        """Ask the gateway at ``address`` where to publish and subscribe; NetError if it fails."""
        answer = await self.transport.request(address, GatewayInfo(), timeout=self.timeout)
        info = answer.message
        if not isinstance(info, GatewayInfoReply) or not info.ingest or not info.publish:
            raise NetError("unexpected_answer", address, detail=type(info).__name__)
        try:
            ingest, publish = dialable(info.ingest, address), dialable(info.publish, address)
        except ValueError as exc:  # the gateway's answer is remote input: its error, not ours
            raise NetError("bad_address", address, detail=str(exc)[:200]) from None
        return LocatedGateway(address, ingest, publish)

    async def register(self, address: str, addresses: Sequence[str], lifetime: float) -> None:
        """Publish this node's signed peer record at one gateway; NetError if refused."""
        record = PeerRecord(str(self.transport.peer_id), tuple(addresses), self._wall() + lifetime)
        answer = await self.transport.request(address, record, timeout=self.timeout)
        if not isinstance(answer.message, Ack):
            raise NetError("unexpected_answer", address, detail=type(answer.message).__name__)

    async def lookup_peer(self, peer: str) -> tuple[str, ...]:
        """The addresses ``peer`` signed for itself, from the first gateway that knows it.

        Records that are not signed by ``peer``, are expired or do not parse are skipped (and
        logged). Returns ``()`` if no gateway has a valid record.
        """
        for address in self.addresses:
            try:
                answer = await self.transport.request(
                    address, Lookup(peer=peer), timeout=self.timeout
                )
            except NetError as exc:
                log.debug("lookup of %s at %s failed: %s", peer, address, exc)
                continue
            if not isinstance(answer.message, LookupReply):
                continue
            for envelope in answer.message.records:
                found = self._valid_record(envelope, peer, address)
                if found:
                    return found
        return ()

    async def lookup_dataset(self, dataset: str) -> list[DatasetRecord]:
        """Every valid record of ``dataset`` the gateways hold, one per provider.

        Each record must be signed by the provider it names, be unexpired and say which
        dataset exactly (slices and manifest hash); others are skipped and logged.
        """
        found: dict[str, DatasetRecord] = {}
        for address in self.addresses:
            try:
                answer = await self.transport.request(
                    address, Lookup(dataset=dataset), timeout=self.timeout
                )
            except NetError as exc:
                log.debug("lookup of dataset %s at %s failed: %s", dataset, address, exc)
                continue
            if not isinstance(answer.message, LookupReply):
                continue
            for envelope in answer.message.records:
                opened = open_record(envelope)
                if not isinstance(opened, Opened):
                    continue
                record = opened.message
                if (
                    not isinstance(record, DatasetRecord)
                    or record.dataset != dataset
                    or str(opened.sender) != record.provider
                    or record.expires <= self._wall()
                    or record.slices < 1
                    or not record.manifest_hash
                ):
                    log.warning(
                        "gateway %s returned a record for %s that does not hold", address, dataset
                    )
                    continue
                found.setdefault(record.provider, record)
        return list(found.values())

    def _valid_record(self, envelope: bytes, peer: str, gateway: str) -> tuple[str, ...]:
        opened = open_record(envelope)
        if not isinstance(opened, Opened):
            log.warning("gateway %s returned a bad record for %s: %s", gateway, peer, opened)
            return ()
        record = opened.message
        if (
            not isinstance(record, PeerRecord)
            or record.peer != peer
            or str(opened.sender) != peer
            or record.expires <= self._wall()
        ):
            log.warning("gateway %s returned a record for %s that does not hold", gateway, peer)
            return ()
        return record.addresses
