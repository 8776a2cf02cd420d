"""The resource ledger's own guards: it refuses what would double book or release twice.

The machines never ask for these (the stateful tests prove it); the guards are what turns a
bug in an action into a loud ``InvariantViolation`` instead of a silently wrong ledger.
"""

from __future__ import annotations

import pytest

from hypha_sm.core.errors import InvariantViolation
from hypha_sm.core.resources import ZERO, Amounts, to_resources
from tests.helpers import Worker

ONE = to_resources(Amounts(cpu=1))


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ((("reserve", "a"), ("reserve", "a")), "already holds a reservation"),
        ((("reserve", "a"), ("release", "a"), ("release", "a")), "released twice"),
        ((("release", "never"),), "released twice or never reserved"),
        (tuple(("reserve", f"l{n}") for n in range(17)), "would double book"),
    ],
    ids=["reserve-twice", "release-twice", "release-unknown", "over-capacity"],
)
def test_the_ledger_raises_on_a_second_reservation_a_second_release_or_double_booking(
    script: tuple[tuple[str, str], ...], message: str
) -> None:
    """Capacity is 16 cores: each step reserves or releases one core for a lease id."""
    state = Worker().state
    assert ONE is not None
    *setup, (last_op, last_lease) = script
    for op, lease in setup:
        state.reserve(lease, ONE) if op == "reserve" else state.release(lease)
    with pytest.raises(InvariantViolation, match=message):
        state.reserve(last_lease, ONE) if last_op == "reserve" else state.release(last_lease)


def test_a_reservation_released_once_is_returned_exactly() -> None:
    """The good path the guards protect: reserve, release, and nothing is held."""
    state = Worker().state
    assert ONE is not None
    state.reserve("a", ONE)
    assert state.reservations == {"a": ONE}
    state.release("a")
    assert state.reservations == {}
    assert state.reserved == ZERO
