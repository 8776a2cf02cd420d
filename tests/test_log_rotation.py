"""Rotated event logs: every segment replays on its own, the series replays as one log.

A long randomized run (the explorer's seeded walks, plus hostile advertisements drawn from the
stateful test's strategies) is recorded with a tiny ``max_bytes`` into many segments; each
segment must replay with no divergence from the snapshot in its header, and the state after
replaying segment k must be exactly the snapshot that starts segment k+1.
"""

from __future__ import annotations

import json
import logging
import math
import random
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypha_sm.cli import main
from hypha_sm.core.resources import Amounts
from hypha_sm.log.codec import (
    VERSION,
    VERSION_SEGMENT,
    LogFormatError,
    decode_entry,
    decode_header,
    encode_header,
    encode_snapshot,
)
from hypha_sm.log.replay import ReplayReport, replay, replay_series
from hypha_sm.log.store import (
    RotatingLog,
    list_segments,
    make_header,
    newest_run,
    read_lines,
    read_series,
    segment_header,
)
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.worker.core.effects import SendJobStatus
from hypha_sm.roles.worker.core.events import (
    AdvertisementReceived,
    JobExited,
    JobStarted,
    RenewRequested,
    StatusDelivered,
    Tick,
)
from hypha_sm.roles.worker.core.policy import Policy
from hypha_sm.roles.worker.core.reducer import step
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.roles.worker.core.snapshot import (
    RequestSnapshot,
    Snapshot,
    capture,
    effective,
    restore,
)
from hypha_sm.roles.worker.core.state import WorkerState
from hypha_sm.runtime.loop import Stepper
from tests.explorer import Walk, policies
from tests.helpers import (
    SEED,
    TRAIN,
    Worker,
    ad,
    at,
    dispatch,
    recording,
    recording_rotating,
    renew,
)
from tests.test_stateful import AMOUNTS, BIDS, EXECUTOR_LISTS, EXPIRES_IN, HOSTILE_AMOUNTS

LOGS = Path(__file__).resolve().parent.parent / "specs" / "logs"

#: The explorer's move weights without the operator's shutdown (a stopped node does little).
BUSY = (30, 2, 40, 24, 12, 40, 16, 0, 35, 2)
COOPERATIVE = (20, 0.5, 40, 30, 10, 60, 40, 0, 25, 1)
PLAIN = Policy(capacity=Amounts(cpu=1.0))


def random_run(
    seed: int,
    steps: int,
    *,
    n: int = 0,
    hostile: Iterable[tuple[int, AdvertisementReceived]] = (),
) -> Worker:
    """A seeded explorer walk of ``steps`` moves, shutdown at the end; ``hostile`` ads injected
    before the given moves (their ``expires_wall`` is relative to the walk's clock)."""
    rng = random.Random(f"rotation-{seed}-{n}")
    pol = policies()[n % 3]
    w = Walk(rng, Worker(pol, seed=rng.randbytes(16)))
    if n % 2:
        w.weights, w.big_jumps, w.invalid_share = COOPERATIVE, 0.05, 0.1
    else:
        w.weights = BUSY
    injections = dict(hostile)
    for i in range(steps):
        if i in injections:
            event = injections[i]
            w.feed(
                msgspec.structs.replace(
                    event, expires_wall=event.expires_wall + at(w.worker.t).wall
                )
            )
        w.move()
    w.feed(Tick(), w.worker.t + 0.1)
    w.feed(RenewRequested("after-shutdown?", "p", 1))
    return w.worker


def record(
    worker: Worker,
    directory: Path,
    *,
    max_bytes: int,
    keep: int = 1_000_000,
    between: Callable[[WorkerState], object] | None = None,
) -> Stepper[WorkerState]:
    """Feed the run's inputs through a rotating recorder; check it returns the same effects."""
    eng, machines_hash = load_engine(WORKER)
    seed = worker.state.ids.seed
    with recording_rotating(
        directory, eng, machines_hash, worker.policy, seed, max_bytes=max_bytes, keep=keep
    ) as rec:
        for (now, event), live in zip(worker.inputs, worker.outputs, strict=True):
            assert rec.feed(event, now).effects == live.effects
            if between is not None:
                between(rec.state)
    return rec


