"""A DiLoCo job's round bookkeeping: the original's ``ProgressTracker`` and ``WorkerTracker``.

Samples still due this round (``counter``), each training worker's batch size, the time of its
last status (ms since the round started) and its mean time per batch (``RunningMean``, over
the whole job, as the original keeps it: B11), and the digest of the global weights every
worker reported per round. Plain data; the training machine's actions change it.
"""

from __future__ import annotations

from hypha_sm.roles.scheduler.core.diloco import Projection, RunningMean, simulate
from hypha_sm.roles.scheduler.core.plan import DiLoCoPlan


class RoundTracker:
    """Where the job's rounds stand."""

    def __init__(self, plan: DiLoCoPlan) -> None:
        self.plan = plan
        #: The round in progress (1-based); rounds completed is ``round - 1``.
        self.round = 1
        self.counter = plan.samples_per_round
        #: When the round started (monotonic seconds); the first at dispatch.
        self.round_start = 0.0
        #: Training workers by lease id, in the job's order, and their parallel figures.
        self.peers: list[str] = []
        self.batch_sizes: list[int] = []
        self.last_update: list[int] = []
        self.stats: list[RunningMean] = []
        #: The global weights' digest per round (0: the initial weights), first reported.
        self.hashes: dict[int, str] = {}
        #: Training workers (lease ids) told Done: their jobs end, their leases go with them.
        self.told_done: set[str] = set()

    @property
    def finished(self) -> bool:
        """Every round was aggregated."""
        return self.round > self.plan.rounds

    def add(self, peer: str, batch_size: int) -> None:
        """A training worker joins."""
        self.peers.append(peer)
        self.batch_sizes.append(batch_size)
        self.last_update.append(0)
        self.stats.append(RunningMean())

    def remove(self, peer: str) -> None:
        """A training worker left: the projection goes on without it."""
        if peer in self.peers:
            i = self.peers.index(peer)
            for column in (self.peers, self.batch_sizes, self.last_update, self.stats):
                del column[i]

    def ms(self, mono: float) -> int:
        """Milliseconds since the round started."""
        return round((mono - self.round_start) * 1000)

    def update(self, peer: str, samples: int, now_ms: int) -> None:
        """A status: samples done, and the time since the worker's previous status."""
        self.counter = max(0, self.counter - samples)
        if peer in self.peers:
            i = self.peers.index(peer)
            self.stats[i].add(now_ms - self.last_update[i])
            self.last_update[i] = now_ms

    def project(self) -> Projection:
        """When the round's samples will be covered, and each worker's further batches."""
        return simulate(
            list(self.last_update),
            list(self.batch_sizes),
            [s.value for s in self.stats],
            self.counter,
            self.plan.time_cap_ms,
            self.plan.update_cap,
        )

    def project_after(self, peer: str, samples: int, now_ms: int) -> Projection:
        """The projection as it would be after this status (the tracker is not changed)."""
        saved = (
            self.counter,
            list(self.last_update),
            [RunningMean(s.value, s.count) for s in self.stats],
        )
        try:
            self.update(peer, samples, now_ms)
            return self.project()
        finally:
            self.counter, self.last_update, self.stats = saved

    def further_batches(self, peer: str, projection: Projection) -> int:
        """The projected further batches of ``peer``."""
        return projection.updates[self.peers.index(peer)] if peer in self.peers else 0

    def next_round(self, mono: float) -> None:
        """The parameter server published the round's update."""
        self.round += 1
        self.counter = self.plan.samples_per_round
        self.round_start = mono
        self.last_update = [0] * len(self.peers)
