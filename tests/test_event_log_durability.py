"""The event log survives a crash: every entry reaches the OS before its effects run.

Before: entries waited in a 64 KiB user-space buffer written only at shutdown, so a worker
that ran 3 jobs over 11 minutes had only its header on disk after ``kill -9``. Now each entry
is one ``write`` straight to the file; ``event_log_fsync`` decides when it also reaches the
disk (never / once per loop wake-up that produced effects / always); files are 0600 in a 0700
directory; a log cut mid-line replays its complete entries and says the last line is partial.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import msgspec
import pytest
import trio

from hypha_sm.cli import main
from hypha_sm.log.replay import replay, replay_series
from hypha_sm.log.store import newest_run, read_lines, read_series
from hypha_sm.machines_io import load_engine
from hypha_sm.net.transport import Endpoint, NetError
from hypha_sm.roles.worker.core.effects import (
    ReplyDispatched,
    ReplyDispatchFailed,
    ReplyRenewed,
    ReplyRenewFailed,
    SendJobStatus,
    SendOffer,
)
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.roles.worker.core.state import WorkerState
from hypha_sm.runtime.loop import Stepper
from hypha_sm.wire import messages as m
from hypha_sm.wire.identity import Identity
from tests.helpers import SEED, Worker, ad, at, recording_rotating, remove_leftover_cgroups, renew
from tests.netkit import running_gateway, wait_connected, wait_healthy
from tests.nodeproc import ECHO, Ear, advertise, start_node, worker_config

SCHED = Identity.from_seed(bytes([71]) * 32)
GATEWAY = Identity.from_seed(bytes([72]) * 32)
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "job.py"
TRAIN = m.Executor(cls="train", name="echo")


def _recorder(tmp_path: Path, fsync: str) -> Stepper[WorkerState]:
    engine, machines_hash = load_engine(WORKER)
    return recording_rotating(
        tmp_path / "events",
        engine,
        machines_hash,
        Worker().policy,
        SEED,
        fsync=fsync,  # type: ignore[arg-type]
    )


def _lines_on_disk(rec: Stepper[WorkerState]) -> list[bytes]:
    """What another process reading the file sees now."""
    assert rec.recorder.path is not None
    return rec.recorder.path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize(
    ("fsync", "syncs_per_entry", "syncs_after_batch_call"),
    [("never", 0, 0), ("batch", 0, 1), ("always", 1, 1)],
)
def test_each_entry_reaches_the_os_inside_feed_and_the_disk_per_policy(
    tmp_path: Path, fsync: str, syncs_per_entry: int, syncs_after_batch_call: int
) -> None:
    """Whatever the policy, the line is in the file when ``feed`` returns (another reader sees
    it); ``always`` syncs each entry, ``batch`` only when the loop asks, ``never`` never."""
    rec = _recorder(tmp_path, fsync)
    worker = Worker()
    assert len(_lines_on_disk(rec)) == 1  # the header
    for n, t in enumerate((0.0, 0.05, 0.1), start=1):
        rec.feed(ad(f"req-{n}", t=t), at(t))
        assert len(_lines_on_disk(rec)) == 1 + n
        assert rec.recorder.syncs == n * syncs_per_entry
    rec.recorder.sync()
    assert rec.recorder.syncs == 3 * syncs_per_entry + (
        syncs_after_batch_call if fsync == "batch" else 0
    )
    rec.recorder.sync()  # nothing new to push
    assert rec.recorder.syncs == 3 * syncs_per_entry + (
        syncs_after_batch_call if fsync == "batch" else 0
    )
    rec.close()
    _ = worker


def test_log_files_are_private_to_the_node(tmp_path: Path) -> None:
    """Segments hold the id seed and job specs: 0600 files in a 0700 directory, even when the
    directory existed with wider permissions."""
    (tmp_path / "events").mkdir(mode=0o755)
    os.chmod(tmp_path / "events", 0o755)
    with _recorder(tmp_path, "batch") as rec:
        rec.feed(ad("req-1"), at(0.0))
        rec.recorder.rotate()
        segments = list((tmp_path / "events").iterdir())
    assert len(segments) == 2
    assert (tmp_path / "events").stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in segments} == {0o600}


def test_a_log_cut_mid_line_replays_its_complete_entries_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash mid-write leaves half a line: replay stops before it, reports its line number,
    and the CLI says the recording ends with the node running."""
    with _recorder(tmp_path, "never") as rec:
        rec.feed(ad("req-1"), at(0.0))
        offer = rec.feed(renew("nope"), at(0.1))
        rec.feed(ad("req-2", t=0.2), at(0.2))
        path = rec.recorder.path
    assert path is not None
    assert offer.effects
    data = path.read_bytes()
    cut = path.with_name("cut.jsonl")
    cut.write_bytes(data[: len(data) - 7])  # the last entry loses its tail and its newline
    engine, machines_hash = load_engine(WORKER)
    report = replay(read_lines(cut), engine, machines_hash, role=WORKER)
    assert report.ok
    assert report.events == 2
    assert report.partial_line == 4
    assert not report.node_stopped
    assert main(["replay", str(cut)]) == 0
    out = capsys.readouterr().out
    assert "line 4 is partial" in out
    assert "ends with the node running" in out