def read_back(state: WorkerState) -> Snapshot:
    """The state's snapshot as it reads back from a segment header."""
    header = segment_header(
        "h", PLAIN, SEED, run="r", segment=2, previous="p", after_seq=1, snapshot=capture(state)
    )
    snapshot = decode_header(encode_header(header, WORKER), WORKER).snapshot
    assert snapshot is not None
    return snapshot


def canonical(state: WorkerState) -> bytes:
    """The state as bytes that compare equal exactly when the states are the same (NaN too)."""
    return encode_snapshot(read_back(state), WORKER)


def effective_bytes(state: WorkerState) -> bytes:
    """The same, with the deadline heap reduced to the entries that can still fire."""
    return encode_snapshot(effective(read_back(state)), WORKER)


def check_segments(paths: list[Path], expected_entries: int) -> list[ReplayReport]:
    """Each segment replays alone with no divergence; its end state is the next one's snapshot;
    the whole series replays as one log."""
    eng, machines_hash = load_engine(WORKER)
    reports: list[ReplayReport] = []
    entries = 0
    for k, path in enumerate(paths):
        lines = list(read_lines(path))
        header = decode_header(lines[0], WORKER)
        report = replay(lines, eng, machines_hash, role=WORKER)
        assert report.ok, (path.name, report.divergence, report.error)
        assert report.events == len(lines) - 1
        assert report.last_seq == header.after_seq + report.events
        entries += report.events
        if k > 0:
            previous = reports[-1]
            assert header.snapshot is not None
            assert header.previous == paths[k - 1].name
            assert header.after_seq == previous.last_seq
            assert canonical(previous.state) == encode_snapshot(header.snapshot, WORKER), path.name
        reports.append(report)
    assert entries == expected_entries
    series = replay_series(read_series(paths), eng, machines_hash, role=WORKER)
    assert series.ok, (series.divergence, series.error)
    assert (series.segments, series.events, series.last_seq) == (len(paths), entries, entries)
    assert canonical(series.state) == canonical(reports[-1].state)
    return reports


# -- the main property --------------------------------------------------------------------


@pytest.mark.parametrize("n", range(6), ids=lambda n: f"walk{n}")
def test_a_long_random_run_in_tiny_segments_replays_segment_by_segment(
    n: int, tmp_path: Path
) -> None:
    """2,500 random moves at max_bytes=3000: dozens of segments, each replays on its own with
    no divergence, segment k ends in the state segment k+1's header holds, the series replays."""
    worker = random_run(n, 2_500, n=n)
    rec = record(worker, tmp_path, max_bytes=3_000)
    paths = list_segments(tmp_path)
    assert len(paths) == rec.recorder.rotating.index >= 20  # type: ignore[union-attr]
    check_segments(paths, len(worker.inputs))
    # The recorder's state at the end is exactly what the last segment replays to; the
    # explorer's own state too, but for stale deadline entries it popped with next_deadline.
    eng, machines_hash = load_engine(WORKER)
    last = replay(list(read_lines(paths[-1])), eng, machines_hash, role=WORKER)
    assert canonical(last.state) == canonical(rec.state)
    assert effective_bytes(last.state) == effective_bytes(worker.state)


hostile_ads = st.builds(
    lambda rid, resources, executors, bid, expires_in: AdvertisementReceived(
        request_id=rid,
        scheduler="12D3KooWScheduler",
        reply_address="tcp://127.0.0.1:7000",
        resources=resources,
        executors=executors,
        bid=bid,
        expires_wall=expires_in,
    ),
    st.sampled_from(["h-1", "h-2", "h-3", "ad-1", "ad-5"]),
    st.one_of(AMOUNTS, HOSTILE_AMOUNTS),
    EXECUTOR_LISTS,
    BIDS,
    EXPIRES_IN,
)


