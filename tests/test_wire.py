"""The wire layer: golden bytes, peer ids, and every rejection counted with its reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hypha_sm.wire import messages as m
from hypha_sm.wire import vectors
from hypha_sm.wire.envelope import (
    REASONS,
    VERSION,
    Envelope,
    Opened,
    Opener,
    Rejection,
    ReplayGuard,
    encode_payload,
    open_record,
    seal,
    signing_bytes,
)
from hypha_sm.wire.identity import Identity, IdentityError, PeerId
from tests.hostile import hostile_msgpack, msgpack_tower

VECTORS = Path(__file__).resolve().parent.parent / "specs" / "vectors" / "wire-v1.json"
ALICE = Identity.from_seed(bytes(32))
MALLORY = Identity.from_seed(bytes([7]) * 32)
NOW = 1_764_000_000.0
DECODER = msgspec.msgpack.Decoder(m.Message)


def test_golden_vectors_file_is_current() -> None:
    """specs/vectors/wire-v1.json is exactly what the current encoders produce."""
    assert VECTORS.read_bytes() == vectors.render()


@pytest.mark.parametrize("name", sorted(vectors.EXAMPLES))
def test_every_message_encodes_to_and_decodes_from_its_golden_bytes(name: str) -> None:
    """Encoding gives the committed bytes; decoding the committed bytes gives the message."""
    golden = json.loads(VECTORS.read_text())["messages"][name]
    data = bytes.fromhex(golden["msgpack_hex"])
    assert encode_payload(vectors.EXAMPLES[name]) == data
    assert DECODER.decode(data) == vectors.EXAMPLES[name]


def test_golden_envelope_is_sealed_deterministically_and_opens() -> None:
    """The same key, time and id give the same signed bytes, which verify."""
    golden = json.loads(VECTORS.read_text())["envelope"]
    identity = Identity.from_seed(bytes.fromhex(golden["key_seed_hex"]))
    assert str(identity.peer_id) == golden["peer_id"]
    data = bytes.fromhex(golden["envelope_hex"])
    assert seal(identity, m.RenewLease(vectors.LEASE), golden["wall"], vectors.MSG_ID) == data
    opened = Opener().open(data, golden["wall"])
    assert isinstance(opened, Opened)
    assert opened.message == m.RenewLease(vectors.LEASE)
    assert opened.sender == identity.peer_id
    assert opened.envelope == data


def test_a_stored_record_opens_with_its_signed_bytes_however_old() -> None:
    """open_record verifies a record handed on by a gateway without a freshness check, and
    keeps the exact signed bytes so it can be relayed as signed; a forged one is refused."""
    data = seal(ALICE, m.RenewLease(vectors.LEASE), NOW - 86_400, vectors.MSG_ID)
    opened = open_record(data)
    assert isinstance(opened, Opened)
    assert (opened.sender, opened.message, opened.msg_id) == (
        ALICE.peer_id,
        m.RenewLease(vectors.LEASE),
        vectors.MSG_ID,
    )
    assert opened.envelope == data
    forged = bytearray(data)
    forged[-1] ^= 1
    refused = open_record(bytes(forged))
    assert isinstance(refused, Rejection)


def test_peer_ids_use_the_libp2p_text_form_and_round_trip() -> None:
    """Ed25519 peer ids are identity multihashes in base58btc: they start with 12D3KooW."""
    text = str(ALICE.peer_id)
    assert text.startswith("12D3KooW")
    assert len(ALICE.peer_id.raw) == 38
    assert PeerId.parse(text) == ALICE.peer_id
    # The all-zero Ed25519 seed has this well-known libp2p peer id.
    assert text == "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


@pytest.mark.parametrize(
    "text", ["", "not-base58!", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"]
)
def test_non_ed25519_or_malformed_peer_ids_are_refused(text: str) -> None:
    """Only Ed25519 identity peer ids are accepted (an RSA-style Qm… id cannot verify here)."""
    with pytest.raises(IdentityError):
        PeerId.parse(text)


def test_keys_round_trip_through_pem() -> None:
    """A node key saved as PEM loads back to the same peer id; other PEM is refused clearly."""
    again = Identity.from_pem(ALICE.to_pem())
    assert again.peer_id == ALICE.peer_id
    with pytest.raises(IdentityError, match="not a PEM private key"):
        Identity.from_pem(b"-----BEGIN NOTHING-----\n")


def _forge(**change: object) -> bytes:
    """A valid envelope from ALICE with one field changed (and re-signed unless sig is given)."""
    payload = change.pop("payload", encode_payload(m.RenewLease("l")))
    fields: dict[str, object] = {
        "v": VERSION,
        "sender": ALICE.peer_id.raw,
        "ts": int(NOW * 1000),
        "id": bytes(16),
        "payload": payload,
    }
    fields.update(change)
    if "sig" not in fields:
        fields["sig"] = ALICE.sign(
            signing_bytes(fields["sender"], fields["ts"], fields["id"], fields["payload"])  # type: ignore[arg-type]
        )
    return msgspec.msgpack.encode(Envelope(**fields))  # type: ignore[arg-type]


REJECTIONS = [
    ("malformed_payload", lambda: _forge(payload=b"\x81\xa1t\xa3\xff\xfe\xfd"), {}),
    ("oversized", lambda: b"\x00" * (Opener().max_size + 1), {}),
    ("malformed", lambda: b"\xc1garbage", {}),
    ("malformed", lambda: msgspec.msgpack.encode([1, 2, 3]), {}),
    ("unknown_version", lambda: _forge(v=2), {}),
    ("bad_sender", lambda: _forge(sender=b"\x01" * 38), {}),
    ("bad_signature", lambda: _forge(sig=bytes(64)), {}),
    ("bad_signature", lambda: _forge(sender=MALLORY.peer_id.raw, sig=ALICE.sign(b"x")), {}),
    ("sender_mismatch", lambda: _forge(), {"expect_sender": MALLORY.peer_id}),
    ("stale", lambda: _forge(ts=int((NOW - 31) * 1000)), {}),
    ("stale", lambda: _forge(ts=int((NOW + 31) * 1000)), {}),
    (
        "unknown_message",
        lambda: _forge(payload=msgspec.msgpack.encode({"t": "launch_missiles"})),
        {},
    ),
    ("malformed_payload", lambda: _forge(payload=b"\xff\xff"), {}),
    (
        "malformed_payload",
        lambda: _forge(payload=msgspec.msgpack.encode({"t": "renew_lease"})),
        {},
    ),
    (  # ids are kept in memory: bounded (1..128 characters)
        "malformed_payload",
        lambda: _forge(
            payload=msgspec.msgpack.encode({"t": "renew_lease", "lease_id": "x" * 129})
        ),
        {},
    ),
    (
        "malformed_payload",
        lambda: _forge(payload=msgspec.msgpack.encode({"t": "renew_lease", "lease_id": ""})),
        {},
    ),
]


@pytest.mark.parametrize(("reason", "make", "kw"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_each_kind_of_bad_envelope_is_rejected_with_its_counted_reason(
    reason: str, make: object, kw: dict[str, object]
) -> None:
    """Bad input becomes a Rejection with a reason, counted; never an exception."""
    assert reason in REASONS
    opener = Opener()
    result = opener.open(make(), NOW, **kw)  # type: ignore[operator]
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert opener.rejected == {reason: 1}
    assert isinstance(opener.open(seal(ALICE, m.Health(), NOW, bytes([9]) * 16), NOW), Opened)


def test_a_replayed_envelope_is_refused_and_a_fresh_one_accepted() -> None:
    """The same message id from the same sender is accepted once."""
    opener = Opener()
    data = seal(ALICE, m.Health(), NOW, bytes(16))
    assert isinstance(opener.open(data, NOW), Opened)
    assert opener.open(data, NOW + 1).reason == "replayed"  # type: ignore[union-attr]
    assert isinstance(opener.open(seal(ALICE, m.Health(), NOW, bytes([1]) * 16), NOW), Opened)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    """A newer peer may add fields; an older one reads what it knows."""
    payload = msgspec.msgpack.encode({"t": "renew_lease", "lease_id": "l", "priority": 3})
    opened = Opener().open(_forge(payload=payload), NOW)
    assert isinstance(opened, Opened)
    assert opened.message == m.RenewLease("l")


def test_replay_guard_memory_is_bounded_and_eviction_never_lets_a_replay_through() -> None:
    """At capacity the oldest id is forgotten and everything as old is refused as stale."""
    guard = ReplayGuard(window_ms=30_000, capacity=100)
    now = 1_000_000
    for i in range(1000):
        assert guard.check(b"s", i.to_bytes(16, "big"), now + i, now + i) is None
    assert len(guard) <= 100
    assert guard.check(b"s", (5).to_bytes(16, "big"), now + 5, now + 1000) == "stale"
    assert guard.check(b"s", (999).to_bytes(16, "big"), now + 999, now + 1000) == "replayed"
    # Ids older than the window are dropped without any capacity pressure.
    guard = ReplayGuard(window_ms=1_000, capacity=100)
    guard.check(b"s", bytes(16), now, now)
    assert guard.check(b"s", bytes([1]) * 16, now + 5_000, now + 5_000) is None
    assert len(guard) == 1


@given(st.one_of(st.binary(max_size=2048), hostile_msgpack()))
@example(msgpack_tower(10_000))
def test_fuzz_any_bytes_give_a_message_or_a_typed_rejection(data: bytes) -> None:
    """The envelope check never raises, whatever the bytes (deep and wide shapes included)."""
    result = Opener().open(data, NOW)
    assert isinstance(result, Opened | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in REASONS


@given(st.binary(max_size=512))
def test_fuzz_the_payload_decoder_raises_only_its_decode_error(data: bytes) -> None:
    """Decoding arbitrary bytes as a message gives a message or a msgspec DecodeError."""
    try:
        message = DECODER.decode(data)
    except msgspec.DecodeError:
        return
    assert isinstance(message, get_args(m.Message))


@given(
    st.sampled_from(sorted(vectors.EXAMPLES)),
    st.integers(0, 10_000),
    st.integers(0, 7),
    st.booleans(),
)
def test_fuzz_mutated_valid_envelopes_are_rejected_never_raise(
    name: str, position: int, bit: int, truncate: bool
) -> None:
    """Flipping a bit or truncating a valid envelope gives a rejection (the signature fails)."""
    data = bytearray(seal(ALICE, vectors.EXAMPLES[name], NOW, bytes(16)))
    position %= len(data)
    if truncate:
        del data[position:]
    else:
        data[position] ^= 1 << bit
    result = Opener().open(bytes(data), NOW)
    assert isinstance(result, Rejection)
    assert result.reason in REASONS


@given(st.one_of(st.binary(max_size=512), hostile_msgpack()))
@example(msgpack_tower(10_000, b"\x81\xa1k"))
def test_fuzz_signed_payloads_of_any_bytes_are_opened_or_rejected(payload: bytes) -> None:
    """A peer with a valid key can sign any payload bytes, deep or wide; they never raise."""
    result = Opener().open(_forge(payload=payload), NOW)
    assert isinstance(result, Opened | Rejection)


@given(st.sampled_from(sorted(vectors.EXAMPLES)), st.integers(0, 10_000), st.integers(0, 7))
def test_fuzz_signed_mutations_of_valid_payloads_never_raise(
    name: str, pos: int, bit: int
) -> None:
    """Bit flips inside a validly signed payload (e.g. invalid UTF-8) give a rejection or a message."""
    payload = bytearray(encode_payload(vectors.EXAMPLES[name]))
    payload[pos % len(payload)] ^= 1 << bit
    result = Opener().open(_forge(payload=bytes(payload)), NOW)
    assert isinstance(result, Opened | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in {"malformed_payload", "unknown_message"}


def test_the_replay_guard_keys_ids_by_sender_and_counts_what_it_opens() -> None:
    """One message id from two senders is two messages; from one sender twice, a replay.
    ``accepted`` and ``rejected`` count every envelope."""
    opener = Opener()
    same_id = bytes([5]) * 16
    assert isinstance(opener.open(seal(ALICE, m.Health(), NOW, same_id), NOW), Opened)
    assert isinstance(opener.open(seal(MALLORY, m.Health(), NOW, same_id), NOW), Opened)
    again = opener.open(seal(ALICE, m.Health(), NOW, same_id), NOW)
    assert isinstance(again, Rejection)
    assert again.reason == "replayed"
    assert opener.open(b"\xc1", NOW) == Rejection("malformed", "invalid")
    assert (opener.accepted, opener.rejected) == (2, {"replayed": 1, "malformed": 1})
    opener.open(seal(ALICE, m.Health(), NOW, same_id), NOW)
    assert opener.rejected["replayed"] == 2


@pytest.mark.parametrize(("skew_ms", "opened"), [(30_000, True), (30_001, False), (-30_000, True)])
def test_the_clock_skew_limit_is_inclusive_to_the_millisecond(skew_ms: int, opened: bool) -> None:
    data = seal(ALICE, m.Health(), NOW, bytes([6]) * 16)
    result = Opener(max_skew=30.0).open(data, NOW + skew_ms / 1000)
    assert isinstance(result, Opened) is opened
    if not opened:
        assert isinstance(result, Rejection)
        assert result.reason == "stale"


def test_an_envelope_of_exactly_the_size_limit_is_read() -> None:
    data = seal(ALICE, m.Health(), NOW, bytes([8]) * 16)
    assert isinstance(Opener(max_size=len(data)).open(data, NOW), Opened)
    refused = Opener(max_size=len(data) - 1).open(data, NOW)
    assert isinstance(refused, Rejection)
    assert refused.reason == "oversized"


def test_the_replay_guard_edges_window_and_floor() -> None:
    """Forgetting: an id at exactly the window's edge is still remembered. The floor left by an
    eviction refuses ids at exactly the floor, whether or not the guard is full again."""
    guard = ReplayGuard(window_ms=1000, capacity=2)
    assert guard.check(b"s", b"a", 0, 0) is None
    assert guard.check(b"s", b"a", 0, 1000) == "replayed"  # ts 0 == horizon 0: kept
    guard = ReplayGuard(window_ms=1000, capacity=2)
    for msg_id, ts in ((b"a", 100), (b"b", 200), (b"c", 300)):  # c evicts a: floor 100
        assert guard.check(b"s", msg_id, ts, ts) is None
    assert guard.check(b"s", b"d", 100, 1250) == "stale"  # b forgotten: not full, at the floor
    full = ReplayGuard(window_ms=1000, capacity=1)
    assert full.check(b"s", b"a", 100, 100) is None
    assert full.check(b"s", b"b", 100, 100) == "stale"  # evicting a sets the floor to 100
    assert full.check(b"s", b"c", 101, 101) is None


def _framed(msg_id: bytes, ts: int, payload: bytes | None = None) -> bytes:
    """Alice's envelope (Health unless given) with this id and timestamp, signed when the
    signature can be."""
    payload = encode_payload(m.Health()) if payload is None else payload
    sender = ALICE.peer_id.raw
    try:
        sig = ALICE.sign(signing_bytes(sender, ts, msg_id, payload))
    except OverflowError:  # a negative timestamp has no 8-byte form to sign
        sig = bytes(64)
    return msgspec.msgpack.encode(Envelope(VERSION, sender, ts, msg_id, payload, sig))


BAD_ID_OR_TS = Rejection("malformed", "bad message id or timestamp")


@pytest.mark.parametrize(
    ("msg_id", "ts", "now", "expected"),
    [
        (bytes(16), 0, 0.0, "opened"),  # the first millisecond is a timestamp like any other
        (bytes(15), 0, 0.0, BAD_ID_OR_TS),
        (bytes(17), 0, 0.0, BAD_ID_OR_TS),
        (bytes(16), -1, 0.0, BAD_ID_OR_TS),
        (bytes(16), (1 << 63) - 1, NOW, "stale"),  # in range: refused for its skew only
        (bytes(16), 1 << 63, NOW, BAD_ID_OR_TS),
        (bytes(16), (1 << 64) - 1, NOW, BAD_ID_OR_TS),
    ],
)
def test_a_signed_envelope_needs_a_16_byte_id_and_a_timestamp_below_2_to_the_63(
    msg_id: bytes, ts: int, now: float, expected: object
) -> None:
    result = Opener().open(_framed(msg_id, ts), now)
    if expected == "opened":
        assert isinstance(result, Opened)
        assert (result.msg_id, result.ts_ms) == (msg_id, ts)
    elif expected == "stale":
        assert isinstance(result, Rejection)
        assert result.reason == "stale"
    else:
        assert result == expected


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"t": "no_such_message"}, "unknown_message"),
        ({"t": 5}, "malformed_payload"),  # an error at the tag that is not an unknown tag
    ],
)
def test_a_payload_is_unknown_only_when_its_tag_names_no_message(
    payload: dict[str, object], reason: str
) -> None:
    result = Opener().open(_framed(bytes(16), 0, msgspec.msgpack.encode(payload)), 0.0)
    assert isinstance(result, Rejection)
    assert result.reason == reason
