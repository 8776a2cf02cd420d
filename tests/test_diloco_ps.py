"""The parameter server's arithmetic and the scheduler's training rounds, against the original's
golden vectors (hypha-execution.md §16.1, §16.5) and a NumPy recomputation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from hypha_sm.diloco.outer import Contribution, OuterStep, aggregate, update_size  # noqa: E402
from hypha_sm.diloco.tensors import StreamWriter, TensorReader, read_layout  # noqa: E402
from hypha_sm.roles.scheduler.core import effects as fx  # noqa: E402
from hypha_sm.roles.scheduler.core import events as ev  # noqa: E402
from tests.scheduler_world import placed_diloco, progress  # noqa: E402


def _round(tmp: Path, grads: list[dict[str, object]], step: OuterStep, first: bool, **kw: object):
    files = []
    for n, g in enumerate(grads):
        path = tmp / f"g{n}.safetensors"
        save_file({k: torch.as_tensor(v) for k, v in g.items()}, str(path))
        files.append(Contribution(path, float(kw.pop(f"w{n}", 1.0))))  # type: ignore[arg-type]
    aggregate(
        files,
        momentum_path=tmp / "momentum",
        update_path=tmp / "update",
        step=step,
        first_round=first,
        **kw,  # type: ignore[arg-type]
    )
    return load_file(str(tmp / "update"))


def test_a_round_that_cannot_write_its_update_leaves_no_file_and_no_open_file(
    tmp_path: Path,
) -> None:
    """The update's directory is gone: the round raises, the momentum is as it was, nothing
    half-written is left, and every input it opened is closed again."""
    import os

    step = OuterStep()
    _round(tmp_path, [{"w": [1.0, 2.0]}], step, True)
    before = (tmp_path / "momentum").read_bytes()
    path = tmp_path / "g0.safetensors"
    save_file({"w": torch.tensor([3.0, 4.0])}, str(path))
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        aggregate(
            [Contribution(path)],
            momentum_path=tmp_path / "momentum",
            update_path=tmp_path / "gone" / "update",
            step=step,
            first_round=False,
        )
    assert len(os.listdir("/proc/self/fd")) == open_before
    assert (tmp_path / "momentum").read_bytes() == before
    assert not (tmp_path / "momentum.next").exists()


def test_golden_nesterov_two_rounds(tmp_path: Path) -> None:
    """μ 0.7, η 0.1: g = 0.5 gives 0.085; then g = 0.1..0.5 gives 0.0415..0.1095 (§16.1)."""
    step = OuterStep(learning_rate=0.1, momentum=0.7)
    first = _round(tmp_path, [{"gradient": [0.5] * 5}], step, True)["gradient"]
    assert float((first - 0.085).abs().sum()) < 1e-6
    second = _round(tmp_path, [{"gradient": [0.1, 0.2, 0.3, 0.4, 0.5]}], step, False)
    expected = torch.tensor([0.0415, 0.0585, 0.0755, 0.0925, 0.1095])
    assert float((second["gradient"] - expected).abs().sum()) < 1e-6


def test_three_workers_get_a_true_mean_not_the_originals_pairwise_average(tmp_path: Path) -> None:
    """B1: the original weighs the last of three files ½; the mean weighs each ⅓."""
    step = OuterStep(learning_rate=1.0, momentum=0.0)
    grads = [{"w": [3.0]}, {"w": [6.0]}, {"w": [9.0]}]
    assert _round(tmp_path, grads, step, True)["w"].tolist() == [6.0]
    pairwise = _round(tmp_path, grads, step, True, pairwise=True)["w"].tolist()
    assert pairwise == [0.25 * 3 + 0.25 * 6 + 0.5 * 9]


def test_files_weigh_the_samples_their_workers_trained_on(tmp_path: Path) -> None:
    step = OuterStep(learning_rate=1.0, momentum=0.0)
    update = _round(tmp_path, [{"w": [0.0]}, {"w": [4.0]}], step, True, w0=100.0, w1=300.0)
    assert update["w"].tolist() == [3.0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_three_rounds_match_a_numpy_recomputation(tmp_path: Path, dtype: str) -> None:
    """u = η·(μ·m + mean(g)), m = g in round 1, then μ·m + g; every key, shape and dtype kept."""
    rng = np.random.default_rng(7)
    step = OuterStep()
    wire = getattr(torch, dtype)
    m = None
    for rnd in (1, 2, 3):
        grads = [
            {"a": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(5)}
            for _ in range(2)
        ]
        tensors = [
            {k: torch.as_tensor(v, dtype=torch.float32).to(wire) for k, v in g.items()}
            for g in grads
        ]
        files = []
        for n, g in enumerate(tensors):
            path = tmp_path / f"r{rnd}-{n}"
            save_file(g, str(path))
            files.append(Contribution(path))
        aggregate(
            files,
            momentum_path=tmp_path / "m",
            update_path=tmp_path / "u",
            step=step,
            first_round=rnd == 1,
        )
        update = load_file(str(tmp_path / "u"))
        g_mean = {k: np.mean([t[k].float().numpy() for t in tensors], axis=0) for k in ("a", "b")}
        m = g_mean if m is None else {k: 0.9 * m[k] + g_mean[k] for k in g_mean}
        for k in ("a", "b"):
            expected = 0.7 * (0.9 * m[k] + g_mean[k])
            assert update[k].dtype == wire
            assert update[k].shape == tensors[0][k].shape
            tolerance = 1e-6 if dtype == "float32" else 2e-2
            np.testing.assert_allclose(
                update[k].float().numpy(), expected, rtol=tolerance, atol=tolerance
            )


def test_a_followed_update_reports_only_final_bytes_and_ends_at_its_planned_size(
    tmp_path: Path,
) -> None:
    """What a sender streams while the step runs: each report is at least the previous one,
    the bytes reported are already the file's final bytes (over last round's file, whose pages
    are reused), and the last report is ``update_size`` of the inputs' layout."""
    grads = {f"t{i}": torch.randn(3, 50) for i in range(6)} | {"h": torch.randn(7).half()}
    path = tmp_path / "g0.safetensors"
    save_file(grads, str(path))
    update = tmp_path / "update"
    update.write_bytes(b"\xff" * 10_000)  # last round's file, longer than this one
    seen: list[tuple[int, bytes]] = []
    threads = torch.get_num_threads()
    with update.open("rb", buffering=0) as follower:  # a buffer would keep stale bytes

        def follow(written: int) -> None:
            seen.append((written, os.pread(follower.fileno(), written, 0)))

        aggregate(
            [Contribution(path)],
            momentum_path=tmp_path / "momentum",
            update_path=update,
            step=OuterStep(),
            first_round=True,
            on_written=follow,
        )
    final = update.read_bytes()
    assert len(seen) == 1 + len(grads)  # the header, then each tensor
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)
    assert all(final.startswith(prefix) for _, prefix in seen)
    assert seen[-1][0] == len(final) == update_size(path)
    assert torch.get_num_threads() == threads  # the step's own thread count does not leak


