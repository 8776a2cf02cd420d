"""The DiLoCo scheduler's arithmetic against the original's golden values (hypha-execution.md
§16.2, §16.3) and the projections behind its batch-scheduler trace (§16.5)."""

from __future__ import annotations

import pytest

from hypha_sm.roles.scheduler.core.diloco import U64_MAX, Projection, RunningMean, simulate


def test_golden_running_mean_in_integer_arithmetic() -> None:
    """1050, 1000, 1025, 2050 give 1050, 1025, 1025, 1281 (statistics.rs L50-69)."""
    mean = RunningMean()
    assert mean.value == U64_MAX  # no sample yet
    assert [mean.add(x) for x in (1050, 1000, 1025, 2050)] == [1050, 1025, 1025, 1281]


def test_a_falling_sample_truncates_toward_zero_like_rust() -> None:
    mean = RunningMean()
    mean.add(10)
    assert mean.add(7) == 9  # 10 + (-3 // 2 toward zero = -1), not 10 + floor(-1.5) = 8


@pytest.mark.parametrize(
    ("target", "time_cap", "steps_cap", "expected"),
    [
        (9999, 101, 999, Projection(100, 9999 - 67, (5, 3, 2), True)),
        (9999, 999, 3, Projection(60, 9999 - 41, (3, 2, 1), True)),
        (50, 999, 999, Projection(80, 0, (4, 2, 1), False)),
    ],
)
def test_golden_simulation(
    target: int, time_cap: int, steps_cap: int, expected: Projection
) -> None:
    """Batch sizes [10, 5, 1], stats [20, 30, 50], progress [0, 0, 0] (simulation.rs L71-135)."""
    assert simulate([0, 0, 0], [10, 5, 1], [20, 30, 50], target, time_cap, steps_cap) == expected


@pytest.mark.parametrize(
    ("progress", "stats", "left", "updates", "capped"),
    [
        # §16.5, two rounds, target 800; workers w1 150, w2 100, w3 50 (batch sizes).
        ([0, 0, 500], [U64_MAX, U64_MAX, 500], 750, (0, 0, 3), True),  # step 1: Continue
        ([950, 800, 1000], [950, 800, 500], 450, (1, 2, 2), False),  # step 4: w3 told 2
        ([950, 1600, 1500], [950, 800, 500], 300, (1, 1, 1), False),  # step 6: w2 told 1
        ([1900, 1600, 1500], [950, 800, 500], 150, (0, 1, 1), False),  # step 7: w1 told 0
    ],
)
def test_the_projections_behind_the_batch_scheduler_golden_trace(
    progress: list[int], stats: list[int], left: int, updates: tuple[int, ...], capped: bool
) -> None:
    """time_cap 10 s, steps_cap 3, as the original's handler calls it (L87-97)."""
    projection = simulate(progress, [150, 100, 50], stats, left, 10_000, 3)
    assert (projection.updates, projection.capped) == (updates, capped)