@settings(max_examples=40)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 5),
    steps=st.integers(20, 400),
    max_bytes=st.sampled_from([1, 500, 4_000]),
    hostile=st.lists(st.tuples(st.integers(0, 400), hostile_ads), max_size=12),
)
def test_any_random_run_with_hostile_ads_replays_segment_by_segment(
    seed: int,
    n: int,
    steps: int,
    max_bytes: int,
    hostile: list[tuple[int, AdvertisementReceived]],
) -> None:
    """Whatever the walk and the hostile advertisements (NaN/inf bids, amounts, expiries held
    in the window when a segment starts), every segment replays and continues the previous."""
    worker = random_run(seed, steps, n=n, hostile=hostile)
    with tempfile.TemporaryDirectory() as tmp:
        record(worker, Path(tmp), max_bytes=max_bytes)
        check_segments(list_segments(Path(tmp)), len(worker.inputs))


def test_a_snapshot_restores_a_state_that_continues_exactly_at_every_step() -> None:
    """After every step of a random run, a state restored from the encoded snapshot steps the
    next input to the same effects and trace, and ends in the same state as the live one."""
    eng, _ = load_engine(WORKER)
    hostile = [(i, ad(f"bad-{i}", bid=math.nan, gpu=math.inf)) for i in range(0, 600, 37)]
    worker = random_run(11, 600, n=2, hostile=hostile)
    inputs = worker.inputs
    live = Worker(worker.policy, seed=worker.state.ids.seed)
    checked_nonfinite = False
    for now, event in inputs:
        line = encode_header(
            segment_header(
                "h",
                live.policy,
                live.state.ids.seed,
                run="r",
                segment=2,
                previous="p",
                after_seq=1,
                snapshot=capture(live.state),
            ),
            WORKER,
        )
        header = decode_header(line, WORKER)
        checked_nonfinite |= b'"nan"' in line
        assert header.snapshot is not None
        shadow = restore(header.snapshot, eng, live.policy, live.state.ids.seed)
        assert canonical(shadow) == canonical(live.state)
        expected = live.feed(event, now.mono)
        actual = step(shadow, event, now)
        assert actual.effects == expected.effects
        assert actual.trace == expected.trace
        assert canonical(shadow) == canonical(live.state)
    assert checked_nonfinite


# -- how segments are cut and kept --------------------------------------------------------


def _segment_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_a_segment_is_closed_once_it_holds_max_bytes(tmp_path: Path) -> None:
    """Every segment but the last holds at least max_bytes and ends with the entry that crossed
    it; each header names its run, number, predecessor and the seq it continues from."""
    worker = random_run(3, 400, n=3)
    rec = record(worker, tmp_path, max_bytes=5_000)
    paths = list_segments(tmp_path)
    assert len(paths) > 3
    seq = 0
    for k, path in enumerate(paths, start=1):
        lines = _segment_lines(path)
        header = decode_header(lines[0], WORKER)
        assert header.version == VERSION_SEGMENT
        assert rec.recorder.rotating is not None
        assert (header.run, header.segment, header.after_seq) == (
            rec.recorder.rotating.run,
            k,
            seq,
        )
        assert header.previous == (paths[k - 2].name if k > 1 else None)
        assert (header.snapshot is None) == (k == 1)
        size = sum(map(len, lines))
        limit = max(5_000, 2 * len(lines[0]))
        if k < len(paths):
            assert size >= limit > size - len(lines[-1])
        seq += len(lines) - 1
    assert seq == len(worker.inputs)


def test_a_snapshot_larger_than_max_bytes_does_not_make_every_input_rotate(
    tmp_path: Path,
) -> None:
    """With max_bytes=1 a segment still carries entries worth at least its header's size, so a
    big state is not rewritten after every input."""
    worker = random_run(5, 300, n=0)
    record(worker, tmp_path, max_bytes=1)
    for path in list_segments(tmp_path)[:-1]:
        lines = _segment_lines(path)
        assert len(lines) >= 2
        assert sum(map(len, lines[1:])) >= len(lines[0])


