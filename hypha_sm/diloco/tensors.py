"""Safetensors files read and written one tensor at a time (bounded memory).

``safetensors.safe_open`` already reads one tensor at a time (memory-mapped). Writing needs the
whole header first; every shape and dtype is known before the first byte, so ``StreamWriter``
writes the header, then each tensor as it is computed, and never holds more than one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import blake3
import torch

from hypha_sm.wire.bounds import json_problem

#: The dtypes a pseudo-gradient or update may use on the wire.
WIRE_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
}
DTYPE_NAMES = {v: k for k, v in WIRE_DTYPES.items()}
#: Precision names a job may ask for, as torch dtypes.
PRECISIONS: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
#: The largest header this reads (the format allows 100 MB; a hostile file gets no more).
MAX_HEADER = 16 * 1024 * 1024
_ALIGN = 8


@dataclass(frozen=True)
class Layout:
    """What a file holds: each tensor's dtype and shape, in name order, and its metadata."""

    tensors: tuple[tuple[str, str, tuple[int, ...]], ...]
    metadata: Mapping[str, str]
    #: Where each tensor's bytes start in the file, in the order of ``tensors``.
    offsets: tuple[int, ...]

    @property
    def signature(self) -> str:
        """A digest of names, dtypes and shapes: files that can be averaged share it."""
        text = json.dumps([list(t) for t in self.tensors], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class LayoutError(ValueError):
    """A file is not a safetensors file this code accepts; ``str()`` says why."""


def read_layout(path: Path) -> Layout:
    """The header of a safetensors file, checked: known dtypes, offsets inside the file."""
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise LayoutError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > min(MAX_HEADER, size - 8):
            raise LayoutError(f"header of {length} bytes does not fit")
        raw_header = f.read(length)
        if json_problem(raw_header) is not None:
            raise LayoutError("header nested too deep")
        try:
            header = json.loads(raw_header)
        except (ValueError, RecursionError) as exc:
            raise LayoutError(f"header is not JSON: {str(exc)[:100]}") from None
    if not isinstance(header, dict):
        raise LayoutError("header is not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise LayoutError("metadata must map strings to strings")
    tensors = []
    spans: list[tuple[int, int]] = []
    body = size - 8 - length
    for name in sorted(header):
        info = header[name]
        if not isinstance(info, dict):
            raise LayoutError(f"{name!r}: not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in WIRE_DTYPES:
            raise LayoutError(f"{name!r}: dtype {dtype!r} is not F32, BF16 or F16")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise LayoutError(f"{name!r}: bad shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= body
        ):
            raise LayoutError(f"{name!r}: data offsets outside the file")
        count = 1
        for d in shape:
            count *= d
        if offsets[1] - offsets[0] != count * WIRE_DTYPES[dtype].itemsize:
            raise LayoutError(f"{name!r}: data size does not match its shape")
        tensors.append((name, dtype, tuple(shape)))
        spans.append((offsets[0], offsets[1]))
    # The data must be exactly the tensors, back to back (safetensors' own rule): a file that
    # overlaps or leaves gaps would pass here and fail later, in the middle of a round.
    position = 0
    for start, end in sorted(spans):
        if start != position:
            raise LayoutError("tensor data overlaps or leaves a gap")
        position = end
    if position != body:
        raise LayoutError("bytes after the last tensor")
    data_start = 8 + length
    return Layout(tuple(tensors), dict(metadata), tuple(data_start + a for a, _ in spans))


class TensorReader:
    """Reads a checked file's tensors into a caller's buffer with ``pread``: no memory map.

    A map's pages count in the process's memory (and its cgroup's) until it is closed; this
    holds nothing but the file descriptor.
    """

    def __init__(self, path: Path) -> None:
        self.layout = read_layout(path)
        self._where = {
            name: (offset, WIRE_DTYPES[dtype], shape)
            for (name, dtype, shape), offset in zip(
                self.layout.tensors, self.layout.offsets, strict=True
            )
        }
        self._fd = os.open(path, os.O_RDONLY)

    def read_into(self, name: str, scratch: torch.Tensor) -> torch.Tensor:
        """Tensor ``name``, flat, read into the front of ``scratch`` (a uint8 buffer)."""
        offset, dtype, shape = self._where[name]
        count = 1
        for d in shape:
            count *= d
        raw = scratch[: count * dtype.itemsize]
        view = raw.numpy().data  # a memoryview of the scratch buffer's bytes
        while view:
            n = os.preadv(self._fd, [view], offset)
            if n == 0:
                raise LayoutError(f"{name!r}: the file ended early")
            view, offset = view[n:], offset + n
        return raw.view(dtype)

    def close(self) -> None:
        os.close(self._fd)


TensorSpec = tuple[str, torch.dtype, tuple[int, ...]]


def encode_header(
    tensors: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None
) -> tuple[bytes, int]:
    """The safetensors header for ``tensors`` in this order, and the size of the whole file.

    The header includes its 8-byte length prefix.
    """
    header: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape in tensors:
        count = 1
        for d in shape:
            count *= d
        end = offset + count * dtype.itemsize
        header[name] = {
            "dtype": DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, end],
        }
        offset = end
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % _ALIGN)
    return struct.pack("<Q", len(raw)) + raw, 8 + len(raw) + offset


class StreamWriter:
    """Write a safetensors file whose layout is known, one tensor at a time, in layout order."""

    def __init__(
        self,
        path: Path,
        tensors: list[TensorSpec],
        metadata: Mapping[str, str] | None = None,
        *,
        digest: Literal["sha256", "blake3"] | None = "sha256",
        background: bool = False,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        """``digest``: hash the bytes written with it (``hexdigest()``), or not at all.

        ``background``: hash and write each tensor in a worker thread while the caller computes
        the next one (hashlib and file writes release the GIL). The caller must then leave a
        tensor unchanged until its next ``write`` or ``close`` returns.

        ``on_written``: called (from the writing thread) with the bytes in the file so far,
        once the header and each tensor is flushed to it, so a reader may follow the file.
        """
        header, self._size = encode_header(tensors, metadata)
        self._order = list(tensors)
        self._next = 0
        self._written = 0
        self._on_written = on_written
        # Over an existing file, not a fresh one: its pages are reused (a VM that hands freed
        # pages back to the host writes fresh ones at a fraction of the speed); truncated to size
        # at the end.
        self._path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "wb")
        # The digest of every byte written, ready when the file is (no second pass to send it).
        self._digest: Any = None
        if digest == "sha256":
            self._digest = hashlib.sha256()
        elif digest == "blake3":
            self._digest = blake3.blake3()
        self._pool = ThreadPoolExecutor(1, "stream-writer") if background else None
        self._pending: Future[None] | None = None
        self._put(header)

    @property
    def size(self) -> int:
        """The size of the complete file."""
        return self._size

    def _put(self, data: Any) -> None:
        if self._digest is not None:
            self._digest.update(data)
        self._file.write(data)
        self._written += memoryview(data).nbytes
        if self._on_written is not None:
            self._file.flush()  # the bytes must be in the file before a reader is told
            self._on_written(self._written)

    def _settle(self) -> None:
        """Wait for the tensor in flight (its error, if any, is raised here)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def hexdigest(self) -> str:
        """The digest of the file's bytes (after ``close``)."""
        if self._digest is None:
            raise ValueError("this writer was opened with digest=None")
        return str(self._digest.hexdigest())

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """The next tensor of the layout (its name, dtype and shape must match)."""
        want, dtype, shape = self._order[self._next]
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(f"expected {want} {dtype} {shape}, got {name} {tensor.dtype}")
        # A view, not a copy: the file takes the tensor's own bytes.
        raw: Any = tensor.detach().contiguous().view(torch.uint8).numpy()
        self._next += 1
        if self._pool is None:
            self._put(memoryview(raw))
            return
        self._settle()
        self._pending = self._pool.submit(self._put, memoryview(raw))

    def discard(self) -> None:
        """Give the file up after a failure: wait for the writer thread, close, delete."""
        try:
            # The caller is handling the failure that matters; the writer's own is secondary.
            with contextlib.suppress(Exception):
                self._settle()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._file.close()
            self._path.unlink(missing_ok=True)

    def close(self, *, fsync: bool = True) -> None:
        """Flush (and fsync) and close; every tensor must have been written."""
        try:
            self._settle()
            if self._next != len(self._order):
                raise ValueError(f"{len(self._order) - self._next} tensors were not written")
            self._file.flush()
            os.ftruncate(self._file.fileno(), self._size)
            if fsync:
                os.fsync(self._file.fileno())
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._file.close()


def state_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order: equal iff bit-identical."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
