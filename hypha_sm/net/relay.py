"""Relay frames: how a gateway fans advertisements out, and how a worker counts losses.

NNG pub/sub drops messages silently when a subscriber falls behind. So a gateway numbers every
frame it publishes (per gateway, from 1) and subscribers count the gaps: overload is dropped
and counted, never silent. The envelope inside is the scheduler's own, relayed byte for byte,
so the gateway cannot forge or alter an advertisement, only drop or delay it.

Frame: ``TOPIC_WORKER`` ‖ sequence (u64, big-endian) ‖ envelope bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypha_sm.wire.messages import TOPIC_WORKER

_SEQ = 8
HEADER = len(TOPIC_WORKER) + _SEQ


def frame(seq: int, envelope: bytes) -> bytes:
    """A relay frame carrying ``envelope`` as number ``seq`` of this gateway."""
    return TOPIC_WORKER + seq.to_bytes(_SEQ, "big") + envelope


def unframe(data: bytes) -> tuple[int, bytes] | None:
    """(sequence, envelope), or None if this is not a relay frame."""
    if len(data) < HEADER or not data.startswith(TOPIC_WORKER):
        return None
    return int.from_bytes(data[len(TOPIC_WORKER) : HEADER], "big"), data[HEADER:]


@dataclass
class GapCounter:
    """Per-gateway loss accounting from relay sequence numbers."""

    last: int = 0
    received: int = 0
    dropped: int = 0
    restarts: int = 0

    def see(self, seq: int) -> int:
        """Record frame ``seq``; return how many frames were lost just before it."""
        self.received += 1
        if self.received == 1:
            # The first frame we see: whatever came before was sent before we subscribed.
            self.last = seq
            return 0
        if seq <= self.last:
            # The gateway restarted (its numbering began again): nothing to infer.
            self.restarts += 1
            self.last = seq
            return 0
        lost = seq - self.last - 1
        self.dropped += lost
        self.last = seq
        return lost
