"""`hypha-sm data prepare` and dataset checking: real data as slices, deterministic, verified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec
import numpy as np
import pytest
from safetensors.numpy import load_file

from hypha_sm.cli import main
from hypha_sm.datasets.manifest import (
    MANIFEST_FILE,
    DatasetError,
    Manifest,
    SliceInfo,
    TensorInfo,
    check,
    decode,
    encode,
    manifest_hash,
)
from hypha_sm.datasets.prepare import text_samples, verify

TEXT = b"The quick brown fox jumps over the lazy dog. " * 40  # 1,800 bytes


def prepare(tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / name
    assert main(["data", "prepare", "--out", str(out), *extra]) == 0
    return out


def text_file(tmp_path: Path, data: bytes = TEXT) -> str:
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    return str(path)


def test_the_same_input_and_seed_give_byte_identical_datasets(tmp_path: Path) -> None:
    """Twice from the same text and seed: every file is byte for byte the same; another seed
    orders the training samples differently."""
    args = ["--text", text_file(tmp_path), "--samples-per-slice", "4", "--seq-len", "16"]
    a = prepare(tmp_path, "a", *args)
    b = prepare(tmp_path, "b", *args, "--name", "a")
    c = prepare(tmp_path, "c", *args, "--name", "a", "--seed", "1")
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "train-00000.safetensors").read_bytes() != (
        c / "train-00000.safetensors"
    ).read_bytes()


def test_text_samples_are_byte_windows_whose_labels_are_the_next_byte(tmp_path: Path) -> None:
    train, evaluation = text_samples(TEXT, 16, 0.25)
    assert train["input_ids"].shape[1] == 16
    assert np.array_equal(train["labels"][:, :-1], train["input_ids"][:, 1:])
    first = bytes(train["input_ids"][0].astype(np.uint8))
    assert first == TEXT[:16]
    assert int(train["labels"][0, -1]) == TEXT[16]
    assert np.all(train["attention_mask"] == 1)
    # The eval split is the text's tail: it starts where the training text ends.
    cut = len(TEXT) - int(len(TEXT) * 0.25)
    assert bytes(evaluation["input_ids"][0].astype(np.uint8)) == TEXT[cut : cut + 16]


def test_a_prepared_dataset_is_what_its_manifest_says(tmp_path: Path) -> None:
    """Each slice holds its samples on the first axis, with the manifest's keys, dtypes and
    per-sample shapes; sizes and SHA-256 match; verify accepts it."""
    out = prepare(tmp_path, "digits", "--digits", "--samples-per-slice", "100")
    manifest, data = verify(out)
    assert manifest_hash(data) == "sha256:" + hashlib.sha256(data).hexdigest()
    assert len(manifest.slices) == 16
    assert len(manifest.eval_slices) == 1
    assert manifest.keys == {
        "labels": TensorInfo("I64", []),
        "pixel_values": TensorInfo("F32", [1, 8, 8]),
    }
    tensors = load_file(str(out / manifest.slices[3].file))
    assert tensors["pixel_values"].shape == (100, 1, 8, 8)
    assert tensors["labels"].shape == (100,)
    assert (
        0.0 <= float(tensors["pixel_values"].min()) <= float(tensors["pixel_values"].max()) <= 1.0
    )


def test_pydoc_topics_prepares_from_the_text_that_ships_with_python(tmp_path: Path) -> None:
    out = prepare(tmp_path, "pydoc", "--text", "pydoc-topics", "--samples-per-slice", "256")
    manifest, _ = verify(out)
    assert manifest.source.startswith("pydoc-topics")
    assert len(manifest.slices) >= 10
    assert manifest.keys["input_ids"] == TensorInfo("I64", [128])


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (
            lambda d: (d / "train-00001.safetensors").write_bytes(b"x"),
            "train-00001.safetensors: its bytes do not match",
        ),
        (
            lambda d: (d / "train-00002.safetensors").unlink(),
            "train-00002.safetensors: No such file",
        ),
        (lambda d: (d / MANIFEST_FILE).write_text("{}"), "not a dataset manifest"),
    ],
)
def test_verify_names_the_file_that_does_not_match(
    tmp_path: Path, damage: object, says: str
) -> None:
    out = prepare(
        tmp_path, "d", "--text", text_file(tmp_path), "--samples-per-slice", "4", "--seq-len", "16"
    )
    damage(out)  # type: ignore[operator]
    with pytest.raises(DatasetError, match=says):
        verify(out)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--samples-per-slice", "5000", "--seq-len", "16"], "larger than the data"),
        (["--samples-per-slice", "0"], "must be at least 1"),
        (["--samples-per-slice", "80", "--seq-len", "16"], "the eval split has"),
        (["--eval-fraction", "1.5"], "eval-fraction"),
        (["--name", "../etc"], "name '../etc'"),
    ],
)
def test_bad_input_is_a_one_line_error_naming_the_problem(
    tmp_path: Path, args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["data", "prepare", "--text", text_file(tmp_path), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hypha-sm: error: ")
    assert says in err
    assert err.count("\n") == 1
    assert not out.exists()  # nothing half-written


def test_an_empty_file_and_an_existing_dataset_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = text_file(tmp_path, b"")
    assert main(["data", "prepare", "--text", empty, "--out", str(tmp_path / "e")]) == 2
    assert "the file is empty" in capsys.readouterr().err
    args = ["--text", text_file(tmp_path), "--samples-per-slice", "4", "--seq-len", "16"]
    out = prepare(tmp_path, "x", *args)
    assert main(["data", "prepare", "--out", str(out), *args]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["data", "prepare", "--out", str(out), *args, "--force"]) == 0


def _manifest(**changes: object) -> Manifest:
    good = Manifest(
        format="hypha-sm/dataset",
        version=1,
        name="d",
        source="s",
        seed=0,
        samples_per_slice=2,
        keys={"x": TensorInfo("F32", [3])},
        slices=[SliceInfo("train-00000.safetensors", 2, 10, "a" * 64)],
        eval_slices=[],
    )
    return msgspec.structs.replace(good, **changes)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({}, ""),
        ({"version": 2}, "expected 'hypha-sm/dataset' v1"),
        ({"name": "a/b"}, "name 'a/b'"),
        ({"slices": []}, "no slices"),
        ({"keys": {}}, "no keys"),
        ({"keys": {"x": TensorInfo("F128", [3])}}, "dtype 'F128'"),
        ({"keys": {"x": TensorInfo("F32", [0])}}, "shape [0]"),
        ({"slices": [SliceInfo("../x.safetensors", 2, 10, "a" * 64)]}, "is not a train-NNNNN"),
        (
            {"slices": [SliceInfo("train-00000.safetensors", 3, 10, "a" * 64)]},
            "3 samples, expected 2",
        ),
        ({"slices": [SliceInfo("train-00000.safetensors", 2, 10, "zz")]}, "is not 64 hex digits"),
        ({"eval_slices": [SliceInfo("train-00000.safetensors", 2, 10, "a" * 64)]}, "listed twice"),
    ],
)
def test_a_manifest_is_checked_before_anything_is_served(
    changes: dict[str, object], says: str
) -> None:
    problem = check(_manifest(**changes))
    assert says in problem
    assert bool(problem) == bool(says)


def test_the_manifest_round_trips_and_its_encoding_is_stable() -> None:
    manifest = _manifest()
    data = encode(manifest)
    assert decode(data) == manifest
    assert encode(decode(data)) == data
    assert json.loads(data)["format"] == "hypha-sm/dataset"


def test_golden_a_small_text_dataset_has_these_exact_bytes(tmp_path: Path) -> None:
    """specs/dataset.md's vector: pins the slice layout and the manifest encoding, so a change
    of numpy, safetensors or our code that would change served bytes fails here."""
    out = prepare(
        tmp_path,
        "fox",
        "--text",
        text_file(tmp_path),
        "--samples-per-slice",
        "4",
        "--seq-len",
        "16",
    )
    manifest, data = verify(out)
    assert manifest.slices[0].sha256 == GOLDEN_FIRST_SLICE
    assert manifest_hash(data) == GOLDEN_MANIFEST


GOLDEN_FIRST_SLICE = "32b031a8c194093700ccb3915e025d9934c900a4a99b25caa8832fc7796712a6"
GOLDEN_MANIFEST = "sha256:c0f3738b740ccb7db1fbfe1b9f2f975dad7a358b88287becc1627880743272c6"


def _rows(tmp_path: Path) -> Path:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "\n".join(
            json.dumps(
                {"text": f"row {i}: the quick brown fox", "x": [i, i + 0.5], "label": i % 3}
            )
            for i in range(120)
        )
        + "\n"
    )
    return rows


def test_a_jsonl_files_text_column_becomes_byte_level_samples(tmp_path: Path) -> None:
    """The rows' text, joined by newlines, cut into byte windows: every sample is a window of
    that text."""
    rows = _rows(tmp_path)
    joined = "\n".join(json.loads(line)["text"] for line in rows.read_text().splitlines())
    out = prepare(
        tmp_path,
        "t",
        "--file",
        str(rows),
        "--text-key",
        "text",
        "--samples-per-slice",
        "8",
        "--seq-len",
        "16",
    )
    manifest, _ = verify(out)
    assert manifest.keys["input_ids"] == TensorInfo("I64", [16])
    for window in load_file(str(out / manifest.slices[0].file))["input_ids"]:
        assert bytes(window.astype(np.uint8)) in joined.encode()


def test_numeric_columns_of_csv_and_parquet_become_tensors_one_row_per_sample(
    tmp_path: Path,
) -> None:
    """The same rows as CSV and as Parquet give the same samples; each row is one sample."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"a": [float(i) for i in range(100)], "label": [i % 2 for i in range(100)]})
    pq.write_table(table, tmp_path / "rows.parquet")
    (tmp_path / "rows.csv").write_text(
        "a,label\n" + "".join(f"{float(i)},{i % 2}\n" for i in range(100))
    )
    slices = {}
    for suffix in ("csv", "parquet"):
        out = prepare(
            tmp_path,
            suffix,
            "--file",
            str(tmp_path / f"rows.{suffix}"),
            "--keys",
            "a,label",
            "--samples-per-slice",
            "10",
            "--name",
            "rows",
        )
        manifest, _ = verify(out)
        assert manifest.keys == {"a": TensorInfo("F64", []), "label": TensorInfo("I64", [])}
        slices[suffix] = load_file(str(out / manifest.slices[0].file))
        assert (
            sorted(slices[suffix]["a"] % 2 == slices[suffix]["label"]) == [True] * 10
        )  # rows kept whole
    assert np.array_equal(slices["csv"]["a"], slices["parquet"]["a"])