def test_only_the_newest_keep_segments_stay_and_each_deletion_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """keep=3: segments of earlier runs (same prefix, even one whose name sorts later), then
    this run's oldest, are deleted, with a log line each; other files are left alone."""
    earlier = [tmp_path / f"worker-20000101T000000.000000Z-deadbeef-{i:06d}.jsonl" for i in (1, 2)]
    # A run dated in the future (the clock went back since) is still older than this one.
    earlier.append(tmp_path / "worker-99991231T235959.999999Z-deadbeef-000001.jsonl")
    untouched = [
        tmp_path / "worker-1700000000-0a1b2c3d.jsonl",  # an unrotated log of an older version
        tmp_path / "scheduler-20000101T000000.000000Z-deadbeef-000001.jsonl",  # another prefix
        tmp_path / "notes.txt",
    ]
    for path in earlier + untouched:
        path.write_bytes(b"x\n")
    worker = random_run(4, 400, n=1)
    with caplog.at_level(logging.INFO, logger="hypha_sm.log.store"):
        rec = record(worker, tmp_path, max_bytes=3_000, keep=3)
    rotating = rec.recorder.rotating
    assert rotating is not None
    kept = list_segments(tmp_path)
    assert [p.name for p in kept] == [
        rotating.segment_name(i) for i in range(rotating.index - 2, rotating.index + 1)
    ]
    assert rotating.deleted[:3] == earlier
    assert rotating.deleted[3:] == [
        tmp_path / rotating.segment_name(i) for i in range(1, rotating.index - 2)
    ]
    assert all(p.exists() for p in untouched)
    deletions = [r.getMessage() for r in caplog.records if "deleted" in r.getMessage()]
    assert len(deletions) == len(rotating.deleted)
    assert all(str(p) in m for p, m in zip(rotating.deleted, deletions, strict=True))
    # What is left still replays: the oldest kept segment starts from its snapshot.
    check_segments_from_middle(kept)


def check_segments_from_middle(paths: list[Path]) -> None:
    eng, machines_hash = load_engine(WORKER)
    report = replay_series(read_series(paths), eng, machines_hash, role=WORKER)
    assert report.ok
    assert report.segments == len(paths)


def test_list_segments_orders_runs_by_start_time_and_segments_by_number(tmp_path: Path) -> None:
    """Oldest first: run start time (to the microsecond), then segment number as a number."""
    names = [
        "worker-20261124T120000.000009Z-ffffffff-000002.jsonl",
        "worker-20261124T120000.000009Z-ffffffff-000010.jsonl",
        "worker-20251124T235959.999999Z-00000000-000001.jsonl",
        "worker-20261124T120000.000010Z-00000000-1000000.jsonl",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_segments(tmp_path)] == [names[2], names[0], names[1], names[3]]
    assert [
        p.name for p in list_segments(tmp_path, run="20261124T120000.000009Z-ffffffff")
    ] == names[:2]
    assert [p.name for p in newest_run(tmp_path)] == [names[3]]
    assert newest_run(tmp_path / "missing") == []


def test_the_newest_run_in_a_directory_replays_as_one_series(tmp_path: Path) -> None:
    """After an earlier run, newest_run picks the last run's segments and they replay as one."""
    record(random_run(12, 150, n=1), tmp_path, max_bytes=2_000)
    earlier = set(list_segments(tmp_path))
    worker = random_run(13, 300, n=1)
    rec = record(worker, tmp_path, max_bytes=2_000)
    latest = newest_run(tmp_path)
    assert rec.recorder.rotating is not None
    assert latest == [
        tmp_path / rec.recorder.rotating.segment_name(i + 1) for i in range(len(latest))
    ]
    assert not earlier & set(latest)
    eng, machines_hash = load_engine(WORKER)
    report = replay_series(read_series(latest), eng, machines_hash, role=WORKER)
    assert report.ok
    assert report.last_seq == len(worker.inputs)


# -- crash safety and failures -------------------------------------------------------------


def test_every_entry_is_in_the_file_before_feed_returns_its_effects(tmp_path: Path) -> None:
    """The crash-safety property survives rotation: after feed returns (and a flush), the
    current segment's last line is that input with the effects about to be performed."""
    eng, machines_hash = load_engine(WORKER)
    worker = random_run(6, 150, n=1)
    with recording_rotating(
        tmp_path, eng, machines_hash, worker.policy, worker.state.ids.seed, max_bytes=2_000
    ) as rec:
        for seq, (now, event) in enumerate(worker.inputs, start=1):
            result = rec.feed(event, now)
            rec.recorder.flush()
            assert rec.recorder.path is not None
            entry = decode_entry(_segment_lines(rec.recorder.path)[-1], 0, WORKER)
            assert (entry.seq, entry.effects) == (seq, list(result.effects))
        assert rec.recorder.rotating is not None
        assert rec.recorder.rotating.index > 3


