"""The four-dimensional resource vector, kept in exact integer micro-units.

Amounts arrive as floats (from the config and from advertisements). The ledger adds and subtracts
them on every reserve and release; with floats that drifts, and a drifted ledger either double
books or strands capacity. So the core converts once, rounding requests *up* to the next
micro-unit (never under-reserving), and does exact integer arithmetic from then on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol, TypeVar

import msgspec

MICRO = 1_000_000
#: Largest amount accepted in any dimension, in units (cores or GB). Anything larger is absurd.
MAX_AMOUNT = 1e9


class Amounts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Resource amounts as written by people and peers: cpu in cores; gpu, memory, storage in GB."""

    gpu: float = 0.0
    cpu: float = 0.0
    memory: float = 0.0
    storage: float = 0.0


#: The dimensions, in the order every resource type declares them.
NAMES = ("gpu", "cpu", "memory", "storage")

T = TypeVar("T")


class HasAmounts(Protocol):
    """Any of the resource types: the config's, the wire's, the core's ``Amounts``."""

    @property
    def gpu(self) -> float: ...

    @property
    def cpu(self) -> float: ...

    @property
    def memory(self) -> float: ...

    @property
    def storage(self) -> float: ...


def convert(source: HasAmounts, to: Callable[..., T]) -> T:
    """The same amounts as another resource type (``Amounts``, ``messages.Resources``, ...).

    The one place amounts cross from one layer's type to another's, so a dimension added to
    the types is carried everywhere or fails loudly here (a missing keyword or attribute).
    """
    return to(**{name: getattr(source, name) for name in NAMES})


def covers(got: HasAmounts, asked: HasAmounts) -> bool:
    """Every dimension of ``got`` is finite and at least ``asked``'s."""
    return all(
        math.isfinite(getattr(got, name)) and getattr(got, name) >= getattr(asked, name)
        for name in NAMES
    )


class Resources(NamedTuple):
    """Exact resource vector in micro-units (1e-6 of a core or GB). Order: gpu, cpu, memory, storage."""

    gpu: int
    cpu: int
    memory: int
    storage: int

    def fits_within(self, other: Resources) -> bool:
        """True when every dimension is <= the other's (the product order; incomparable is False)."""
        return (
            self.gpu <= other.gpu
            and self.cpu <= other.cpu
            and self.memory <= other.memory
            and self.storage <= other.storage
        )

    def plus(self, other: Resources) -> Resources:
        """Component-wise sum."""
        return Resources(
            self.gpu + other.gpu,
            self.cpu + other.cpu,
            self.memory + other.memory,
            self.storage + other.storage,
        )

    def minus(self, other: Resources) -> Resources:
        """Component-wise difference (may go negative; callers check)."""
        return Resources(
            self.gpu - other.gpu,
            self.cpu - other.cpu,
            self.memory - other.memory,
            self.storage - other.storage,
        )

    def is_zero(self) -> bool:
        """True when nothing is requested in any dimension."""
        return not (self.gpu or self.cpu or self.memory or self.storage)

    def to_amounts(self) -> Amounts:
        """Back to float units, for the wire and for people."""
        return Amounts(
            gpu=self.gpu / MICRO,
            cpu=self.cpu / MICRO,
            memory=self.memory / MICRO,
            storage=self.storage / MICRO,
        )


ZERO = Resources(0, 0, 0, 0)


def to_resources(amounts: Amounts) -> Resources | None:
    """Convert float amounts to exact micro-units; None if any amount is negative, NaN, infinite or absurd."""
    out = []
    for value in (amounts.gpu, amounts.cpu, amounts.memory, amounts.storage):
        # `not (0 <= v <= MAX)` is also True for NaN, which compares false with everything.
        if not (0.0 <= value <= MAX_AMOUNT):
            return None
        out.append(math.ceil(value * MICRO))
    return Resources(*out)


class Weights(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Weights of the weighted evaluator: price per weighted unit is the score."""

    gpu: float = 25.0
    cpu: float = 1.0
    memory: float = 0.1
    storage: float = 0.01


def score(price: float, resources: Resources, weights: Weights) -> float:
    """Price per weighted resource unit; 0.0 when the weighted size is zero. Higher is better."""
    weighted = (
        weights.gpu * resources.gpu
        + weights.cpu * resources.cpu
        + weights.memory * resources.memory
        + weights.storage * resources.storage
    ) / MICRO
    return price / weighted if weighted > 0 else 0.0
