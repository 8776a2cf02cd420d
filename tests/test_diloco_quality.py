"""DiLoCo's quality on real data: two workers as real processes against one worker in-process.

As in the DiLoCo paper's runs, both start from a warm start: a byte-level GPT-2 (built from
the devnet's config, seed 0) trained by one worker for 160 steps of 16 samples on Python's
documentation text, past the early plateau where the byte model sits near 3.25. Then the
devnet trains it with two training workers and a parameter server for 20 outer rounds of 128
samples (H ≈ 8 inner steps of 8 samples per worker), and the baseline is one worker trained
from the same weights on the same number of samples (batch 16 = the two workers' batches
together, so the same number of optimizer steps as each DiLoCo worker), evaluated on the same
held-out slices after every 128 samples. DiLoCo's final eval loss (the mean of the last three
evaluations on each side) must be within 5 % of the baseline's; the bytes the workers
exchanged must be at least H times fewer than a per-step all-reduce would move.

Why the warm start: from a random initialisation the comparison measured when each model left
the plateau, which depends on the order of the data, more than DiLoCo (docs/training.md,
"What it reaches"): 10 rounds of H 16 gave +2 % to +3 % in most runs and +9 % to +14 % in
others; 40 rounds of H 8, +2.1 %, +3.1 %, +3.2 %, +8.7 % and +14.3 %. From the warm start,
20 rounds of H 8 gave +0.2 %, +0.2 % and +0.9 %.

It runs after the parallel suite, alone (``alone`` marker, scripts/test): when it shared two
cores with other end-to-end tests, one worker was starved for whole rounds.

The outer step here is η 1, μ 0 (plain averaging of the pseudo-gradients): measured on this
tiny problem, outer momentum 0.9 needs more rounds than a CI run has to pay off (10 rounds of
H 16: eval 2.91 with 0.7/0.9 against 2.81 with 1.0/0.0 and 2.72 for the baseline). Both curves
are printed (``-s``) for the record.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hypha_sm.devnet import MODEL_CONFIG  # noqa: E402
from hypha_sm.executors.diloco import batches, build_model, lm_loss, rows_of  # noqa: E402

pytestmark = [pytest.mark.net, pytest.mark.slow]
ROUNDS = 20
#: Steps of 16 samples one worker trains the model for before the comparison starts.
WARM_STEPS = 160
#: Samples all workers train between two updates (the job's avg_samples_between_updates).
SAMPLES_PER_ROUND = 128
NAMES = ["input_ids", "attention_mask", "labels"]


def single_worker(
    dataset: Path, model_dir: Path, samples: int, batch: int = 16
) -> tuple[list[float], torch.nn.Module]:
    """Eval loss of one worker trained on ``samples`` samples from the model in ``model_dir``
    (its weights if it has them, else seed 0), every ``SAMPLES_PER_ROUND``; and the model."""
    torch.set_num_threads(1)
    model = build_model(model_dir, "causal-lm", 0)  # as the executor builds it
    evals = sorted(dataset.glob("eval-*.safetensors"))[:2]
    eval_batches = [b for e in evals for b in batches(rows_of(e, NAMES), 32)]

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            loss = sum(float(lm_loss(model, b)) for b in eval_batches) / len(eval_batches)
        model.train()
        return loss

    def rows():  # type: ignore[no-untyped-def]
        while True:
            for f in sorted(dataset.glob("train-*.safetensors")):
                yield from rows_of(f, NAMES)

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    curve = [evaluate()]
    for step, b in enumerate(batches(rows(), batch), start=1):
        optimizer.zero_grad()
        lm_loss(model, b).backward()
        optimizer.step()
        if step * batch % SAMPLES_PER_ROUND == 0:
            curve.append(evaluate())
        if step * batch >= samples:
            break
    curve.append(evaluate())
    return curve, model


def warm_start(directory: Path) -> Path:
    """Weights after ``WARM_STEPS`` steps of one worker on the devnet's own dataset."""
    from safetensors.torch import save_file

    from hypha_sm.devnet import write_pydoc_corpus, write_pydoc_dataset
    from hypha_sm.executors.diloco import global_of

    corpus = write_pydoc_corpus(directory / "corpus.txt")
    dataset = write_pydoc_dataset(corpus, directory / "pydoc")  # what the data node serves
    (directory / "model").mkdir()
    (directory / "model" / "config.json").write_text(json.dumps(MODEL_CONFIG))
    _, model = single_worker(dataset, directory / "model", WARM_STEPS * 16)
    weights = directory / "warm.safetensors"
    save_file({k: v.contiguous() for k, v in global_of(model).items()}, str(weights))
    return weights


