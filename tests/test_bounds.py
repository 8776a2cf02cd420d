"""The shape checks agree with the values they guard, for every kind of msgpack and JSON.

Differential tests: a value is generated, encoded by msgspec (or ``json``), and the scanner must
find exactly its depth and its number of objects: within limits equal to them it passes, one
level or one object less and it refuses with the right reason, and every proper prefix of the
encoding is ``truncated``. Hand-made encodings cover what msgspec never writes (float32, uint
and int of every width, str8/bin8 sizes, every ext form).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypha_sm.wire.bounds import json_problem, msgpack_problem, toml_problem

BIG = 10**9

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=40)),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=6), inner, max_size=8)
    ),
    max_leaves=80,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def objects(value: Any) -> int:
    """Every msgpack object the encoding holds: containers, keys and values."""
    if isinstance(value, list):
        return 1 + sum(objects(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(1 + objects(v) for v in value.values())
    return 1


@given(values)
@settings(max_examples=400)
def test_the_msgpack_scan_finds_the_exact_depth_and_object_count(value: Any) -> None:
    """Within limits equal to the value's own it passes; one less of either and it refuses."""
    data = msgspec.msgpack.encode(value)
    d, n = depth(value), objects(value)
    assert msgpack_problem(data, max_depth=d, max_items=n) is None
    if d > 0:
        assert msgpack_problem(data, max_depth=d - 1, max_items=BIG) == "too_deep"
    assert msgpack_problem(data, max_depth=BIG, max_items=n - 1) == "too_many_items"


@given(values, st.data())
@settings(max_examples=200)
def test_every_proper_prefix_of_an_encoding_is_truncated(value: Any, data: st.DataObject) -> None:
    """Cut anywhere before the end, an encoding is refused as truncated (never passed)."""
    encoded = msgspec.msgpack.encode(value)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    assert msgpack_problem(encoded[:cut], max_depth=BIG, max_items=BIG) == "truncated"


def _u(n: int, width: int) -> bytes:
    return n.to_bytes(width, "big")


HAND_MADE = {
    "float32": b"\xca" + bytes(4),
    "float64": b"\xcb" + bytes(8),
    "uint8": b"\xcc\xff",
    "uint16": b"\xcd" + _u(1, 2),
    "uint32": b"\xce" + _u(1, 4),
    "uint64": b"\xcf" + _u(1, 8),
    "int8": b"\xd0\x80",
    "int16": b"\xd1" + _u(1, 2),
    "int32": b"\xd2" + _u(1, 4),
    "int64": b"\xd3" + _u(1, 8),
    "fixext1": b"\xd4\x01" + bytes(1),
    "fixext2": b"\xd5\x01" + bytes(2),
    "fixext4": b"\xd6\x01" + bytes(4),
    "fixext8": b"\xd7\x01" + bytes(8),
    "fixext16": b"\xd8\x01" + bytes(16),
    "ext8": b"\xc7\x03\x01" + bytes(3),
    "ext16": b"\xc8" + _u(3, 2) + b"\x01" + bytes(3),
    "ext32": b"\xc9" + _u(3, 4) + b"\x01" + bytes(3),
    "str8": b"\xd9\x03abc",
    "str16": b"\xda" + _u(3, 2) + b"abc",
    "str32": b"\xdb" + _u(3, 4) + b"abc",
    "bin8": b"\xc4\x03abc",
    "bin16": b"\xc5" + _u(3, 2) + b"abc",
    "bin32": b"\xc6" + _u(3, 4) + b"abc",
    "fixstr": b"\xa3abc",
    "nil": b"\xc0",
    "false": b"\xc2",
    "true": b"\xc3",
    "negative fixint": b"\xff",
    # The edges of each first-byte range of the format:
    "negative fixint -32": b"\xe0",
    "positive fixint 127": b"\x7f",
    "fixstr of 31": b"\xbf" + b"x" * 31,
    "empty fixstr": b"\xa0",
}


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_every_scalar_form_is_read_whole_and_refused_when_cut(name: str) -> None:
    """Each form alone passes; each, as the last item of array16/array32/map16/map32, passes;
    cut by one byte it is truncated."""
    scalar = HAND_MADE[name]
    for container in (
        b"\x91",
        b"\xdc" + _u(1, 2),
        b"\xdd" + _u(1, 4),
        b"\x81\xc0",
        b"\xde" + _u(1, 2) + b"\xc0",
        b"\xdf" + _u(1, 4) + b"\xc0",
    ):
        data = container + scalar
        assert msgpack_problem(data) is None, name
        assert msgpack_problem(data, max_depth=0) == "too_deep"
        assert msgpack_problem(data[:-1]) == "truncated", name
    assert msgpack_problem(scalar) is None
    assert msgpack_problem(b"\xc1") == "invalid"


