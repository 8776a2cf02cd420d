"""Deterministic ids: a keyed hash of a counter, with the key (seed) chosen once by the shell.

Ids look like UUID v4 so that they are valid on the wire, but replaying the same inputs from the
same seed gives the same ids, which is what makes replay exact.
"""

from __future__ import annotations

import hashlib
import uuid


class IdGen:
    """Seeded id generator held in the worker state. Never repeats within one seed."""

    __slots__ = ("counter", "seed")

    def __init__(self, seed: bytes, counter: int = 0) -> None:
        if len(seed) != 16:
            raise ValueError("seed must be 16 bytes")
        self.seed = seed
        self.counter = counter

    def next_id(self) -> str:
        """The next id, as a lowercase hyphenated UUID string."""
        self.counter += 1
        digest = hashlib.blake2b(
            self.counter.to_bytes(8, "big"), key=self.seed, digest_size=16
        ).digest()
        return str(uuid.UUID(bytes=digest, version=4))