@pytest.mark.alone  # measured under a full parallel suite the gap doubles: +10 % (see below)
def test_two_worker_diloco_stays_near_one_worker_on_the_same_samples(
    tmp_path: Path,
) -> None:
    (tmp_path / "warm").mkdir()
    weights = warm_start(tmp_path / "warm")
    net = tmp_path / "net"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hypha_sm.cli",
            "devnet",
            "--dir",
            str(net),
            "--model-weights",
            str(weights),
            "--rounds",
            str(ROUNDS),
            "--outer-lr",
            "1.0",
            "--outer-momentum",
            "0",
            "--samples-per-round",
            str(SAMPLES_PER_ROUND),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rounds: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)
    for line in (net / "metrics" / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        rounds[entry["round"]][entry["worker"]] = entry["metrics"]
    diloco = [next(iter(rounds[r].values()))["eval_loss"] for r in range(ROUNDS + 1)]
    samples = sum(m["samples"] for r in range(1, ROUNDS + 1) for m in rounds[r].values())
    # The devnet's workers loaded the warm weights (data/model/model.safetensors); so does this.
    baseline, _ = single_worker(net / "datasets" / "pydoc", net / "data" / "model", int(samples))
    assert baseline[0] == pytest.approx(diloco[0], abs=1e-4)  # the same start on both sides
    print(f"\nDiLoCo (2 workers) eval loss per round: {[round(x, 4) for x in diloco]}")
    print(f"one worker, every 8 steps of 16:       {[round(x, 4) for x in baseline]}")
    print(f"samples {samples:.0f}; final {diloco[-1]:.4f} vs {baseline[-1]:.4f}")
    # The last three evaluations on each side: one evaluation swings by a few hundredths with
    # which slices each worker happened to get (timing decides that), the mean much less.
    ours, theirs = sum(diloco[-3:]) / 3, sum(baseline[-3:]) / 3
    print(f"mean of the last three: {ours:.4f} vs {theirs:.4f} ({ours / theirs - 1:+.1%})")
    assert ours <= 1.05 * theirs, (diloco, baseline)
    assert diloco[-1] < diloco[0] - 0.15  # it learned from the warm start (2.72 → 2.41 measured)

    # Bytes: each worker sends one pseudo-gradient and receives one update per round; a
    # per-step all-reduce would send and receive a model-sized gradient every step.
    params = sum(
        p.numel()
        for p in transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**MODEL_CONFIG)
        ).parameters()
    )
    for r in range(1, ROUNDS + 1):
        for m in rounds[r].values():
            exchanged = m["bytes_sent"] + m["bytes_received"]
            all_reduce = m["steps"] * 2 * 4 * params
            assert exchanged * m["steps"] <= all_reduce * 1.01, (r, m)


def test_one_worker_with_outer_lr_1_and_no_momentum_trains_exactly_as_plain_adamw(
    tmp_path: Path,
) -> None:
    """Over real processes (gateway, data node, scheduler, one training worker, parameter
    server): with η 1 and μ 0 the global weights after each round equal a plain AdamW run of
    the same steps on the same slices in this process (a sign error anywhere in the
    pseudo-gradient, the mean, the outer step or the merge would show)."""
    from safetensors.torch import load_file

    result = subprocess.run(
        [
            sys.executable, "-m", "hypha_sm.cli", "devnet", "--dir", str(tmp_path),
            "--rounds", "3", "--workers", "1", "--outer-lr", "1.0", "--outer-momentum", "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    steps = {}
    for line in (tmp_path / "metrics" / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["round"]:
            steps[entry["round"]] = int(entry["metrics"]["steps"])

    torch.set_num_threads(1)
    model = build_model(tmp_path / "data" / "model", "causal-lm", 0)  # as the executor does
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    slices = sorted((tmp_path / "datasets" / "pydoc").glob("train-*.safetensors"))

    def rows():  # type: ignore[no-untyped-def]
        for path in slices * 10:  # one worker takes the slices in order, epoch after epoch
            yield from rows_of(path, NAMES)

    data = batches(rows(), 8)
    theta = {name: p.detach().clone() for name, p in model.named_parameters()}
    for rnd in (1, 2, 3):
        for _ in range(steps[rnd]):
            optimizer.zero_grad()
            lm_loss(model, next(data)).backward()
            optimizer.step()
        # θ + (θ_local - θ) in float32 is θ_local only up to rounding, and AdamW turns a
        # rounding difference in a rarely-seen embedding into a different path within a round;
        # so the replica takes the same float32 steps the worker and the PS take.
        with torch.no_grad():
            for name, p in model.named_parameters():
                theta[name] = theta[name] + (p - theta[name])
                p.copy_(theta[name])
        trained = load_file(str(tmp_path / "checkpoints" / f"round-{rnd}-rank-0.safetensors"))
        for name, value in theta.items():
            torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-6)
