"""``hypha-sm data prepare``: real data, offline, as slices a data node serves.

Sources: a text file or ``pydoc-topics`` (the documentation text that ships with Python) as
byte-level language-model samples (``input_ids``, ``attention_mask``, ``labels``: the next
byte), and scikit-learn's bundled 8x8 digits (``pixel_values``, ``labels``). The held-out
evaluation split is cut before shuffling (the text's last part, the digits' last rows after a
seeded shuffle), so no eval sample is also a training sample. The same input and seed give
byte-identical slice files and manifest. A dataset is written into a temporary directory beside
the target and renamed into place, so a crash never leaves a half-written dataset.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hypha_sm.datasets.manifest import (
    FORMAT,
    MANIFEST_FILE,
    NAME,
    VERSION,
    DatasetError,
    Manifest,
    SliceInfo,
    TensorInfo,
    decode,
    encode,
)

#: The built-in text source.
PYDOC_TOPICS = "pydoc-topics"
_DTYPE_NAMES = {
    "float32": "F32",
    "float16": "F16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise DatasetError(
            "preparing datasets needs numpy and safetensors: pip install 'hypha-sm[data]'"
        ) from None
    return numpy


def read_text(source: str) -> tuple[bytes, str]:
    """The bytes of a text source and how the manifest names it."""
    if source == PYDOC_TOPICS:
        from pydoc_data.topics import topics

        return "\n".join(topics[k] for k in sorted(topics)).encode("utf-8"), PYDOC_TOPICS
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{source}: {exc.strerror or exc}") from None
    if not data:
        raise DatasetError(f"{source}: the file is empty")
    return data, path.name


def text_samples(
    data: bytes, seq_len: int, eval_fraction: float, tokenizer: Path | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Windows of ``seq_len`` tokens and the token after each (``labels``).

    Tokens are bytes, or with ``tokenizer`` (a directory holding a Hugging Face
    ``tokenizer.json``) that tokenizer's ids. The eval split is the text's tail, cut before
    tokenizing so no eval token comes from training text.
    """
    np = _numpy()
    if seq_len < 1:
        raise DatasetError(f"seq-len {seq_len}: must be at least 1")
    cut = len(data) - int(len(data) * eval_fraction)
    encode = _byte_ids if tokenizer is None else _tokenizer_ids(tokenizer)
    return _windows(np, encode(data[:cut]), seq_len), _windows(np, encode(data[cut:]), seq_len)


def _byte_ids(data: bytes) -> Any:
    np = _numpy()
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64)


def _tokenizer_ids(directory: Path) -> Callable[[bytes], Any]:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DatasetError("--tokenizer needs tokenizers: pip install 'hypha-sm[hf]'") from None
    path = directory / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # missing file, or not a tokenizer: the library's errors vary
        raise DatasetError(f"{path}: not a tokenizer: {exc}"[:300]) from None
    np = _numpy()

    def encode(data: bytes) -> Any:
        text = data.decode("utf-8", "replace")
        return np.asarray(tokenizer.encode(text).ids, dtype=np.int64)

    return encode


def _windows(np: Any, ids: Any, seq_len: int) -> dict[str, Any]:
    count = max(0, (len(ids) - 1) // seq_len)
    starts = np.arange(count) * seq_len
    index = starts[:, None] + np.arange(seq_len)[None, :]
    return {
        "input_ids": ids[index],
        "attention_mask": np.ones((count, seq_len), dtype=np.int64),
        "labels": ids[index + 1],
    }


#: The Hugging Face ``datasets`` loader for each file suffix.
HF_FORMATS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
}


def file_rows(path: Path, keys: list[str]) -> dict[str, list[Any]]:
    """``keys``' columns of a local JSONL / JSON / CSV / Parquet / text file.

    Read with Hugging Face ``datasets``, offline, caching in a temporary directory.
    DatasetError names the file and, for a value missing in some rows, the first such row.
    """
    loader = HF_FORMATS.get(path.suffix.lower())
    if loader is None:
        raise DatasetError(f"{path}: use a .jsonl, .json, .csv, .parquet or .txt file")
    if not path.is_file() or path.stat().st_size == 0:
        raise DatasetError(f"{path}: the file is missing or empty")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            "--file needs Hugging Face datasets: pip install 'hypha-sm[hf]'"
        ) from None
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as cache:
        try:
            table = datasets.load_dataset(
                loader, data_files=str(path), split="train", cache_dir=cache
            )
        except Exception as exc:  # the library's errors for a bad file are many and untyped
            raise DatasetError(
                f"{path}: cannot read it: {type(exc).__name__}: {exc}"[:400]
            ) from None
        columns = {}
        for key in keys:
            if key not in table.column_names:
                raise DatasetError(
                    f"{path}: no column {key!r} (it has {', '.join(table.column_names)})"
                )
            values = table[key]
            missing = next((n for n, v in enumerate(values, start=1) if v is None), None)
            if missing is not None:
                raise DatasetError(f"{path}: {key!r} is missing in row {missing}")
            columns[key] = list(values)
    if not columns or not next(iter(columns.values())):
        raise DatasetError(f"{path}: no rows")
    return columns


