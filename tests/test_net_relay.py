"""Relay frames carry the author's envelope untouched; subscribers count what was dropped."""

from __future__ import annotations

import pytest

from hypha_sm.net.relay import GapCounter, frame, unframe
from hypha_sm.wire.messages import TOPIC_WORKER


def test_a_frame_round_trips_and_keeps_the_envelope_bytes() -> None:
    """The gateway adds a topic and a number; the envelope is relayed byte for byte."""
    data = frame(42, b"envelope-bytes")
    assert data.startswith(TOPIC_WORKER)
    assert unframe(data) == (42, b"envelope-bytes")


@pytest.mark.parametrize(
    "data", [b"", b"hypha/worker", TOPIC_WORKER + b"\x00" * 3, b"other/topic\x00" + bytes(20)]
)
def test_non_frames_are_recognised(data: bytes) -> None:
    """Short or foreign data is not a frame (the subscriber counts it as malformed)."""
    assert unframe(data) is None


@pytest.mark.parametrize(
    ("seqs", "dropped", "restarts"),
    [
        ([1, 2, 3], 0, 0),
        ([1, 2, 5], 2, 0),
        ([3, 4], 0, 0),  # joined late: frames 1 and 2 were sent before we subscribed
        ([1, 2, 3, 1, 2], 0, 1),  # the gateway restarted
        ([1, 4, 2, 7], 2 + 4, 1),
    ],
)
def test_gaps_in_the_sequence_are_counted_as_drops(
    seqs: list[int], dropped: int, restarts: int
) -> None:
    """Every missing number is one dropped advertisement; a reset is a gateway restart."""
    counter = GapCounter()
    for seq in seqs:
        counter.see(seq)
    assert (counter.dropped, counter.restarts, counter.received) == (dropped, restarts, len(seqs))