@pytest.mark.parametrize(
    ("lines", "args", "says"),
    [
        (
            '{"x": [1, 2], "label": 1}\n{"x": [1, 2]}\n',
            ["--keys", "x,label"],
            "'label' is missing in row 2",
        ),
        ('{"x": [1, 2], "label": 1}\n', ["--keys", "y"], "no column 'y'"),
        (
            '{"x": "a", "label": 1}\n{"x": "b", "label": 1}\n',
            ["--keys", "x"],
            "'x' is not numeric",
        ),
        (
            '{"x": [1], "label": 1}\n{"x": [1, 2], "label": 1}\n',
            ["--keys", "x"],
            "rows of different shapes",
        ),
        ('{"t": 1}\n', ["--text-key", "t"], "must hold text in every row"),
        ("", ["--keys", "x"], "missing or empty"),
    ],
)
def test_a_bad_local_file_is_a_one_line_error_naming_the_problem(
    tmp_path: Path, lines: str, args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text(lines)
    out = tmp_path / "out"
    command = [
        "data",
        "prepare",
        "--file",
        str(source),
        "--out",
        str(out),
        "--samples-per-slice",
        "1",
        "--eval-fraction",
        "0",
        *args,
    ]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert says in err
    assert err.count("\n") == 1


def test_a_tokenizer_from_a_local_directory_gives_its_ids_as_samples(tmp_path: Path) -> None:
    """A BPE tokenizer trained here and saved as tokenizer.json: the slices hold its ids, and
    the ids decode back to the text's words; labels are the next token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    text = TEXT.decode()
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        [text], trainers.BpeTrainer(vocab_size=80, special_tokens=["[UNK]"])
    )
    (tmp_path / "tok").mkdir()
    tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))
    out = prepare(
        tmp_path,
        "tokens",
        "--text",
        text_file(tmp_path),
        "--tokenizer",
        str(tmp_path / "tok"),
        "--samples-per-slice",
        "4",
        "--seq-len",
        "8",
    )
    manifest, _ = verify(out)
    assert "tokenizer tok" in manifest.source
    tensors = load_file(str(out / manifest.slices[0].file))
    assert np.array_equal(tensors["labels"][:, :-1], tensors["input_ids"][:, 1:])
    words = tokenizer.decode([int(i) for i in tensors["input_ids"][0]]).split()
    assert words
    assert all(word in text for word in words)
