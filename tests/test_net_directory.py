"""The gateway directory: only authors publish records; records expire; memory is bounded."""

from __future__ import annotations

import pytest

from hypha_sm.roles.gateway.directory import Directory
from hypha_sm.wire.envelope import Opened, Opener, seal
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import DatasetRecord, Message, PeerRecord, RenewLease

NOW = 1_764_000_000.0
NODE = Identity.from_seed(bytes([1]) * 32)
OTHER = Identity.from_seed(bytes([2]) * 32)


def signed(identity: Identity, message: Message, t: float = NOW, n: int = 0) -> Opened:
    opened = Opener().open(seal(identity, message, t, n.to_bytes(16, "big")), t)
    assert isinstance(opened, Opened)
    return opened


def test_a_node_publishes_its_own_record_and_anyone_can_verify_what_is_returned() -> None:
    """The lookup returns the author's own signed envelope, not the gateway's word."""
    d = Directory()
    opened = signed(NODE, PeerRecord(str(NODE.peer_id), ("tcp://10.0.0.9:7200",), NOW + 60))
    assert d.store(opened, NOW) is None
    (record,) = d.lookup_peer(str(NODE.peer_id), NOW + 1)
    again = Opener().open(record, NOW + 1)
    assert isinstance(again, Opened)
    assert again.sender == NODE.peer_id


REFUSALS = [
    (
        "not_record_author",
        lambda: signed(OTHER, PeerRecord(str(NODE.peer_id), ("tcp://x:1",), NOW + 60)),
    ),
    ("not_record_author", lambda: signed(OTHER, DatasetRecord("d", str(NODE.peer_id), NOW + 60))),
    ("bad_addresses", lambda: signed(NODE, PeerRecord(str(NODE.peer_id), (), NOW + 60))),
    ("bad_expiry", lambda: signed(NODE, PeerRecord(str(NODE.peer_id), ("tcp://x:1",), NOW - 1))),
    ("bad_expiry", lambda: signed(NODE, PeerRecord(str(NODE.peer_id), ("tcp://x:1",), NOW + 1e6))),
    ("bad_dataset_name", lambda: signed(NODE, DatasetRecord("", str(NODE.peer_id), NOW + 60))),
    ("not_a_record", lambda: signed(NODE, RenewLease("l"))),
]


@pytest.mark.parametrize(("reason", "make"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_records_are_refused_with_a_counted_reason(reason: str, make: object) -> None:
    """Forged, malformed or over-long records are refused and counted."""
    d = Directory()
    assert d.store(make(), NOW) == reason  # type: ignore[operator]
    assert d.refused == {reason: 1}
    assert len(d) == 0


def test_newer_records_replace_older_ones_and_expired_ones_vanish() -> None:
    """A node moving address republishes; the old record is gone; nothing outlives its expiry."""
    d = Directory()
    peer = str(NODE.peer_id)
    d.store(signed(NODE, PeerRecord(peer, ("tcp://old:1",), NOW + 60), NOW, 1), NOW)
    newer = signed(NODE, PeerRecord(peer, ("tcp://new:1",), NOW + 30), NOW + 5, 2)
    assert d.store(newer, NOW + 5) is None
    stale = signed(NODE, PeerRecord(peer, ("tcp://old:1",), NOW + 60), NOW + 1, 3)
    assert d.store(stale, NOW + 6) == "older_than_stored"
    assert d.lookup_peer(peer, NOW + 29) == [newer.envelope]
    assert d.lookup_peer(peer, NOW + 30) == []
    assert len(d) == 0


def test_datasets_list_every_live_provider() -> None:
    """Several data nodes can serve one dataset; each record stands alone."""
    d = Directory()
    d.store(signed(NODE, DatasetRecord("shakespeare", str(NODE.peer_id), NOW + 60)), NOW)
    d.store(signed(OTHER, DatasetRecord("shakespeare", str(OTHER.peer_id), NOW + 10)), NOW)
    assert len(d.lookup_dataset("shakespeare", NOW + 1)) == 2
    assert len(d.lookup_dataset("shakespeare", NOW + 11)) == 1
    assert d.lookup_dataset("other", NOW) == []


def test_the_directory_is_bounded() -> None:
    """At max_records new authors are refused instead of growing memory."""
    d = Directory(max_records=3)
    for i in range(5):
        ident = Identity.from_seed(bytes([10 + i]) * 32)
        d.store(signed(ident, PeerRecord(str(ident.peer_id), ("tcp://x:1",), NOW + 60)), NOW)
    assert len(d) == 3
    assert d.refused == {"directory_full": 2}


def _provider(n: int) -> Identity:
    return Identity.from_seed(n.to_bytes(4, "big") * 8)


def test_records_are_bounded_in_bytes_each_and_together() -> None:
    """A record over max_record_bytes is refused; so is one that would pass max_bytes."""
    d = Directory(max_record_bytes=600, max_bytes=1500)
    addresses = ("tcp://" + "h" * 200 + ":1", "tcp://" + "i" * 200 + ":1", "tcp://j:1")
    big = signed(NODE, PeerRecord(str(NODE.peer_id), addresses, NOW + 60))
    assert d.store(big, NOW) == "record_too_large"
    stored = 0
    for n in range(10):
        who = _provider(n + 1)
        record = PeerRecord(str(who.peer_id), ("tcp://" + "h" * 240 + ":1",), NOW + 60)
        stored += d.store(signed(who, record), NOW) is None
    assert stored == 3
    assert d.bytes <= 1500
    assert d.refused["directory_full"] == 7


def test_a_crowd_of_throwaway_providers_cannot_push_out_one_that_renews() -> None:
    """A dataset keeps at most max_providers; newcomers take the place of the providers that
    renewed least (oldest first), so the real provider, which renews, stays findable among
    5,000 throwaway keys, and every lookup fits a reply."""
    d = Directory(max_providers=64)
    real = _provider(1)
    t = NOW
    for n in range(2):  # registered, then renewed once
        record = DatasetRecord("corpus", str(real.peer_id), t + 600)
        assert d.store(signed(real, record, t, n), t) is None
        t += 1
    for n in range(5000):
        who = _provider(1000 + n)
        assert (
            d.store(signed(who, DatasetRecord("corpus", str(who.peer_id), t + 600), t), t) is None
        )
        t += 0.001
    found = d.lookup_dataset("corpus", t)
    assert len(found) == 64
    assert found[0] == d.datasets["corpus"][str(real.peer_id)].envelope  # renewals rank first
    assert d.evicted == 5000 - 63
    assert sum(len(r) for r in found) < 1 << 20  # a lookup reply always fits


def test_rapid_renewals_do_not_grow_the_expiry_heap_without_bound() -> None:
    """A node renewing as fast as it can leaves one live heap entry, not one per renewal."""
    d = Directory()
    peer = str(NODE.peer_id)
    for n in range(20_000):
        t = NOW + n * 0.001
        d.store(signed(NODE, PeerRecord(peer, ("tcp://x:1",), t + 3000), t, n), t)
    assert len(d) == 1
    assert len(d._expiry) <= 2 * len(d) + 1024 + 1
