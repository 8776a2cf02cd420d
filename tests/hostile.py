"""Hostile inputs the fuzz tests share: structures nested and widened on purpose.

Random bytes almost never nest: in 20,000 examples of ``st.binary`` no more than 5 container
headers ever followed each other. These strategies build the shapes an attacker sends by hand:
towers of arrays and maps thousands of levels deep, wide containers at every level, and
containers that declare more items than follow, in MessagePack, JSON and TOML.
"""

from __future__ import annotations

from typing import Final

import msgspec
from hypothesis import strategies as st

#: The frame of the crash report: about 1.6 KB of msgpack nested about 1,000 deep.
CRASH_DEPTH: Final = 1000

_OPENERS: Final = (
    b"\x91",  # fixarray of 1
    b"\x81\xa1k",  # fixmap of 1, key "k"
    b"\xdc\x00\x01",  # array16 of 1
    b"\xdf\x00\x00\x00\x01\xc0",  # map32 of 1, key nil
    b"\x92\x01",  # fixarray of 2, one int before the nested one
)


def msgpack_tower(depth: int, openers: bytes = b"\x91", leaf: bytes = b"\xc0") -> bytes:
    """One object nested ``depth`` levels deep: ``openers`` repeated, then ``leaf``."""
    return openers * depth + leaf


@st.composite
def deep_msgpack(draw: st.DrawFn, min_depth: int = 17, max_depth: int = 10_000) -> bytes:
    """A msgpack object nested deeper than any message: a tower of mixed containers, maybe
    wide at the top, maybe cut short (the decoder recurses before it finds the end)."""
    depth = draw(st.integers(min_depth, max_depth))
    pattern = draw(st.lists(st.sampled_from(_OPENERS), min_size=1, max_size=4))
    body = b"".join(pattern[i % len(pattern)] for i in range(depth)) + b"\xc0"
    if draw(st.booleans()):
        body = body[: draw(st.integers(depth // 2, len(body)))]
    width = draw(st.integers(0, 3))
    if width:  # a wide array whose first items are plain, the last the tower
        body = bytes([0x90 | (width + 1)]) + b"\x01" * width + body
    return body


def wide_msgpack() -> st.SearchStrategy[bytes]:
    """Containers with many items (or claiming many and holding few)."""
    return st.one_of(
        st.integers(1, 70_000).map(lambda n: b"\xdd" + n.to_bytes(4, "big") + b"\x01" * n),
        st.integers(1 << 16, 1 << 31).map(lambda n: b"\xdf" + n.to_bytes(4, "big")),
        st.integers(1, 5000).map(lambda n: b"\xdc" + (n).to_bytes(2, "big") + b"\x90" * n),
    )


def nested_values(max_leaves: int = 60) -> st.SearchStrategy[object]:
    """Plain recursive values (lists, maps, scalars) of moderate depth and width."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=8)
        | st.binary(max_size=8)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=max_leaves,
    )


def hostile_msgpack() -> st.SearchStrategy[bytes]:
    """Deep towers, wide containers, or recursive values encoded honestly."""
    return st.one_of(
        deep_msgpack(),
        wide_msgpack(),
        nested_values().map(msgspec.msgpack.encode),
    )


@st.composite
def deep_json(draw: st.DrawFn, min_depth: int = 65, max_depth: int = 20_000) -> bytes:
    """A JSON text nested deeper than any document we take; brackets hidden in strings too."""
    depth = draw(st.integers(min_depth, max_depth))
    kind = draw(st.sampled_from(["array", "object", "mixed", "unclosed"]))
    decoy = b'"[[[{{{\\"]]]", ' if draw(st.booleans()) else b""
    if kind == "array":
        return b"[" * depth + decoy + b"1" + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "mixed":
        return b'[{"a":' * (depth // 2) + b"[]" + b"}]" * (depth // 2)
    return b"[" * depth


@st.composite
def deep_toml(draw: st.DrawFn, min_depth: int = 65, max_depth: int = 10_000) -> str:
    """A TOML document whose value nests inline arrays or tables very deep."""
    depth = draw(st.integers(min_depth, max_depth))
    if draw(st.booleans()):
        return "x = " + "[" * depth + "1" + "]" * depth + "\n"
    return "x = " + "{a = " * depth + "1" + "}" * depth + "\n"