def test_the_stream_writer_writes_what_safetensors_reads(tmp_path: Path) -> None:
    tensors = {"x": torch.arange(6.0).reshape(2, 3), "y": torch.ones(3, dtype=torch.bfloat16)}
    writer = StreamWriter(
        tmp_path / "f",
        [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()],
        {"samples": "9"},
    )
    for k, v in tensors.items():
        writer.write(k, v)
    writer.close()
    loaded = load_file(str(tmp_path / "f"))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert read_layout(tmp_path / "f").metadata == {"samples": "9"}


@pytest.mark.parametrize("digest", ["sha256", "blake3"])
def test_a_background_writer_writes_and_hashes_the_same_bytes_as_an_inline_one(
    tmp_path: Path, digest: str
) -> None:
    """Hashing and writing in a worker thread changes nothing in the file or its digest; the
    caller may reuse a buffer once the next ``write`` has returned."""
    layout = [(f"t{i}", torch.float32, (1000,)) for i in range(5)]
    inline = StreamWriter(tmp_path / "a", layout, digest=digest)  # type: ignore[arg-type]
    threaded = StreamWriter(tmp_path / "b", layout, digest=digest, background=True)  # type: ignore[arg-type]
    buffers = [torch.empty(1000), torch.empty(1000)]
    for i, (name, _, _) in enumerate(layout):
        value = buffers[i % 2].fill_(float(i))  # two buffers, alternating, as the PS does
        inline.write(name, value)
        threaded.write(name, value)
    inline.close()
    threaded.close()
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert inline.hexdigest() == threaded.hexdigest()
    assert torch.equal(load_file(str(tmp_path / "b"))["t3"], torch.full((1000,), 3.0))