def test_a_rotation_that_fails_leaves_the_log_in_its_current_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """If the next segment cannot be created, feed still steps and writes the entry to the
    current segment (the node never stops for its log); the rotation is tried again on the
    next input, and the series replays."""
    eng, machines_hash = load_engine(WORKER)
    worker = random_run(7, 200, n=1)
    rec = recording_rotating(
        tmp_path,
        eng,
        machines_hash,
        worker.policy,
        worker.state.ids.seed,
        max_bytes=2_000,
        keep=1_000,
    )
    rotating = rec.recorder.rotating
    assert rotating is not None
    blocked = False
    with rec:
        for now, event in worker.inputs:
            if rotating.full and not blocked:
                blocker = tmp_path / rotating.segment_name(rotating.index + 1)
                blocker.write_bytes(b"")
                index, seq = rotating.index, rec.recorder.seq
                rec.feed(event, now)
                assert (rotating.index, rec.recorder.seq) == (
                    index,
                    seq + 1,
                )  # stepped, same segment
                assert "event log: [Errno 17] File exists" in caplog.text
                assert not rec.recorder.failing  # the entry itself was written
                blocker.unlink()
                blocked = True
                continue
            rec.feed(event, now)
    assert blocked
    check_segments(list_segments(tmp_path), len(worker.inputs))


def test_stale_timers_popped_by_the_shell_do_not_break_the_series(tmp_path: Path) -> None:
    """The node calls next_deadline between steps, which drops stale heap entries a replay
    keeps; segments still replay and the series sees no difference at the boundaries."""
    worker = random_run(8, 1_000, n=1)
    record(worker, tmp_path, max_bytes=2_000, between=lambda state: state.next_deadline())
    eng, machines_hash = load_engine(WORKER)
    paths = list_segments(tmp_path)
    for path in paths:
        assert replay(list(read_lines(path)), eng, machines_hash, role=WORKER).ok
    series = replay_series(read_series(paths), eng, machines_hash, role=WORKER)
    assert series.ok, series.divergence
    assert series.segments == len(paths) > 5


# -- replaying series: broken links and tampered snapshots -----------------------------------


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    record(random_run(9, 300, n=1), tmp_path, max_bytes=2_000)
    paths = list_segments(tmp_path)
    assert len(paths) >= 4
    return paths


def test_a_missing_segment_in_a_series_is_a_format_error(series: list[Path]) -> None:
    """Replaying segments 1, 2, 4 stops at 4: it does not continue 2."""
    eng, machines_hash = load_engine(WORKER)
    with pytest.raises(LogFormatError, match=r"does not continue.*segment 4 follows 2"):
        replay_series(
            read_series([series[0], series[1], series[3]]), eng, machines_hash, role=WORKER
        )


def test_a_tampered_snapshot_is_a_divergence_at_the_segment_boundary(series: list[Path]) -> None:
    """A snapshot that is not the state the replay reached is reported at its after_seq, with
    the differing fields; the segment alone still replays (from what its header says)."""
    lines = _segment_lines(series[2])
    raw = json.loads(lines[0])
    raw["snapshot"]["arrivals"] += 1
    lines[0] = json.dumps(raw).encode() + b"\n"
    eng, machines_hash = load_engine(WORKER)
    report = replay_series(
        [(p.name, _segment_lines(p) if i != 2 else lines) for i, p in enumerate(series)],
        eng,
        machines_hash,
        role=WORKER,
    )
    assert report.divergence is not None
    d = report.divergence.to_builtins()
    assert d["seq"] == raw["after_seq"]
    assert d["event"] == {"segment": series[2].name, "check": "snapshot", "fields": ["arrivals"]}
    assert d["expected"]["arrivals"] == d["actual"]["arrivals"] + 1
    assert replay(lines, eng, machines_hash, role=WORKER).ok


