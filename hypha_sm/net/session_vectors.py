"""Golden bytes of a session (``specs/vectors/session-v1.json``).

A handshake from fixed keys, the keys both sides derive, one sealed request and its answer.
Ed25519 signatures, X25519, HKDF and ChaCha20-Poly1305 are all deterministic given their
inputs, so every byte is fixed. Regenerate with ``python -m hypha_sm.net.session_vectors`` only
for a deliberate, versioned format change.
"""

from __future__ import annotations

import json
from typing import Any

from hypha_sm.net import session as sn
from hypha_sm.wire.envelope import encode_payload, seal
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import LeaseRenewed, RenewLease, SessionAccept, SessionOpen
from hypha_sm.wire.vectors import write_vectors

CLIENT_SEED = bytes(range(32))
SERVER_SEED = bytes(range(32, 64))
CLIENT_EPHEMERAL = bytes(range(64, 96))
SERVER_EPHEMERAL = bytes(range(96, 128))
SESSION = bytes(range(128, 144))
OPEN_ID = bytes(range(144, 160))
ACCEPT_ID = bytes(range(160, 176))
WALL = 1_764_000_000.25
LEASE = "9b059186-ba55-4b4c-a801-ed2f0065fd55"
SEQ = 7


def build() -> dict[str, Any]:
    """Every value of the vectors file, as hex where it is bytes."""
    client, server = Identity.from_seed(CLIENT_SEED), Identity.from_seed(SERVER_SEED)
    client_key, server_key = (
        sn.new_private_key(CLIENT_EPHEMERAL),
        sn.new_private_key(SERVER_EPHEMERAL),
    )
    hello = seal(
        client, SessionOpen(sn.public_bytes(client_key), str(server.peer_id)), WALL, OPEN_ID
    )
    accept_message = SessionAccept(
        sn.public_bytes(server_key), SESSION, OPEN_ID, str(client.peer_id), 600.0, 1 << 20
    )
    accept = seal(server, accept_message, WALL, ACCEPT_ID)
    keys = sn.derive_keys(client_key, sn.public_bytes(server_key), hello, accept)
    ours = sn.ClientSession.from_keys(SESSION, keys, WALL + 600.0, 1 << 20)
    ours.next_seq = SEQ
    request = encode_payload(RenewLease(LEASE))
    _, request_frame = ours.seal(request)
    table = sn.SessionTable()
    theirs = table.add(client.peer_id, SESSION, keys, WALL + 600.0, 1 << 20)
    answer = encode_payload(LeaseRenewed(LEASE, WALL + 10.0))
    return {
        "format": "hypha-sm session v1 golden vectors; see specs/protocol.md section 5.1",
        "client_seed_hex": CLIENT_SEED.hex(),
        "server_seed_hex": SERVER_SEED.hex(),
        "client_ephemeral_private_hex": CLIENT_EPHEMERAL.hex(),
        "server_ephemeral_private_hex": SERVER_EPHEMERAL.hex(),
        "wall": WALL,
        "session_open_envelope_hex": hello.hex(),
        "session_accept_envelope_hex": accept.hex(),
        "k_c2s_hex": keys[0].hex(),
        "k_s2c_hex": keys[1].hex(),
        "seq": SEQ,
        "request_payload_hex": request.hex(),
        "request_frame_hex": request_frame.hex(),
        "answer_payload_hex": answer.hex(),
        "answer_frame_hex": theirs.seal_answer(SEQ, answer).hex(),
    }


def render() -> bytes:
    """The vectors file's bytes."""
    return (json.dumps(build(), indent=1) + "\n").encode()


def main() -> int:
    """Write specs/vectors/session-v1.json (or the path given)."""
    return write_vectors(render(), "specs/vectors/session-v1.json")


if __name__ == "__main__":
    raise SystemExit(main())
