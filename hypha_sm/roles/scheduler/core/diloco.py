"""The DiLoCo scheduler's arithmetic: the original's ``RunningMean`` and ``BasicSimulation``.

Pure functions the per-worker round machine (Training -> UpdateScheduled -> Updating ->
Training | Done, hypha-execution.md §9.3) decides with; they reproduce the original's golden
values exactly (§16.2, §16.3), integer arithmetic and all:

- ``RunningMean``: the mean of every inter-status time since the job began, ``u64::MAX``
  until the first sample, then ``mean + (x - mean) / n`` with integer division that truncates
  toward zero (Rust's), so 1050, 1000, 1025, 2050 give 1050, 1025, 1025, 1281.
- ``simulate``: project, from each worker's last status time and mean time per batch, how many
  further batches each runs before the round's remaining data points are covered; stop
  ("capped") at ``time_cap`` ms after the round start or when a worker reaches ``steps_cap``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The original's "no sample yet" (u64::MAX).
U64_MAX = 2**64 - 1


def _saturating_add(a: int, b: int) -> int:
    return min(a + b, U64_MAX)


def _truncating_div(a: int, b: int) -> int:
    """Integer division toward zero, as Rust's ``/`` on signed integers."""
    quotient = abs(a) // b
    return quotient if a >= 0 else -quotient


@dataclass
class RunningMean:
    """The arithmetic mean of the samples so far, in the original's integer arithmetic."""

    value: int = U64_MAX
    count: int = 0

    def add(self, sample: int) -> int:
        """Take one sample (ms); the new mean."""
        self.count += 1
        if self.count == 1:
            self.value = sample
        else:
            self.value += _truncating_div(sample - self.value, self.count)
        return self.value


@dataclass(frozen=True)
class Projection:
    """When the remaining data points are covered, what is left, each worker's further batches."""

    time: int
    to_go: int
    updates: tuple[int, ...]
    capped: bool


def simulate(
    progress: list[int],
    batch_sizes: list[int],
    statistics: list[int],
    data_points_left: int,
    time_cap: int,
    steps_cap: int,
) -> Projection:
    """The original's ``BasicSimulation::project`` (simulation.rs L16-69).

    ``progress[i]`` is worker i's last status time (ms since the round start), ``statistics[i]``
    its mean ms per batch (``U64_MAX`` if it has not reported yet). Workers whose next status
    falls at the same earliest time all step together.
    """
    next_at = [_saturating_add(p, s) for p, s in zip(progress, statistics, strict=True)]
    updates = [0] * len(progress)
    to_go, time, capped = data_points_left, 0, False
    while to_go > 0:
        soonest = min(next_at)
        if soonest >= time_cap:
            capped = True
            break
        time = soonest
        for i, at in enumerate(next_at):
            if at == soonest:
                to_go = max(0, to_go - batch_sizes[i])
                updates[i] += 1
                next_at[i] = _saturating_add(at, statistics[i])
        if any(u >= steps_cap for u in updates):
            capped = True
            break
    return Projection(time, to_go, tuple(updates), capped)