# -- the format: v1 stays valid, v2 is checked ---------------------------------------------


def test_v1_logs_still_read_and_plain_recorders_still_write_v1(tmp_path: Path) -> None:
    """The golden v1 logs decode with no segment fields; a Recorder on a plain file writes the
    same v1 header as before (no new keys)."""
    for path in sorted(LOGS.glob("*.jsonl")):
        header = decode_header(_segment_lines(path)[0], WORKER)
        assert header.version == VERSION
        assert (header.run, header.segment, header.snapshot, header.after_seq) == (
            None,
            None,
            None,
            0,
        )
    eng, machines_hash = load_engine(WORKER)
    with (tmp_path / "plain.jsonl").open("wb") as sink:
        recording(sink, eng, machines_hash, Worker().policy, SEED).feed(Tick(), at(0.0))
    first = json.loads(_segment_lines(tmp_path / "plain.jsonl")[0])
    assert sorted(first) == [
        "engine_version",
        "format",
        "machines_hash",
        "policy",
        "seed",
        "version",
    ]
    assert first["version"] == 1


def _header_json(**fields: object) -> bytes:
    base = msgspec.to_builtins(make_header("h", Worker().policy, SEED))
    return json.dumps({**base, **fields}).encode()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"run": "r"}, "version 1 header has version 2"),
        ({"version": 3}, "version 3 is not supported"),
        ({"version": 2}, "needs run and segment"),
        ({"version": 2, "run": "r", "segment": 0}, "out of range"),
        ({"version": 2, "run": "r", "segment": 2, "after_seq": 5}, "no snapshot"),
        ({"version": 2, "run": "r", "segment": 1, "nonfinite": True}, "no snapshot"),
    ],
)
def test_inconsistent_headers_are_refused(fields: dict[str, object], message: str) -> None:
    """Segment fields in a v1 header, unknown versions, and v2 headers that cannot start a
    replay are LogFormatErrors."""
    with pytest.raises(LogFormatError, match=message):
        decode_header(_header_json(**fields), WORKER)


def test_a_snapshot_whose_phase_is_unknown_is_refused() -> None:
    """Restoring checks the records against the machines: a phase no machine declares is a
    format error, not a crash later in the replay."""
    worker = Worker()
    worker.feed(ad("a"), 0.0)
    lease = worker.tick(0.2).effects[0].lease_id  # type: ignore[union-attr]
    worker.feed(renew(lease), 0.3)
    worker.feed(dispatch(lease), 0.4)
    snap = msgspec.to_builtins(capture(worker.state))
    for rec in snap["records"]:
        if rec["kind"] == "job":
            rec["phase"] = "levitating"
    header = _header_json(
        version=2, run="r", segment=2, after_seq=4, snapshot=snap, nonfinite=True
    )
    eng, machines_hash = load_engine(WORKER)
    with pytest.raises(LogFormatError, match="job 'job-1' in unknown or final phase"):
        replay([header.replace(b"Infinity", b'"inf"')], eng, machines_hash, role=WORKER)


def test_nonfinite_values_held_in_the_window_survive_a_snapshot(tmp_path: Path) -> None:
    """A hostile ad (NaN bid, infinite gpu, NaN expiry) waiting in the window when a segment
    starts comes back bit for bit, and its decline replays identically."""
    eng, machines_hash = load_engine(WORKER)
    hostile = msgspec.structs.replace(
        ad("evil", bid=math.nan, gpu=math.inf), expires_wall=math.nan
    )
    with recording_rotating(tmp_path, eng, machines_hash, Worker().policy, SEED) as rec:
        rec.feed(ad("good", cpu=2.0), at(0.0))
        rec.feed(hostile, at(0.05))
        second = rec.recorder.rotate()
        rec.feed(Tick(), at(0.2))
    header = decode_header(_segment_lines(second)[0], WORKER)
    assert header.nonfinite
    assert header.snapshot is not None
    evil = next(r for r in header.snapshot.records if r.key == "evil")
    assert isinstance(evil, RequestSnapshot)
    assert math.isnan(evil.bid)
    assert math.isnan(evil.expires_mono)
    assert evil.amounts.gpu == math.inf
    report = replay(_segment_lines(second), eng, machines_hash, role=WORKER)
    assert report.ok
    assert report.state.counters["declined.invalid_bid"] == 1