def test_a_discarded_writer_leaves_no_file_and_a_tensor_reader_reads_what_was_written(
    tmp_path: Path,
) -> None:
    layout = [("a", torch.float32, (4,)), ("b", torch.float16, (2, 3))]
    writer = StreamWriter(tmp_path / "gone", layout, background=True)
    writer.write("a", torch.ones(4))
    writer.discard()
    assert not (tmp_path / "gone").exists()

    tensors = {"a": torch.arange(4.0), "b": torch.full((2, 3), 0.5, dtype=torch.float16)}
    writer = StreamWriter(tmp_path / "kept", layout, {"samples": "3"}, digest=None)
    for name, value in tensors.items():
        writer.write(name, value)
    writer.close()
    reader = TensorReader(tmp_path / "kept")
    scratch = torch.empty(64, dtype=torch.uint8)
    try:
        assert torch.equal(reader.read_into("b", scratch).view(2, 3), tensors["b"])
        assert torch.equal(reader.read_into("a", scratch), tensors["a"])
    finally:
        reader.close()
    with pytest.raises(ValueError, match="digest=None"):
        writer.hexdigest()


# -- the scheduler's rounds ------------------------------------------------------------------


def _reply(effects: list[fx.Effect]) -> tuple[str, int]:
    (reply,) = [e for e in effects if isinstance(e, fx.ReplyProgress)]
    return reply.reply, reply.counter


def test_golden_batch_scheduler_trace() -> None:
    """§16.5: target 800, batches 150/100/50; replies and times exactly as the original's test."""
    world = placed_diloco(3, batches=(150, 100, 50), rounds=2, samples=800, max_batch_size=600)
    world.state.tracker.round_start = world.mono  # the trace's clock starts here
    w1, w2, w3 = "T0", "T1", "T2"
    steps = [
        (w3, 50, 0.5, ("continue", 0)),
        (w2, 100, 0.3, ("continue", 0)),
        (w1, 150, 0.15, ("continue", 0)),
        (w3, 50, 0.05, ("schedule_update", 2)),
        (w3, 50, 0.5, ("continue", 0)),
        (w2, 100, 0.1, ("schedule_update", 1)),
        (w1, 150, 0.3, ("schedule_update", 0)),
        (w3, 50, 0.1, ("continue", 0)),
        (w2, 100, 0.1, ("continue", 0)),
    ]
    for lease, batch, advance, expected in steps:
        world.mono += advance
        assert _reply(progress(world, lease, "status", batch)) == expected, (lease, world.mono)
    for lease in (w1, w2, w3):
        assert _reply(progress(world, lease, "update")) == ("ok", 0)
    assert _reply(progress(world, "PS", "updated")) == ("ok", 0)
    for lease in (w1, w2, w3):
        assert _reply(progress(world, lease, "update-received")) == ("continue", 0)
    tracker = world.state.tracker
    assert (tracker.round, tracker.counter) == (2, 800)
    assert {r.phase for r in world.state.records["training"].values()} == {"training"}


def test_an_update_received_before_the_ps_said_updated_waits_and_then_hears_done() -> None:
    """B4: in the last round, a worker's update-received that overtakes the parameter server's
    ``updated`` is not told Continue: it waits, and hears Done once the round closed."""
    world = placed_diloco(1, rounds=1, samples=8)
    assert _reply(progress(world, "T0", "status", 8, "w0"))[0] == "schedule_update"
    progress(world, "T0", "update")
    early = progress(world, "T0", "update-received", 0, "w1")
    assert not [e for e in early if isinstance(e, fx.ReplyProgress)]
    closed = progress(world, "PS", "updated")
    replies = [e.reply for e in closed if isinstance(e, fx.ReplyProgress)]
    assert sorted(replies) == ["done", "done"]  # the PS's answer and the held one
    assert world.state.records["training"]["T0"].phase == "done"


def test_workers_whose_global_weights_differ_fail_the_job_loudly() -> None:
    world = placed_diloco(2, rounds=3, samples=8)
    progress(world, "T0", "status", 8, "digest-a")
    effects = progress(world, "T1", "status", 8, "digest-b")
    finished = [e for e in world.effects if isinstance(e, fx.Finished)]
    assert finished
    assert not finished[0].ok
    assert "initial weights differ" in finished[0].reason
    assert [e for e in effects if isinstance(e, fx.Notice) and e.level == "error"]


def test_a_lost_training_worker_leaves_the_round_which_goes_on() -> None:
    """A worker whose job failed leaves the trackers; the other's statuses close the round."""
    world = placed_diloco(2, rounds=2, samples=16)
    job = world.job_of("T1")
    peer = world.state.records["placement"]["T1"].worker
    world.feed(ev.StatusReceived(world.token(), peer, job or "", "failed", 1))
    assert world.state.tracker.peers == ["T0"]
    replies = [_reply(progress(world, "T0", "status", 8))[0] for _ in range(2)]
    assert "schedule_update" in replies  # 16 samples from the one worker left close the round
    assert world.state.finished is None