def file_samples(
    path: Path,
    *,
    text_key: str | None,
    keys: list[str],
    seq_len: int,
    eval_fraction: float,
    seed: int,
    tokenizer: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Samples from a local file, text (bytes or a tokenizer's ids) or numeric tensors.

    Its ``text_key`` column becomes byte-level text (rows joined by newlines); or its ``keys``
    columns become tensors, each row one sample, shuffled with ``seed``, the last
    ``eval_fraction`` held out.
    """
    np = _numpy()
    if text_key:
        rows = file_rows(path, [text_key])[text_key]
        if not all(isinstance(r, str) for r in rows):
            raise DatasetError(f"{path}: {text_key!r} must hold text in every row")
        return text_samples("\n".join(rows).encode("utf-8"), seq_len, eval_fraction, tokenizer)
    if not keys:
        raise DatasetError("--file needs --text-key or --keys")
    columns = file_rows(path, keys)
    arrays = {}
    for key, values in columns.items():
        try:
            array = np.asarray(values)
        except ValueError:
            raise DatasetError(f"{path}: {key!r} has rows of different shapes") from None
        if array.dtype == object or str(array.dtype) not in _DTYPE_NAMES:
            raise DatasetError(f"{path}: {key!r} is not numeric ({array.dtype})")
        arrays[key] = array
    order = np.random.default_rng(seed).permutation(_count(arrays))
    arrays = {key: value[order] for key, value in arrays.items()}
    cut = _count(arrays) - int(_count(arrays) * eval_fraction)
    return {k: v[:cut] for k, v in arrays.items()}, {k: v[cut:] for k, v in arrays.items()}


def digits_samples(eval_fraction: float, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """scikit-learn's 1,797 digits: ``pixel_values`` [N, 1, 8, 8] in 0..1, ``labels`` [N]."""
    np = _numpy()
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    except ImportError:
        raise DatasetError("--digits needs scikit-learn: pip install 'hypha-sm[digits]'") from None
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    pixels = (digits.data[order] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    labels = digits.target[order].astype(np.int64)
    cut = len(labels) - int(len(labels) * eval_fraction)
    return (
        {"pixel_values": pixels[:cut], "labels": labels[:cut]},
        {"pixel_values": pixels[cut:], "labels": labels[cut:]},
    )


def shuffled(samples: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The samples in a seeded order (every key the same order)."""
    np = _numpy()
    count = _count(samples)
    order = np.random.default_rng(seed).permutation(count)
    return {key: value[order] for key, value in samples.items()}


def _count(samples: Mapping[str, Any]) -> int:
    counts = {len(value) for value in samples.values()}
    if len(counts) != 1:
        raise DatasetError(f"keys have different sample counts: {sorted(counts)}")
    return counts.pop()


def write_dataset(
    out: Path,
    *,
    name: str,
    source: str,
    seed: int,
    samples_per_slice: int,
    train: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    force: bool = False,
) -> Manifest:
    """Cut the samples into slices and write the dataset at ``out``; its manifest."""
    try:
        from safetensors.numpy import save
    except ImportError:
        raise DatasetError(
            "preparing datasets needs numpy and safetensors: pip install 'hypha-sm[data]'"
        ) from None
    if not NAME.match(name):
        raise DatasetError(f"name {name!r}: letters, digits, '.', '_' or '-', at most 64")
    if samples_per_slice < 1:
        raise DatasetError(f"samples-per-slice {samples_per_slice}: must be at least 1")
    total = _count(train)
    if total == 0:
        raise DatasetError(f"{source}: no training samples (the data is too short)")
    if samples_per_slice > total:
        raise DatasetError(
            f"samples-per-slice {samples_per_slice} is larger than the data "
            f"({total} training samples)"
        )
    eval_total = _count(evaluation) if evaluation else 0
    if evaluation and 0 < eval_total < samples_per_slice:
        raise DatasetError(
            f"the eval split has {eval_total} samples, fewer than one slice of "
            f"{samples_per_slice}: raise --eval-fraction or lower --samples-per-slice"
        )
    if out.exists() and any(out.iterdir()) and not force:
        raise DatasetError(f"{out}: exists and is not empty (--force replaces it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        slices = _write_split(staging, "train", train, samples_per_slice, save)
        evals = (
            _write_split(staging, "eval", evaluation, samples_per_slice, save)
            if evaluation
            else []
        )
        keys = {
            key: TensorInfo(_DTYPE_NAMES[str(value.dtype)], list(value.shape[1:]))
            for key, value in sorted(train.items())
        }
        manifest = Manifest(
            format=FORMAT,
            version=VERSION,
            name=name,
            source=source,
            seed=seed,
            samples_per_slice=samples_per_slice,
            keys=keys,
            slices=slices,
            eval_slices=evals,
            dropped_samples=total % samples_per_slice,
        )
        (staging / MANIFEST_FILE).write_bytes(encode(manifest))
        os.chmod(staging, 0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_split(
    directory: Path, split: str, samples: Mapping[str, Any], per_slice: int, save: Any
) -> list[SliceInfo]:
    infos = []
    for index in range(_count(samples) // per_slice):
        part = {
            key: value[index * per_slice : (index + 1) * per_slice]
            for key, value in samples.items()
        }
        data = save({key: _contiguous(value) for key, value in part.items()})
        file = f"{split}-{index:05d}.safetensors"
        (directory / file).write_bytes(data)
        infos.append(SliceInfo(file, per_slice, len(data), hashlib.sha256(data).hexdigest()))
    return infos


def _contiguous(value: Any) -> Any:
    np = _numpy()
    return np.ascontiguousarray(value)


def verify(directory: Path) -> tuple[Manifest, bytes]:
    """Read and check a dataset directory: the manifest and every slice's size and SHA-256.

    Returns the manifest and the manifest file's bytes (to hash). DatasetError names the file.
    """
    path = directory / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: {exc.strerror or exc}") from None
    manifest = decode(data, str(path))
    for info in (*manifest.slices, *manifest.eval_slices):
        file = directory / info.file
        digest = hashlib.sha256()
        size = 0
        try:
            with file.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            raise DatasetError(f"{file}: {exc.strerror or exc}") from None
        if size != info.size or digest.hexdigest() != info.sha256:
            raise DatasetError(f"{file}: its bytes do not match the manifest (size or sha256)")
    return manifest, data