def test_cli_replays_a_snapshot_segment_and_refuses_until_before_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hypha-sm replay SEGMENT` works on a later segment unchanged; `--until` before the
    segment's start is an unreadable-log error (exit 2) that says which seq it starts after."""
    record(random_run(10, 300, n=1), tmp_path, max_bytes=2_000)
    paths = list_segments(tmp_path)
    middle = paths[len(paths) // 2]
    after = decode_header(_segment_lines(middle)[0], WORKER).after_seq
    assert main(["replay", str(middle), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is True
    assert summary["events"] == len(_segment_lines(middle)) - 1
    assert main(["replay", str(middle), "--until", str(after + 1)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["now"]["mono"] >= 0
    assert main(["replay", str(middle), "--until", str(max(0, after - 1))]) == 2
    assert f"starts after seq {after}" in capsys.readouterr().err


def test_a_rotating_log_cannot_be_shared_and_a_plain_recorder_cannot_rotate(
    tmp_path: Path,
) -> None:
    """One RotatingLog per recorder; rotate() on a plain file is a ValueError."""
    eng, machines_hash = load_engine(WORKER)
    log = RotatingLog(tmp_path, "w", max_bytes=100, keep=2)
    with recording(log, eng, machines_hash, Worker().policy, SEED) as first:
        assert first.recorder.path == tmp_path / log.segment_name(1)
        with pytest.raises(ValueError, match="already has segments"):
            recording(log, eng, machines_hash, Worker().policy, SEED)
    with (tmp_path / "plain.jsonl").open("wb") as sink:
        plain = recording(sink, eng, machines_hash, Worker().policy, SEED)
        assert plain.recorder.path is None
        with pytest.raises(ValueError, match="cannot rotate"):
            plain.recorder.rotate()
    with pytest.raises(ValueError, match="prefix"):
        RotatingLog(tmp_path, prefix="a/b")
    for max_bytes, keep in ((0, 1), (1, 0)):
        with pytest.raises(ValueError, match="expected both >= 1"):
            RotatingLog(tmp_path, max_bytes=max_bytes, keep=keep)


def test_a_segment_that_starts_with_a_job_in_flight_replays_its_end(tmp_path: Path) -> None:
    """A segment that starts while a job runs under an accepted lease replays, from the
    snapshot alone, the lease's expiry, the stop, the exit, the report and the release."""
    eng, machines_hash = load_engine(WORKER)
    worker = Worker()
    worker.feed(ad("a", cpu=2.0), 0.0)
    lease = worker.tick(0.2).effects[0].lease_id  # type: ignore[union-attr]
    worker.feed(renew(lease), 0.3)
    worker.feed(dispatch(lease, executor=TRAIN), 0.4)
    worker.feed(JobStarted("job-1"), 0.5)
    with recording_rotating(tmp_path, eng, machines_hash, worker.policy, SEED) as rec:
        for now, event in worker.inputs:
            rec.feed(event, now)
        second = rec.recorder.rotate()
        effects = [rec.feed(Tick(), at(12.0)).effects]  # no renewal: the lease expires
        effects.append(rec.feed(JobExited("job-1", -15), at(13.0)).effects)
        effects.append(rec.feed(StatusDelivered("job-1", "cancelled"), at(13.5)).effects)
    assert [type(e).__name__ for e in effects[0]] == ["StopJob"]
    assert [type(e).__name__ for e in effects[1]] == ["SendJobStatus"]
    assert isinstance(effects[1][0], SendJobStatus)
    assert effects[1][0].status == "cancelled"
    report = replay(_segment_lines(second), eng, machines_hash, role=WORKER)
    assert report.ok
    assert report.events == 3
    assert report.state.counters["lease.released.expired"] == 1
    assert not report.state.reservations
    assert not report.state.records["lease"]
    assert not report.state.records["job"]