def test_one_worker_with_outer_lr_1_and_no_momentum_is_plain_adamw(tmp_path: Path) -> None:
    """θ_local - θ_global through the PS (η 1, μ 0) and back: the global weights after each
    round equal the locally trained ones (catches sign errors in gradient, update or merge)."""
    transformers = pytest.importorskip("transformers")
    from hypha_sm.executors.diloco import global_of, lm_loss, load_into, merge, pseudo_gradient

    config = transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, tie_word_embeddings=True
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    theta = global_of(model)
    data = torch.randint(0, 64, (12, 8, 16))
    for rnd in (1, 2, 3):
        for batch in data[(rnd - 1) * 4 : rnd * 4]:
            optimizer.zero_grad()
            lm_loss(model, {"input_ids": batch}).backward()
            optimizer.step()
        local = {k: v.detach().clone() for k, v in model.named_parameters()}
        save_file(pseudo_gradient(model, theta, torch.float32), str(tmp_path / "g"))
        aggregate(
            [Contribution(tmp_path / "g")],
            momentum_path=tmp_path / "m",
            update_path=tmp_path / "u",
            step=OuterStep(learning_rate=1.0, momentum=0.0),
            first_round=rnd == 1,
        )
        merge(theta, load_file(str(tmp_path / "u")))
        load_into(model, theta)
        for name, value in local.items():
            torch.testing.assert_close(theta[name], value, rtol=0, atol=1e-6)


def test_an_update_that_does_not_fit_the_model_fails_the_merge_loudly() -> None:
    """B5: the original swallowed a failed merge and trained on with θ_local - θ_global as
    its weights; here a missing, extra or reshaped tensor is an error (the job exits 1)."""
    from hypha_sm.executors.diloco import ExecutorError, merge

    theta = {"a": torch.zeros(3), "b": torch.zeros(2)}
    for update in (
        {"a": torch.ones(3)},
        {**theta, "c": torch.ones(1)},
        {"a": torch.ones(3), "b": torch.ones(4)},
    ):
        with pytest.raises(ExecutorError):
            merge(theta, update)
    merge(theta, {"a": torch.ones(3), "b": torch.ones(2)})
    assert theta["a"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("header", "body", "why"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 8, None),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 12, "after the last"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            12,
            "overlaps",
        ),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, "gap"),
        ({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, 8, "dtype"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "size"),
    ],
)
def test_a_gradient_file_whose_layout_safetensors_would_refuse_is_refused_on_arrival(
    tmp_path: Path, header: dict[str, object], body: int, why: str | None
) -> None:
    """Found by review: overlapping or gapped tensor data passed the header check and would
    have failed the whole round later, inside the aggregation."""
    import json
    import struct

    from hypha_sm.diloco.tensors import LayoutError

    raw = json.dumps(header).encode()
    path = tmp_path / "g"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(body))
    if why is None:
        assert read_layout(path).tensors == (("a", "F32", (2,)),)
    else:
        with pytest.raises(LayoutError, match=why):
            read_layout(path)


def test_leases_that_go_with_their_jobs_after_the_last_round_do_not_fail_the_job() -> None:
    """Found in CI: after Done a worker lets the lease go with the job, and a renewal in that
    moment is refused (unknown_lease) before the job's "finished" arrives. The PS's and a
    trainer's leases ending so after the last round leave the job a success."""
    world = placed_diloco(1, rounds=1, samples=8)
    assert _reply(progress(world, "T0", "status", 8, "w0"))[0] == "schedule_update"
    progress(world, "T0", "update")
    assert _reply(progress(world, "PS", "updated"))[0] == "done"
    assert _reply(progress(world, "T0", "update-received", 0, "w1"))[0] == "done"
    world.feed(ev.RenewRefused("PS", "renewal refused: unknown_lease"))
    assert world.state.finished is None  # not "the parameter server ended"
    world.feed(ev.RenewRefused("T0", "renewal refused: unknown_lease"))
    assert world.state.finished == (True, "")


def test_a_parameter_server_lost_before_the_last_round_fails_the_job() -> None:
    world = placed_diloco(1, rounds=2, samples=8)
    world.feed(ev.RenewRefused("PS", "renewal refused: unknown_lease"))
    assert world.state.finished is not None
    assert world.state.finished[0] is False
    assert "the parameter server ended (lost" in world.state.finished[1]
