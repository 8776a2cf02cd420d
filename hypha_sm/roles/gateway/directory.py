"""The gateway's directory: signed peer records and dataset records, bounded and expiring.

A record is stored as the envelope its author signed, so the gateway can hand it to anyone and
they verify it themselves; the gateway is never trusted for an address. Only a record's own
author may publish it (the envelope sender must be the record's peer or provider). Newer
records replace older ones; expired ones are dropped.

Bounded in what a stranger can make it hold: each record at most ``max_record_bytes``; all
records together at most ``max_records`` and ``max_bytes``; each dataset at most
``max_providers`` providers. When a dataset is full, a new provider takes the place of the one
that renewed its record least often (the oldest among equals), so providers that keep renewing
stay while a crowd of throwaway keys can only displace each other; a lookup returns at most
``max_providers`` records, those that renewed most first, so it always fits in a reply.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.messages import MAX_RECORD_BYTES, MAX_RECORDS, DatasetRecord, PeerRecord

#: A record may not claim to be valid for longer than this (seconds).
MAX_RECORD_LIFETIME = 3600.0
MAX_ADDRESSES = 16


@dataclass
class _Stored:
    expires: float
    ts_ms: int
    envelope: bytes
    first_seen: float
    renewals: int = 0


@dataclass
class Directory:
    """Peer id → addresses record; dataset → provider records. Pure: time is passed in."""

    max_records: int = 100_000
    max_bytes: int = 64 << 20
    max_record_bytes: int = MAX_RECORD_BYTES
    max_providers: int = MAX_RECORDS
    peers: dict[str, _Stored] = field(default_factory=dict)
    datasets: dict[str, dict[str, _Stored]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    #: Providers that lost their place in a full dataset to a newcomer.
    evicted: int = 0
    _expiry: list[tuple[float, str, str, str]] = field(default_factory=list)
    _count: int = 0
    _bytes: int = 0

    def store(self, opened: Opened, now: float) -> str | None:
        """Store a verified record; None if stored, else the reason it was refused (counted)."""
        reason = self._store(opened, opened.envelope, now)
        if reason is not None:
            self.refused[reason] += 1
        return reason

    def _store(self, opened: Opened, envelope: bytes, now: float) -> str | None:
        self.prune(now)
        message = opened.message
        sender = str(opened.sender)
        if len(envelope) > self.max_record_bytes:
            return "record_too_large"
        if isinstance(message, PeerRecord):
            if message.peer != sender:
                return "not_record_author"
            if not 0 < len(message.addresses) <= MAX_ADDRESSES:
                return "bad_addresses"
            kind, name, slot = "peer", message.peer, message.peer
        elif isinstance(message, DatasetRecord):
            if message.provider != sender:
                return "not_record_author"
            if not message.dataset or len(message.dataset) > 256:
                return "bad_dataset_name"
            kind, name, slot = "dataset", message.dataset, message.provider
        else:
            return "not_a_record"
        if not now < message.expires <= now + MAX_RECORD_LIFETIME:
            return "bad_expiry"
        table = self._table(kind, name, create=True)
        old = table.get(slot)
        if old is not None and old.ts_ms >= opened.ts_ms:
            return "older_than_stored"
        grows = len(envelope) - (len(old.envelope) if old is not None else 0)
        if old is None:
            if kind == "dataset" and len(table) >= self.max_providers:
                self._evict_weakest(name, table)
            if self._count >= self.max_records or self._bytes + grows > self.max_bytes:
                if kind == "dataset" and not table:
                    del self.datasets[name]
                return "directory_full"
            self._count += 1
            stored = _Stored(message.expires, opened.ts_ms, envelope, now)
        else:
            if self._bytes + grows > self.max_bytes:
                return "directory_full"
            stored = _Stored(
                message.expires, opened.ts_ms, envelope, old.first_seen, old.renewals + 1
            )
        self._bytes += grows
        table[slot] = stored
        heapq.heappush(self._expiry, (message.expires, kind, name, slot))
        if len(self._expiry) > 2 * self._count + 1024:
            self._compact()
        return None

    def _evict_weakest(self, dataset: str, table: dict[str, _Stored]) -> None:
        slot = min(table, key=lambda s: (table[s].renewals, table[s].first_seen, s))
        self._bytes -= len(table.pop(slot).envelope)
        self._count -= 1
        self.evicted += 1

    def _compact(self) -> None:
        """Renewals leave old heap entries behind until they expire: keep one per record."""
        live = [(s.expires, "peer", name, name) for name, s in self.peers.items()]
        live += [
            (s.expires, "dataset", name, slot)
            for name, table in self.datasets.items()
            for slot, s in table.items()
        ]
        heapq.heapify(live)
        self._expiry = live

    def _table(self, kind: str, name: str, *, create: bool = False) -> dict[str, _Stored]:
        if kind == "peer":
            return self.peers
        if create:
            return self.datasets.setdefault(name, {})
        return self.datasets.get(name, {})

    def lookup_peer(self, peer: str, now: float) -> list[bytes]:
        """The signed record of ``peer``, if it has a live one."""
        self.prune(now)
        stored = self.peers.get(peer)
        return [stored.envelope] if stored else []

    def lookup_dataset(self, dataset: str, now: float) -> list[bytes]:
        """The signed records of the live providers of ``dataset``.

        At most ``max_providers``, those that renewed most first (then the longest known).
        """
        self.prune(now)
        table = self.datasets.get(dataset, {})
        ranked = sorted(table, key=lambda s: (-table[s].renewals, table[s].first_seen, s))
        return [table[s].envelope for s in ranked[: self.max_providers]]

    def prune(self, now: float) -> None:
        """Drop every record whose expiry has passed."""
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            at, kind, name, slot = heapq.heappop(expiry)
            table = self._table(kind, name)
            stored = table.get(slot)
            if stored is not None and stored.expires == at:
                del table[slot]
                self._count -= 1
                self._bytes -= len(stored.envelope)
                if kind == "dataset" and not table:
                    del self.datasets[name]

    def __len__(self) -> int:
        return self._count

    @property
    def bytes(self) -> int:
        """Bytes of the envelopes held."""
        return self._bytes
