"""Resource amounts: one set of dimensions in every layer's type, converted in one place; exact
micro-units, arithmetic, and the evaluator's score."""

from __future__ import annotations

import math

import msgspec
import pytest

from hypha_sm.config.scheduler import JobResources
from hypha_sm.config.worker import ResourceSettings
from hypha_sm.core.resources import (
    MAX_AMOUNT,
    MICRO,
    NAMES,
    ZERO,
    Amounts,
    Resources,
    Weights,
    convert,
    covers,
    score,
    to_resources,
)
from hypha_sm.wire import messages

DEFAULT = Weights()
ODD = Weights(gpu=2.0, cpu=3.0, memory=5.0, storage=7.0)

SCORE_CASES = [
    ("cpu only", 10.0, Amounts(cpu=2), DEFAULT, 5.0),
    ("gpu only", 100.0, Amounts(gpu=1), DEFAULT, 4.0),
    ("memory only", 10.0, Amounts(memory=10), DEFAULT, 10.0),
    ("storage only", 10.0, Amounts(storage=100), DEFAULT, 10.0),
    (
        "every dimension, its own weight",
        728.0,
        Amounts(gpu=1, cpu=2, memory=4, storage=100),
        ODD,
        1.0,
    ),
    ("nothing requested", 10.0, Amounts(), DEFAULT, 0.0),
    ("every weight zero", 10.0, Amounts(cpu=1), Weights(0, 0, 0, 0), 0.0),
    ("free", 0.0, Amounts(cpu=1), DEFAULT, 0.0),
]


@pytest.mark.parametrize(
    ("case", "price", "amounts", "weights", "expected"),
    SCORE_CASES,
    ids=[c[0] for c in SCORE_CASES],
)
def test_the_score_is_the_price_per_weighted_unit(
    case: str, price: float, amounts: Amounts, weights: Weights, expected: float
) -> None:
    """score = price / (gpu·w_gpu + cpu·w_cpu + memory·w_memory + storage·w_storage) in whole
    units; 0 when nothing weighs anything (never a division by zero)."""
    resources = to_resources(amounts)
    assert resources is not None
    assert score(price, resources, weights) == pytest.approx(expected, rel=1e-12), case


def test_weights_default_to_the_originals_gpu_heavy_evaluator() -> None:
    """A GPU weighs 25 CPUs; a GiB of memory a tenth of a CPU; a GB of storage a hundredth."""
    assert (DEFAULT.gpu, DEFAULT.cpu, DEFAULT.memory, DEFAULT.storage) == (25.0, 1.0, 0.1, 0.01)


CONVERSION_CASES = [
    (
        "whole units",
        Amounts(gpu=1, cpu=2, memory=3, storage=4),
        (MICRO, 2 * MICRO, 3 * MICRO, 4 * MICRO),
    ),
    ("a fraction rounds up to the next micro-unit", Amounts(cpu=0.0000001), (0, 1, 0, 0)),
    ("zero", Amounts(), (0, 0, 0, 0)),
    ("the largest amount", Amounts(memory=MAX_AMOUNT), (0, 0, math.ceil(MAX_AMOUNT * MICRO), 0)),
    ("negative", Amounts(cpu=-1), None),
    ("past the largest", Amounts(storage=MAX_AMOUNT * 2), None),
    ("not a number", Amounts(gpu=math.nan), None),
    ("infinite", Amounts(memory=math.inf), None),
]


@pytest.mark.parametrize(
    ("case", "amounts", "expected"), CONVERSION_CASES, ids=[c[0] for c in CONVERSION_CASES]
)
def test_amounts_become_exact_micro_units_or_are_refused(
    case: str, amounts: Amounts, expected: tuple[int, int, int, int] | None
) -> None:
    """Each dimension is rounded up to whole micro-units; a negative, NaN, infinite or absurd
    amount in any dimension refuses the whole request."""
    converted = to_resources(amounts)
    assert (None if converted is None else tuple(converted)) == expected, case


def test_micro_units_go_back_to_the_amounts_they_came_from() -> None:
    """Whole and fractional amounts survive the round trip to micro-units exactly."""
    amounts = Amounts(gpu=1, cpu=2.5, memory=0.25, storage=1000)
    resources = to_resources(amounts)
    assert resources is not None
    assert resources.to_amounts() == amounts
    assert ZERO.to_amounts() == Amounts()


A = Resources(gpu=1, cpu=20, memory=300, storage=4000)
B = Resources(gpu=5, cpu=6, memory=7, storage=8)


def test_vectors_add_and_subtract_dimension_by_dimension() -> None:
    """plus and minus act on each dimension alone; minus may go negative (callers check)."""
    assert A.plus(B) == Resources(6, 26, 307, 4008)
    assert A.minus(B) == Resources(-4, 14, 293, 3992)
    assert A.minus(A).is_zero()


@pytest.mark.parametrize("dimension", range(4))
def test_one_dimension_over_makes_a_vector_not_fit(dimension: int) -> None:
    """fits_within is the product order: equal fits; one unit more in any single dimension, or
    one request bigger in one dimension and smaller in another, does not."""
    assert A.fits_within(A)
    bigger = list(A)
    bigger[dimension] += 1
    assert not Resources(*bigger).fits_within(A)
    assert A.fits_within(Resources(*bigger))


@pytest.mark.parametrize("dimension", range(4))
def test_any_single_nonzero_dimension_makes_a_vector_nonzero(dimension: int) -> None:
    """is_zero is true only when every dimension is zero."""
    assert ZERO.is_zero()
    one = [0, 0, 0, 0]
    one[dimension] = 1
    assert not Resources(*one).is_zero()


RESOURCE_TYPES = [
    ("core Amounts", Amounts),
    ("core Resources (micro-units)", Resources),
    ("wire messages.Resources", messages.Resources),
    ("worker config ResourceSettings", ResourceSettings),
    ("scheduler config JobResources", JobResources),
]


def _fields(cls: type) -> set[str]:
    if hasattr(cls, "model_fields"):
        return set(cls.model_fields)
    if hasattr(cls, "__struct_fields__"):
        return set(cls.__struct_fields__)
    return set(cls._fields)


@pytest.mark.parametrize(("what", "cls"), RESOURCE_TYPES, ids=[w for w, _ in RESOURCE_TYPES])
def test_every_resource_type_has_the_same_dimensions(what: str, cls: type) -> None:
    """A dimension added to one type and not the others fails here, not in a market."""
    assert _fields(cls) == set(NAMES), what


def test_convert_carries_every_dimension_between_types_and_covers_compares_them() -> None:
    wire = messages.Resources(gpu=1.0, cpu=2.0, memory=3.0, storage=4.0)
    amounts = convert(wire, Amounts)
    assert amounts == Amounts(gpu=1.0, cpu=2.0, memory=3.0, storage=4.0)
    assert convert(amounts, messages.Resources) == wire
    assert convert(JobResources(cpu=2.0, memory=3.0, storage=4.0, gpu=1.0), Amounts) == amounts
    assert covers(wire, amounts)
    for name in NAMES:
        short = convert(wire, Amounts)
        lacking = msgspec.structs.replace(short, **{name: getattr(short, name) - 0.5})
        assert not covers(lacking, wire), name
        assert not covers(msgspec.structs.replace(short, **{name: math.nan}), wire), name
