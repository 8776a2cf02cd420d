"""The gateway's directory: signed peer records and dataset records, bounded and expiring.

A record is stored as the envelope its author signed, so the gateway can hand it to anyone and
they verify it themselves; the gateway is never trusted for an address. Only a record's own
author may publish it (the envelope sender must be the record's peer or provider). Newer
records replace older ones; expired ones are dropped; memory is bounded by ``max_records``.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.messages import DatasetRecord, PeerRecord

#: A record may not claim to be valid for longer than this (seconds).
MAX_RECORD_LIFETIME = 3600.0
MAX_ADDRESSES = 16


@dataclass
class _Stored:
    expires: float
    ts_ms: int
    envelope: bytes


@dataclass
class Directory:
    """Peer id → addresses record; dataset → provider records. Pure: time is passed in."""

    max_records: int = 100_000
    peers: dict[str, _Stored] = field(default_factory=dict)
    datasets: dict[str, dict[str, _Stored]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    _expiry: list[tuple[float, str, str, str]] = field(default_factory=list)
    _count: int = 0

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
        if isinstance(message, PeerRecord):
            if message.peer != sender:
                return "not_record_author"
            if not 0 < len(message.addresses) <= MAX_ADDRESSES:
                return "bad_addresses"
            key = ("peer", message.peer, "")
        elif isinstance(message, DatasetRecord):
            if message.provider != sender:
                return "not_record_author"
            if not message.dataset or len(message.dataset) > 256:
                return "bad_dataset_name"
            key = ("dataset", message.dataset, message.provider)
        else:
            return "not_a_record"
        if not now < message.expires <= now + MAX_RECORD_LIFETIME:
            return "bad_expiry"
        table = self._table(key[0], key[1], create=True)
        slot = key[1] if key[0] == "peer" else key[2]
        old = table.get(slot)
        if old is not None and old.ts_ms >= opened.ts_ms:
            return "older_than_stored"
        if old is None:
            if self._count >= self.max_records:
                return "directory_full"
            self._count += 1
        table[slot] = _Stored(message.expires, opened.ts_ms, envelope)
        heapq.heappush(self._expiry, (message.expires, key[0], key[1], slot))
        return None

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
        """The signed records of every live provider of ``dataset``."""
        self.prune(now)
        table = self.datasets.get(dataset, {})
        return [table[p].envelope for p in sorted(table)]

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
                if kind == "dataset" and not table:
                    del self.datasets[name]

    def __len__(self) -> int:
        return self._count
