"""Golden byte vectors of the wire format (``specs/vectors/wire-v1.json``).

Every message type is encoded from a fixed example; one envelope is sealed with a fixed key,
timestamp and message id (Ed25519 signatures are deterministic). The tests check that encoding
gives these bytes and decoding gives these messages. Regenerate with
``python -m hypha_sm.wire.vectors`` only for a deliberate, versioned format change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import encode_payload, seal
from hypha_sm.wire.identity import Identity

SEED = bytes(range(32))
TS = 1_764_000_000.25
MSG_ID = bytes(range(100, 116))
LEASE = "9b059186-ba55-4b4c-a801-ed2f0065fd55"
JOB = "5d0e7c1a-0000-4000-8000-0000000000aa"
PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
TRAIN = m.Executor(cls="train", name="diloco-transformer")
RES = m.Resources(gpu=8.0, cpu=4.0, memory=16.0, storage=10.0)

EXAMPLES: dict[str, m.Message] = {
    "advertisement": m.Advertisement(
        "7f1c0a52-0000-4000-8000-000000000001",
        PEER,
        "tcp://10.0.0.5:7100",
        RES,
        (TRAIN,),
        160.0,
        1_764_000_005.0,
    ),
    "worker_offer": m.WorkerOffer(
        LEASE,
        "7f1c0a52-0000-4000-8000-000000000001",
        160.0,
        RES,
        1_764_000_000.7,
        "tcp://10.0.0.9:7200",
    ),
    "offer_ack": m.OfferAck(LEASE),
    "renew_lease": m.RenewLease(LEASE),
    "lease_renewed": m.LeaseRenewed(LEASE, 1_764_000_010.25),
    "renew_failed": m.RenewFailed(LEASE, "not_owner"),
    "dispatch_job": m.DispatchJob(JOB, LEASE, TRAIN, '{"job_id":"demo"}'),
    "job_dispatched": m.JobDispatched(JOB, LEASE, 1_764_000_010.25),
    "dispatch_failed": m.DispatchFailed(JOB, "lease_not_accepted"),
    "job_status": m.JobStatus(JOB, "failed", -9, "lease_expired"),
    "status_ack": m.StatusAck(JOB),
    "progress_status": m.Progress(JOB, m.BatchStatus(32)),
    "progress_metrics": m.Progress(JOB, m.RoundMetrics(3, {"loss": 2.5})),
    "progress_update": m.Progress(JOB, m.UpdateStarted()),
    "progress_updated": m.Progress(JOB, m.UpdateApplied()),
    "progress_update_received": m.Progress(JOB, m.UpdateReceived()),
    "progress_reply": m.ProgressReply("schedule_update", 5),
    "data_slice_request": m.DataSliceRequest("tiny-shakespeare"),
    "data_slice_answer": m.DataSliceAnswer(
        "tiny-shakespeare", "found", PEER, "tcp://10.0.0.7:7300", 4
    ),
    "data_slice_answer_granted": m.DataSliceAnswer(
        "tiny-shakespeare",
        "found",
        PEER,
        "tcp://10.0.0.7:7300",
        4,
        grant=b"\x01\x02",
        manifest_hash="sha256:" + "ab" * 32,
        alternates=(PEER,),
    ),
    "slice_grant": m.SliceGrant(
        "tiny-shakespeare", 4, "sha256:" + "ab" * 32, PEER, 1_764_000_600.0
    ),
    "slice_done": m.SliceDoneReport(JOB, "tiny-shakespeare", 4),
    "slice_fetch": m.SliceFetch(b"\x01\x02", "t-4", "tcp://10.0.0.9:7201"),
    "slice_served": m.SliceServed("t-4", 1024, "00" * 32),
    "manifest_fetch": m.SliceFetch(b"\x01\x02", "t-5", "tcp://10.0.0.9:7201", manifest=True),
    "dataset_record_v2": m.DatasetRecord(
        "tiny-shakespeare", PEER, 1_764_000_600.0, 7, "sha256:" + "ab" * 32
    ),
    "health": m.Health(),
    "health_reply": m.HealthReply(True),
    "peer_record": m.PeerRecord(PEER, ("tcp://10.0.0.9:7200",), 1_764_000_600.0),
    "dataset_record": m.DatasetRecord("tiny-shakespeare", PEER, 1_764_000_600.0),
    "lookup": m.Lookup(peer=PEER),
    "lookup_reply": m.LookupReply((b"\x01\x02",)),
    "gateway_info": m.GatewayInfo(),
    "gateway_info_reply": m.GatewayInfoReply("tcp://10.0.0.2:7001", "tcp://10.0.0.2:7002"),
    "ack": m.Ack(),
    "refused": m.Refused("bad_signature"),
    "session_open": m.SessionOpen(bytes(range(32)), PEER),
    "session_accept": m.SessionAccept(
        bytes(range(32, 64)), bytes(range(16)), MSG_ID, PEER, 600.0, 1 << 20
    ),
    "transfer_offer": m.TransferOffer("t-1", "update.safetensors", 1024, "", "update", "00" * 32),
    "transfer_answer": m.TransferAnswer("t-1", True, "", "tcp://10.0.0.9:7201"),
    "transfer_offer_trailer": m.TransferOffer(
        "t-2", "update.safetensors", 1024, "", "update", "", "blake3"
    ),
    "transfer_trailer": m.TransferTrailer("t-2", "00" * 32),
}


def render() -> bytes:
    """The vectors file's bytes."""
    identity = Identity.from_seed(SEED)
    out = {
        "format": "hypha-sm wire v1 golden vectors: payload = msgpack(message); see specs/protocol.md",
        "messages": {
            name: {"json": msgspec.to_builtins(msg), "msgpack_hex": encode_payload(msg).hex()}
            for name, msg in EXAMPLES.items()
        },
        "envelope": {
            "key_seed_hex": SEED.hex(),
            "peer_id": str(identity.peer_id),
            "wall": TS,
            "msg_id_hex": MSG_ID.hex(),
            "message": "renew_lease",
            "envelope_hex": seal(identity, EXAMPLES["renew_lease"], TS, MSG_ID).hex(),
        },
    }
    # Insertion order is the reading order: format, messages, envelope.
    return (json.dumps(out, indent=1) + "\n").encode()


def write_vectors(data: bytes, default: str) -> int:
    """Write a vectors file to the path on the command line, or ``default``; exit code 0."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(default)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    print(f"wrote {path}")
    return 0


def main() -> int:
    """Write specs/vectors/wire-v1.json (or the path given)."""
    return write_vectors(render(), "specs/vectors/wire-v1.json")


if __name__ == "__main__":
    raise SystemExit(main())