def test_a_header_cut_short_is_named_as_such(tmp_path: Path) -> None:
    """A crash while writing the very first line is a clear error, not a JSON message."""
    from hypha_sm.log.codec import LogFormatError

    engine, machines_hash = load_engine(WORKER)
    with pytest.raises(LogFormatError, match="header is partial"):
        replay([b'{"format":"hypha-sm/event-'], engine, machines_hash, role=WORKER)


def test_a_failed_write_leaves_no_half_line(tmp_path: Path) -> None:
    """If a write fails part-way (a full disk), the file is cut back to the last whole line,
    so the next entry does not continue a broken one."""
    rec = _recorder(tmp_path, "never")
    rec.feed(ad("req-1"), at(0.0))
    assert rec.recorder.rotating is not None
    assert rec.recorder.path is not None
    good = rec.recorder.path.read_bytes()
    real_write = os.write
    calls = 0

    def short_then_enospc(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data)[:10])
        raise OSError(28, "No space left on device")

    os.write = short_then_enospc  # type: ignore[assignment]
    try:
        with pytest.raises(OSError, match="No space"):
            rec.recorder.rotating.write(b'{"seq":2,"x":"' + b"y" * 100 + b'"}\n')
    finally:
        os.write = real_write
    assert rec.recorder.path.read_bytes() == good
    rec.close()


# -- a real worker process, killed with SIGKILL while busy ---------------------------------------


@pytest.mark.net
@pytest.mark.slow
async def test_kill_9_of_a_busy_worker_loses_no_entry_of_anything_the_outside_saw(
    tmp_path: Path,
) -> None:
    """Advertisements, offers, acceptances, renewals, dispatches and job statuses flow for a
    few seconds; then SIGKILL. Every offer, renewal answer, dispatch answer and job status
    the scheduler received has its effect in the log, and the log replays."""
    ear = Ear()
    seen_offers, seen_statuses = ear.offers, ear.statuses
    seen_answers: list[m.Message] = []
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        with Endpoint(SCHED) as sched, sched.publisher(dial=[gw.ingest]) as pub:
            sched_address = await nursery.start(sched.serve, "tcp://127.0.0.1:0", ear.handle)
            config = worker_config(tmp_path, tmp_path / "work", gw.listen, ["exit", "0"])
            node, worker = await start_node(config, tmp_path / "node.log")
            try:
                with trio.fail_after(60):
                    await wait_connected(pub)
                    await wait_healthy(sched, worker)
                    started = trio.current_time()
                    n = handled = 0
                    while trio.current_time() - started < 4.0:
                        n += 1
                        await advertise(pub, SCHED, f"req-{n}", sched_address)
                        await trio.sleep(0.05)
                        # Accept every offer (a scheduler that lets offers lapse is backed off).
                        for offer in seen_offers[handled:]:
                            handled += 1
                            for request in (
                                m.RenewLease(offer.lease_id),
                                m.DispatchJob(f"job-{handled}", offer.lease_id, ECHO, "{}"),
                                m.RenewLease(offer.lease_id),
                            ):
                                try:
                                    answer = await sched.request(worker, request, timeout=5)
                                except NetError:
                                    continue
                                seen_answers.append(answer.message)
                    node.send_signal(signal.SIGKILL)
                    await node.wait()
            finally:
                if node.returncode is None:
                    node.kill()
            nursery.cancel_scope.cancel()
    remove_leftover_cgroups(tmp_path / "work")  # what the node's restart would do

    segments = newest_run(tmp_path / "work" / "events")
    effects: list[object] = []
    for segment in segments:
        for line in read_lines(segment):
            if line.endswith(b"\n") and b'"seq"' in line:
                effects.extend(msgspec.json.decode(line)["effects"] or [])
    by_type: dict[str, list[dict[str, object]]] = {}
    for effect in effects:
        assert isinstance(effect, dict)
        by_type.setdefault(str(effect["type"]), []).append(effect)

    def logged(kind: type, **fields: object) -> bool:
        tag = kind.__struct_config__.tag  # type: ignore[attr-defined]
        return any(all(e.get(k) == v for k, v in fields.items()) for e in by_type.get(tag, []))

    assert len(seen_offers) >= 5, seen_offers
    assert len(seen_statuses) >= 3, seen_statuses
    for offer in seen_offers:
        assert logged(SendOffer, lease_id=offer.lease_id, request_id=offer.request_id), offer
    for answer in seen_answers:
        if isinstance(answer, m.LeaseRenewed):
            assert logged(ReplyRenewed, lease_id=answer.lease_id, expires_wall=answer.expires)
        elif isinstance(answer, m.RenewFailed):
            assert logged(ReplyRenewFailed, lease_id=answer.lease_id, reason=answer.reason)
        elif isinstance(answer, m.JobDispatched):
            assert logged(ReplyDispatched, job_id=answer.job_id, lease_id=answer.lease_id)
        elif isinstance(answer, m.DispatchFailed):
            assert logged(ReplyDispatchFailed, job_id=answer.job_id, reason=answer.reason)
    for status in seen_statuses:
        assert logged(SendJobStatus, job_id=status.job_id, status=status.status), status
    engine, machines_hash = load_engine(WORKER)
    report = replay_series(read_series(segments), engine, machines_hash, role=WORKER)
    assert report.ok, (report.divergence, report.error)
    assert not report.node_stopped
