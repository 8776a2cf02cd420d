"""The dataset manifest (``dataset.json``): what a data node serves and a job may rely on.

A dataset is a directory: ``dataset.json`` and one safetensors file per slice. Every tensor of a
slice has the sample axis first; the manifest names each key with its dtype and its per-sample
shape, lists the training slices in order (slice ``i`` is ``slices[i]``, never the file
system's order) and, separately, the held-out evaluation slices, each with its size and
SHA-256. ``manifest_hash`` is the SHA-256 of the manifest file's bytes, which a data node
announces so that everyone agrees on what index ``i`` means. Pure: no file I/O here.
"""

from __future__ import annotations

import hashlib
import re

import msgspec

from hypha_sm.core.errors import HyphaSMError

FORMAT = "hypha-sm/dataset"
VERSION = 1
MANIFEST_FILE = "dataset.json"
#: Dataset names travel in records and requests: short, no path separators.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FILE = re.compile(r"^(train|eval)-\d{5}\.safetensors$")
#: The dtypes slices may hold (safetensors names).
DTYPES = frozenset({"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"})


class DatasetError(HyphaSMError, ValueError):
    """A dataset or its source cannot be used; the message names the file and the problem."""


class TensorInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One key of every slice: its dtype and the shape of one sample."""

    dtype: str
    shape: list[int]


class SliceInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One slice file: its name, how many samples it holds, its size and SHA-256."""

    file: str
    samples: int
    size: int
    sha256: str


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A prepared dataset."""

    format: str
    version: int
    name: str
    #: Where the data came from (``pydoc-topics``, ``digits``, a file's name) and how it was cut.
    source: str
    seed: int
    samples_per_slice: int
    keys: dict[str, TensorInfo]
    slices: list[SliceInfo]
    eval_slices: list[SliceInfo]
    #: Samples that did not fill a last slice (slices are all the same size).
    dropped_samples: int = 0


_encoder = msgspec.json.Encoder(order="deterministic")
_decoder = msgspec.json.Decoder(Manifest)


def encode(manifest: Manifest) -> bytes:
    """The manifest file's bytes: deterministic, pretty enough to read, newline-terminated."""
    return msgspec.json.format(_encoder.encode(manifest), indent=2) + b"\n"


def manifest_hash(data: bytes) -> str:
    """What a data node announces for a manifest file's bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def decode(data: bytes, where: str = MANIFEST_FILE) -> Manifest:
    """Parse and check a manifest; DatasetError naming ``where`` and the problem."""
    try:
        manifest = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise DatasetError(f"{where}: not a dataset manifest: {exc}") from None
    problem = check(manifest)
    if problem:
        raise DatasetError(f"{where}: {problem}")
    return manifest


def check(manifest: Manifest) -> str:
    """Why a manifest cannot be served ("" if it can)."""
    if manifest.format != FORMAT or manifest.version != VERSION:
        return f"format {manifest.format!r} v{manifest.version}, expected {FORMAT!r} v{VERSION}"
    if not NAME.match(manifest.name):
        return f"name {manifest.name!r}: letters, digits, '.', '_' or '-', at most 64"
    if manifest.samples_per_slice < 1 or not manifest.slices:
        return "no slices"
    if not manifest.keys:
        return "no keys"
    for key, tensor in manifest.keys.items():
        if tensor.dtype not in DTYPES or any(d < 1 for d in tensor.shape):
            return f"key {key!r}: dtype {tensor.dtype!r} or shape {tensor.shape} not allowed"
    files = [s.file for s in (*manifest.slices, *manifest.eval_slices)]
    if len(set(files)) != len(files):
        return "a slice file is listed twice"
    for split, slices in (("train", manifest.slices), ("eval", manifest.eval_slices)):
        for info in slices:
            if not _FILE.match(info.file) or not info.file.startswith(split):
                return f"slice file {info.file!r} is not a {split}-NNNNN.safetensors name"
            if info.samples != manifest.samples_per_slice or info.size < 1:
                return (
                    f"{info.file}: {info.samples} samples, expected {manifest.samples_per_slice}"
                )
            if not re.fullmatch(r"[0-9a-f]{64}", info.sha256):
                return f"{info.file}: sha256 {info.sha256!r} is not 64 hex digits"
    return ""
