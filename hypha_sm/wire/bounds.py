"""Shape limits checked on remote bytes *before* they are decoded.

Decoders recurse once per level of nesting (msgspec, ``json``, ``tomllib``). On Python < 3.14
the only guard is the interpreter's recursion limit, which raises ``RecursionError`` (an
exception nothing expects from a decoder) or, on a thread with a small stack, overflows the C
stack. So every decoder of bytes a stranger chose first asks this module whether the bytes nest
deeper, or hold more items, than any message we accept could. The scans are iterative, stop at
the first excess, and never allocate per item: cheap on honest input, bounded on hostile input.

``msgpack_problem`` walks MessagePack headers (strings and binaries are skipped by length).
``json_problem`` removes string literals with one regular expression, maps every bracket to
``[``/``]`` and peels innermost pairs until none is left; both steps run in C, and at most
``max_depth`` peels are made.
"""

from __future__ import annotations

import re
from typing import Final

#: The deepest nesting a network message may have. Our deepest message nests 3 levels
#: (progress -> metrics -> map); the margin leaves room for new optional fields.
MAX_DEPTH: Final = 16
#: The most msgpack objects (containers, keys and values) in one message.
MAX_ITEMS: Final = 8192
#: The deepest nesting a JSON document from a job (bridge bodies) or a log line may have.
MAX_JSON_DEPTH: Final = 64

# Per first byte, how to read a msgpack object: what it is and how many bytes follow.
_SCALAR, _SIZED, _ARRAY, _MAP, _INVALID = range(5)


def _table() -> tuple[tuple[int, int, int], ...]:
    """(kind, fixed bytes after the type byte, size of the length field) for every byte."""
    rows: list[tuple[int, int, int]] = []
    for b in range(256):
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            rows.append((_SCALAR, 0, 0))  # fixints, nil, booleans
        elif 0x80 <= b <= 0x8F:
            rows.append((_MAP, 0, 0))
        elif 0x90 <= b <= 0x9F:
            rows.append((_ARRAY, 0, 0))
        elif 0xA0 <= b <= 0xBF:
            rows.append((_SIZED, b & 0x1F, 0))  # fixstr: the length is in the byte
        elif b in (0xC4, 0xC5, 0xC6):
            rows.append((_SIZED, 0, 1 << (b - 0xC4)))  # bin 8/16/32
        elif b in (0xC7, 0xC8, 0xC9):
            rows.append((_SIZED, 1, 1 << (b - 0xC7)))  # ext 8/16/32: + the type byte
        elif b == 0xCA:
            rows.append((_SCALAR, 4, 0))
        elif b == 0xCB:
            rows.append((_SCALAR, 8, 0))
        elif 0xCC <= b <= 0xCF:
            rows.append((_SCALAR, 1 << (b - 0xCC), 0))  # uint 8..64
        elif 0xD0 <= b <= 0xD3:
            rows.append((_SCALAR, 1 << (b - 0xD0), 0))  # int 8..64
        elif 0xD4 <= b <= 0xD8:
            rows.append((_SCALAR, 1 + (1 << (b - 0xD4)), 0))  # fixext 1..16: + the type byte
        elif b in (0xD9, 0xDA, 0xDB):
            rows.append((_SIZED, 0, 1 << (b - 0xD9)))  # str 8/16/32
        elif b in (0xDC, 0xDD):
            rows.append((_ARRAY, 0, 2 if b == 0xDC else 4))
        elif b in (0xDE, 0xDF):
            rows.append((_MAP, 0, 2 if b == 0xDE else 4))
        else:
            rows.append((_INVALID, 0, 0))  # 0xc1 is never used
    return tuple(rows)


_MSGPACK = _table()


def msgpack_problem(
    data: bytes | memoryview, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS
) -> str | None:
    """Why msgpack ``data`` must not be decoded, or None when it is within the limits.

    The reasons: ``too_deep``, ``too_many_items``, ``truncated``, ``invalid``. Only the first
    object is walked: trailing bytes are the decoder's to refuse.
    """
    table = _MSGPACK
    size = len(data)
    pos = 0
    items = 0
    stack: list[int] = []  # objects still to read in each open container
    remaining = 1
    while True:
        if not remaining:
            if not stack:
                return None
            remaining = stack.pop()
            continue
        if pos >= size:
            return "truncated"
        first = data[pos]
        pos += 1
        remaining -= 1
        items += 1
        if items > max_items:
            return "too_many_items"
        kind, fixed, length_bytes = table[first]
        if kind == _SCALAR:
            pos += fixed
            if pos > size:
                return "truncated"
            continue
        if kind == _INVALID:
            return "invalid"
        if length_bytes:
            if pos + length_bytes > size:
                return "truncated"
            count = int.from_bytes(data[pos : pos + length_bytes], "big")
            pos += length_bytes
        else:
            count = first & 0x0F if kind != _SIZED else 0
        if kind == _SIZED:
            pos += fixed + count
            if pos > size:
                return "truncated"
            continue
        if kind == _MAP:
            count *= 2
        if count:
            if len(stack) + 1 > max_depth:
                return "too_deep"
            if count > max_items:  # cannot fit; saves walking a huge declared container
                return "too_many_items"
            stack.append(remaining)
            remaining = count
        elif len(stack) + 1 > max_depth:
            return "too_deep"


# A JSON string literal (escapes included); what is left after removing them is structure.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_problem(data: bytes | bytearray | str, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """``too_deep`` when a JSON text nests arrays/objects deeper than ``max_depth``, else None.

    Unbalanced brackets (outside strings) count as deep: such a text is invalid JSON anyway,
    and a decoder recurses into every opener before it notices the missing closers.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if b"[" not in raw and b"{" not in raw:
        return None
    skeleton = _JSON_STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(max_depth):
        if not skeleton:
            return None
        peeled = skeleton.replace(b"[]", b"")
        if len(peeled) == len(skeleton):
            return "too_deep"  # unbalanced: treat as hostile
        skeleton = peeled
    return None if not skeleton else "too_deep"


def toml_problem(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """``too_deep`` when inline arrays or tables in a TOML text nest deeper than ``max_depth``.

    TOML strings are removed roughly (basic and literal, single- and multi-line); a bracket
    left in a string can only make the count larger, never let a deep document through.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return None
    stripped = _TOML_STRING.sub("", text)
    # Table headers ([a] and [[a]]) sit at the start of a line; they do not nest.
    stripped = _TOML_HEADER.sub("", stripped)
    return json_problem(stripped.encode("utf-8", "surrogatepass"), max_depth=max_depth)


_TOML_STRING = re.compile(
    r'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*',
    re.DOTALL,
)
_TOML_HEADER = re.compile(r"^[ \t]*\[\[?[^\[\]\n]*\]\]?", re.MULTILINE)