@pytest.mark.parametrize(
    ("data", "items"),
    [
        (b"\x8f" + b"\x00\x00" * 15, 31),  # fixmap of 15 entries, the largest
        (b"\x9f" + b"\x00" * 15, 16),  # fixarray of 15
        (b"\x80", 1),
        (b"\x90", 1),
    ],
)
def test_the_largest_and_smallest_fix_containers_are_counted_whole(
    data: bytes, items: int
) -> None:
    assert msgpack_problem(data) is None
    assert msgpack_problem(data, max_items=items - 1) == "too_many_items"
    assert msgpack_problem(data + b"\x00") is None  # trailing bytes are the decoder's
    if len(data) > 1:
        assert msgpack_problem(data[:-1]) == "truncated"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab[]{}"\\\n ,:'), max_size=12),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=60,
)


@given(json_values, st.booleans())
@settings(max_examples=400)
def test_the_json_scan_finds_the_exact_depth_whatever_the_strings_hold(
    value: Any, pretty: bool
) -> None:
    """Brackets, quotes and backslashes inside strings never count; the depth is exact."""
    text = json.dumps(value, indent=1 if pretty else None).encode()
    d = depth(value)
    assert json_problem(text, max_depth=d) is None
    if d > 0:
        assert json_problem(text, max_depth=d - 1) == "too_deep"


TOML_CASES = [
    ("flat within the limit", "a = [[1]]\n", 2, None),
    ("one level too deep", "a = [[[1]]]\n", 2, "too_deep"),
    ("inline tables count", "a = {b = {c = [1]}}\n", 2, "too_deep"),
    ("headers do not nest", "[a]\n[[b]]\n[c.d]\nx = [[1]]\n", 2, None),
    ("brackets in strings and comments", "a = \"[[[[\"\nb = '{{{{'\n# [[[[\nc = [[1]]\n", 2, None),
    # Text read with errors="surrogateescape" keeps undecodable bytes as lone surrogates.
    ("a lone surrogate outside strings", "\udcff = [[[1]]]\n", 2, "too_deep"),
    ("a lone surrogate within the limit", "\udcff = [[1]]\n", 2, None),
]


@pytest.mark.parametrize(
    ("case", "text", "max_depth", "expected"), TOML_CASES, ids=[c[0] for c in TOML_CASES]
)
def test_toml_nesting_is_measured_past_strings_comments_and_headers(
    case: str, text: str, max_depth: int, expected: str | None
) -> None:
    """Inline arrays and tables count toward the depth; table headers, strings and comments do
    not; the limit given is the one applied; undecodable text is measured, never raised on."""
    assert toml_problem(text, max_depth=max_depth) == expected, case


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('["\ud800"]', None),  # a lone surrogate, as json.loads may produce and a str may hold
        ("[" * 65 + "\udfff" + "]" * 65, "too_deep"),
        ('{"k": "\udbff\udfff"}', None),
    ],
)
def test_a_text_with_lone_surrogates_is_measured_not_refused_by_the_encoder(
    text: str, expected: str | None
) -> None:
    """Remote JSON decoded to ``str`` can hold lone surrogates; measuring it never raises."""
    assert json_problem(text) == expected
    assert toml_problem(text) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"\xdc\x00",
        b"\xdd\x00\x00\x00",
        b"\xde\x00",
        b"\xdf\x00",
        b"\xd9",
        b"\xc5\x00",
        b"\xc9\x00",
    ],
)
def test_a_length_field_cut_short_is_truncated(data: bytes) -> None:
    """The bytes that say how long a container or string is, themselves cut."""
    assert msgpack_problem(data) == "truncated"
