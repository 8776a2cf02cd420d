"""The process runtime (hypha_sm/roles/worker/process.py) with real subprocesses."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import trio

from hypha_sm.core.resources import Amounts
from hypha_sm.roles.worker import process
from hypha_sm.roles.worker.limits import find_cgroup_parent, slow_cgroup_migrations
from hypha_sm.roles.worker.process import (
    STDERR_NAME,
    STDOUT_NAME,
    ProcessJob,
    ProcessSettings,
    ProcessSpec,
    StartError,
    job_env,
    render_args,
)
from hypha_sm.roles.worker.sweep import become_subreaper, is_subreaper, marker_of
from hypha_sm.roles.worker.workdirs import FAILED_MARK, clean_orphans
from tests.helpers import remove_leftover_cgroups

JOB = str(Path(__file__).parent / "fixtures" / "job.py")


def _spec(*args: str, wid: str = "w1", resources: Amounts | None = None) -> ProcessSpec:
    return ProcessSpec(
        job_id=f"job-{wid}",
        work_dir_id=wid,
        cmd=sys.executable,
        args=[JOB, *args],
        job_json='{"job_id":"j"}',
        resources=resources or Amounts(),
    )


def _settings(tmp_path: Path, **kw: object) -> ProcessSettings:
    return ProcessSettings(work_dir=tmp_path / "work", **kw)  # type: ignore[arg-type]


async def _run(spec: ProcessSpec, settings: ProcessSettings) -> tuple[ProcessJob, int]:
    job = ProcessJob(spec, settings)
    async with trio.open_nursery() as nursery:
        await job.start(nursery)
        code = await job.wait()
    return job, code


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(
    ("mounts", "slow"),
    [
        ("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0", True),
        ("cgroup2 /sys/fs/cgroup cgroup2 rw,relatime,nsdelegate,favordynmods 0 0", False),
        ("cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0", False),  # no cgroup2: no moves
        ("", False),
    ],
)
def test_a_cgroup2_mount_without_favordynmods_means_slow_job_starts(
    mounts: str, slow: bool
) -> None:
    """The start-up hint fires only where moving a job into its cgroup waits for the kernel."""
    assert slow_cgroup_migrations(mounts) is slow


def test_render_args_replaces_known_tokens_and_keeps_unknown() -> None:
    """Every occurrence of a known token is replaced; unknown {TOKENS} stay as written."""
    values = {"SOCKET_PATH": "/s", "WORK_DIR": "/w", "JOB_JSON": '{"a":1}'}
    assert render_args(
        ["--socket", "{SOCKET_PATH}", "{WORK_DIR}/x{WORK_DIR}", "{JOB_JSON}", "{OTHER}", "{}"],
        values,
    ) == ["--socket", "/s", "/w/x/w", '{"a":1}', "{OTHER}", "{}"]
    assert job_env({"A": "1", "WORK_DIR": "old"}, {"WORK_DIR": "/w"}) == {
        "A": "1",
        "WORK_DIR": "/w",
    }
    # The node's own settings and secrets stay with the node.
    node_env = {
        "PATH": "/bin",
        "OTEL_EXPORTER_OTLP_HEADERS": "auth=secret",
        "HYPHA_WORK_DIR": "/n",
    }
    assert job_env(node_env, {}) == {"PATH": "/bin"}


async def test_templating_env_cwd_and_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child sees rendered args, the three variables plus the inherited env, and runs in its
    own 0700 work dir as a session leader; CUDA_VISIBLE_DEVICES is empty without GPUs."""
    monkeypatch.setenv("JOB_TEST_INHERITED", "yes")
    monkeypatch.setenv("HYPHA_TEST_NODE_ONLY", "no")
    out = tmp_path / "report.json"
    settings = _settings(tmp_path)
    job, code = await _run(
        _spec("report", str(out), "0", "{SOCKET_PATH}", "{WORK_DIR}", "{JOB_JSON}", "{NOPE}"),
        settings,
    )
    assert code == 0
    data = json.loads(out.read_text())
    wd = str(settings.work_dir.absolute() / "hypha-w1")
    assert data["argv"][4:] == [f"{wd}/bridge.sock", wd, '{"job_id":"j"}', "{NOPE}"]
    assert data["env"] == {
        "SOCKET_PATH": f"{wd}/bridge.sock",
        "WORK_DIR": wd,
        "JOB_JSON": '{"job_id":"j"}',
        "JOB_JSON_FILE": f"{wd}/job.json",  # the spec is always a file too
        "CUDA_VISIBLE_DEVICES": "",
        "JOB_TEST_INHERITED": "yes",
        "HYPHA_TEST_NODE_ONLY": None,  # the node's own variables are not passed on
    }
    assert data["cwd"] == wd
    assert data["mode"] == 0o700
    assert data["sid_is_self"]
    assert job.socket_path == Path(wd) / "bridge.sock"


async def test_output_captured_capped_and_forwarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """stdout and stderr land in capped log files (with a truncation note) and in the job logger."""
    caplog.set_level(logging.INFO, logger="hypha_sm.job")
    settings = _settings(tmp_path, log_cap=1000)
    job, code = await _run(_spec("spew", "5000", "1"), settings)
    assert code == 1
    for name in (STDOUT_NAME, STDERR_NAME):
        text = (job.work_dir / name).read_bytes()
        assert len(text) < 1100
        assert text.startswith(b"<std")
        assert b"[hypha: output truncated at 1000 bytes]" in text
    lines = [r.getMessage() for r in caplog.records if r.name == "hypha_sm.job"]
    assert "job job-w1 stdout: <stdout> line 0" in lines
    assert any(line.startswith("job job-w1 stderr: <stderr> line") for line in lines)
    assert any("the rest is dropped" in line for line in lines)


async def test_small_output_kept_whole(tmp_path: Path) -> None:
    """Output under the cap is kept byte for byte, without a truncation note."""
    job, code = await _run(_spec("spew", "200", "2"), _settings(tmp_path))
    assert code == 2
    text = (job.work_dir / STDOUT_NAME).read_text()
    assert text.startswith("<stdout> line 0\n")
    assert "truncated" not in text


@pytest.mark.parametrize(
    ("args", "expected"),
    [(("exit", "0"), 0), (("exit", "3"), 3), (("signal", str(int(signal.SIGKILL))), -9)],
)
async def test_exit_codes(tmp_path: Path, args: tuple[str, ...], expected: int) -> None:
    """The exit code is reported as is; death by a signal is the negative signal number."""
    _, code = await _run(_spec(*args), _settings(tmp_path))
    assert code == expected


async def test_success_removes_dir_failure_keeps_it(tmp_path: Path) -> None:
    """Exit 0 removes the work dir; a failure keeps it, marked with its exit code."""
    settings = _settings(tmp_path)
    ok, _ = await _run(_spec("exit", "0", wid="ok"), settings)
    bad, _ = await _run(_spec("exit", "3", wid="bad"), settings)
    assert not ok.work_dir.exists()
    assert (bad.work_dir / FAILED_MARK).read_text().strip() == "3"


async def test_retention_prunes_old_failed_dirs(tmp_path: Path) -> None:
    """Only the newest keep_failed failed dirs survive; other hypha-* dirs are not touched."""
    settings = _settings(tmp_path, keep_failed=2)
    settings.work_dir.mkdir()
    live = settings.work_dir / "hypha-live"
    live.mkdir()
    jobs = []
    for i in range(4):
        job, _ = await _run(_spec("exit", "1", wid=f"f{i}"), settings)
        os.utime(job.work_dir / FAILED_MARK, (1000 + i, 1000 + i))
        jobs.append(job)
    last, _ = await _run(_spec("exit", "1", wid="f4"), settings)
    remaining = sorted(p.name for p in settings.work_dir.iterdir())
    assert remaining == ["hypha-f3", "hypha-f4", "hypha-live"]
    assert last.work_dir.exists()


async def test_start_failure_raises_and_leaves_nothing(tmp_path: Path) -> None:
    """A command that does not exist raises StartError with a clear reason and leaves no dir."""
    settings = _settings(tmp_path)
    spec = ProcessSpec(job_id="j", work_dir_id="nf", cmd="/nonexistent/hypha-cmd")
    job = ProcessJob(spec, settings)
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartError) as info:
            await job.start(nursery)
    assert "/nonexistent/hypha-cmd" in info.value.reason
    assert "No such file" in info.value.reason
    assert not job.work_dir.exists()
    assert list(settings.work_dir.iterdir()) == []


async def test_start_fails_when_work_dir_exists(tmp_path: Path) -> None:
    """A work dir that exists already is refused (ids are unique; this is a stale leftover)."""
    settings = _settings(tmp_path)
    (settings.work_dir / "hypha-dup").mkdir(parents=True)
    job = ProcessJob(_spec("exit", "0", wid="dup"), settings)
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartError, match="exists already"):
            await job.start(nursery)


async def test_memory_limit_and_affinity(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Memory and cpu asks become limits by whichever path this host allows, each asserted
    (and recorded as a test property): a cgroup whenever the node can make one, with
    memory.max when the memory controller is delegated, else RLIMIT_AS; CPU affinity when
    there are more cores than asked, else listed as not enforced; no GPU, no devices."""
    out = tmp_path / "r.json"
    res = Amounts(cpu=1, memory=2, gpu=1)
    job, code = await _run(_spec("report", str(out), resources=res), _settings(tmp_path))
    assert code == 0
    data = json.loads(out.read_text())
    cores = len(os.sched_getaffinity(0))
    if cores > 1:
        assert len(data["affinity"]) == 1
        record_property("cpu", "affinity")
    else:
        assert any(u.startswith("cpu:") for u in job.unenforced)
        record_property("cpu", "not enforced (1 core)")
    assert job.cgroup_used == (find_cgroup_parent() is not None)
    if job.cgroup_used:
        assert "0::/" in data["cgroup"]
        assert data["cgroup"].endswith("-w1\n")  # hypha-<node scope>-<work dir id>
    if data["memory_max"] is not None:
        assert data["memory_max"] == str(2 * 10**9)
        assert data["rlimit_as"] == resource.RLIM_INFINITY
        record_property("memory", "cgroup memory.max")
    else:
        assert data["rlimit_as"] == 2 * 10**9
        assert any("RLIMIT_AS" in u for u in job.unenforced)
        record_property("memory", "RLIMIT_AS")
    if not _exists(Path("/dev/nvidia0")):
        assert "gpu: no NVIDIA devices" in job.unenforced
        assert data["env"]["CUDA_VISIBLE_DEVICES"] == ""
        record_property("gpu", "none")


def _exists(path: Path) -> bool:
    return path.exists()


def _pids_in(path: Path) -> list[int]:
    return [int(p) for p in json.loads(path.read_text())]


async def _read_pids(path: Path) -> list[int]:
    """The pids the tree fixture writes once all four processes run."""
    with trio.fail_after(10):
        while not _exists(path):  # noqa: ASYNC110 (a file appearing has no event)
            await trio.sleep(0.05)
    return _pids_in(path)


def _kill_leftovers(pids: list[int]) -> None:
    """Whatever the test asserts, no TERM-ignoring process it saw outlives it."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


async def _stop_and_survivors(
    job: ProcessJob, pids_file: Path, grace: float, check: Callable[[list[int]], None]
) -> tuple[int, list[int]]:
    """Start ``job``, wait for the pids it writes, ``check`` them, stop it with ``grace``: the
    exit code and the pids still alive. No process the job wrote outlives the call."""
    pids: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            await job.start(nursery)
            pids = await _read_pids(pids_file)
            check(pids)
            code = await job.stop(grace)
        return code, [p for p in pids if not _gone(p)]
    finally:
        _kill_leftovers(pids)


@pytest.mark.slow
@pytest.mark.parametrize("use_cgroup", [True, False], ids=["cgroup-if-any", "group-and-sweep"])
async def test_stop_kills_whole_tree_including_setsid_grandchild(
    tmp_path: Path, use_cgroup: bool
) -> None:
    """TERM is ignored by every process, one grandchild left the session: stop kills them all
    and wait() reports only once nothing is left. With a cgroup where the machine lets the node
    make one (asserted), and with the process-group-plus-sweep fallback."""
    pids_file = tmp_path / "pids.json"
    settings = _settings(tmp_path, use_cgroup=use_cgroup)
    job = ProcessJob(_spec("tree", str(pids_file)), settings)

    def main_process_first(pids: list[int]) -> None:
        assert pids[0] == job.pid

    code, left = await _stop_and_survivors(job, pids_file, 1.0, main_process_first)
    assert code == -signal.SIGKILL
    assert left == []
    assert job.cgroup_used == (use_cgroup and find_cgroup_parent() is not None)
    assert job.work_dir.exists()  # killed: kept for inspection


@pytest.mark.slow
async def test_stop_finds_a_child_that_left_the_group_the_cwd_and_the_marker(
    tmp_path: Path,
) -> None:
    """Without a cgroup, a child that called setsid, moved to / and scrubbed its environment is
    still in the tree below the main process: the stop's walk of that tree kills it."""
    out = tmp_path / "pid.json"
    job = ProcessJob(_spec("hidden", str(out), wid="h"), _settings(tmp_path, use_cgroup=False))

    def child_scrubbed_its_marker(pids: list[int]) -> None:
        assert marker_of(pids[0]) is None

    _, left = await _stop_and_survivors(job, out, 0.5, child_scrubbed_its_marker)
    assert left == []


@pytest.fixture
def no_subreaper() -> Iterator[None]:
    """This process does not adopt orphans for the test (as a node that could not be one)."""
    was = is_subreaper()
    become_subreaper(False)
    try:
        yield
    finally:
        become_subreaper(was)


@pytest.mark.slow
async def test_stop_finds_an_orphan_by_the_work_dir_it_still_runs_in(
    tmp_path: Path, no_subreaper: None
) -> None:
    """Without a cgroup or adoption, a grandchild that left the group, the tree (its parent
    exited) and the marker is found by its cwd in the work dir, and killed."""
    out = tmp_path / "pid.json"
    job = ProcessJob(_spec("cwd-orphan", str(out), wid="o"), _settings(tmp_path, use_cgroup=False))

    def orphan_left_the_tree(pids: list[int]) -> None:
        assert psutil.Process(pids[0]).ppid() != job.pid

    _, left = await _stop_and_survivors(job, out, 0.5, orphan_left_the_tree)
    assert left == []


@pytest.mark.slow
async def test_cancelled_supervision_still_kills_the_tree(tmp_path: Path) -> None:
    """Cancelling the task that runs the job stops the whole tree too (with the grace)."""
    pids_file = tmp_path / "pids.json"
    job = ProcessJob(_spec("tree", str(pids_file), wid="c"), _settings(tmp_path, grace=0.5))
    pids: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            await job.start(nursery)
            pids = await _read_pids(pids_file)
            nursery.cancel_scope.cancel()
        code = await job.wait()
        left = [p for p in pids if not _gone(p)]
    finally:
        _kill_leftovers(pids)
    assert code == -signal.SIGKILL
    assert left == []
    # The node forgets the job's main process: a reused pid must not be taken for one.
    assert job.pid not in process._job_mains


async def test_stop_graceful_process_exits_on_term(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process that honours SIGTERM ends within the grace with -SIGTERM; the log says the
    node stopped it (as the core records it: cancelled), not that it failed."""
    caplog.set_level(logging.INFO, logger="hypha_sm.roles.worker.process")
    job = ProcessJob(_spec("sleep"), _settings(tmp_path))
    async with trio.open_nursery() as nursery:
        await job.start(nursery)
        with trio.fail_after(5 + 3):
            code = await job.stop(5)
    assert code == -signal.SIGTERM
    lines = [r.getMessage() for r in caplog.records]
    assert any(": stopped (-15); kept" in line for line in lines), lines
    assert not any(": failed (" in line for line in lines)


async def test_a_job_gets_its_whole_grace_to_tidy_up_before_the_kill(tmp_path: Path) -> None:
    """SIGTERM first; a job that needs a moment to tidy up gets it and exits with its own code.

    Whether the stop's grace is honoured, as a delay before SIGKILL, and a cancelled
    supervision's grace too: a job that exits on its own within it is not killed.
    """
    for how in ("stop", "cancel"):
        job = ProcessJob(_spec("tidy", "0.5", wid=how), _settings(tmp_path, grace=5.0))
        async with trio.open_nursery() as nursery:
            await job.start(nursery)
            with trio.fail_after(10):
                while not (job.work_dir / "ready.txt").exists():  # noqa: ASYNC110 (a file)
                    await trio.sleep(0.02)
            with trio.fail_after(5 + 3):
                if how == "stop":
                    code = await job.stop(5)
                else:
                    nursery.cancel_scope.cancel()
        if how == "cancel":
            code = await job.wait()
        assert code == 0, how  # its own exit, after the tidy-up: not -SIGKILL


async def test_forced_stop_brings_kill_forward(tmp_path: Path) -> None:
    """A second stop with grace 0 (StopJob.force) kills at once despite a long first grace."""
    pids_file = tmp_path / "pids.json"
    job = ProcessJob(_spec("tree", str(pids_file)), _settings(tmp_path))
    async with trio.open_nursery() as nursery:
        await job.start(nursery)
        pids = await _read_pids(pids_file)
        nursery.start_soon(job.stop, 60.0)
        await trio.sleep(0.2)
        with trio.fail_after(3):
            assert await job.stop(0) == -signal.SIGKILL
    assert all(_gone(pid) for pid in pids)


async def test_leftovers_of_an_exited_job_are_killed(tmp_path: Path) -> None:
    """When the main process exits by itself, what it left running is stopped before wait()."""
    script = (
        "import subprocess, sys;"
        f"p = subprocess.Popen([sys.executable, {JOB!r}, '_grand'], start_new_session=True);"
        f"open({str(tmp_path / 'left')!r}, 'w').write(str(p.pid))"
    )
    spec = ProcessSpec(job_id="j", work_dir_id="left", cmd=sys.executable, args=["-c", script])
    _, code = await _run(spec, _settings(tmp_path, grace=0.3))
    assert code == 0
    assert _gone(int((tmp_path / "left").read_text()))


def _spawn_orphan(cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, JOB, "_grand"], cwd=cwd, start_new_session=True)


async def test_clean_orphans_kills_leftover_and_removes_dir(tmp_path: Path) -> None:
    """A process left running in a hypha-* dir is killed and the dir removed; failed dirs stay."""
    base = tmp_path / "work"
    orphan_dir = base / "hypha-orphan"
    orphan_dir.mkdir(parents=True)
    failed_dir = base / "hypha-failed"
    failed_dir.mkdir()
    (failed_dir / FAILED_MARK).write_text("1\n")
    (base / "not-a-job").mkdir()
    proc = _spawn_orphan(orphan_dir)
    try:
        await trio.sleep(0.3)
        report = await clean_orphans(base, grace=0.5)
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.pid in report.killed
    assert report.dirs_removed == [orphan_dir.absolute()]
    assert report.dirs_kept == [failed_dir.absolute()]
    assert not orphan_dir.exists()
    assert (base / "not-a-job").exists()


NODE_SCRIPT = """
import sys, trio
from pathlib import Path
from hypha_sm.roles.worker.process import ProcessJob, ProcessSettings, ProcessSpec

async def main() -> None:
    spec = ProcessSpec(job_id="j", work_dir_id="pd", cmd=sys.executable, args=[sys.argv[1], "sleep"])
    job = ProcessJob(spec, ProcessSettings(Path(sys.argv[2])))
    async with trio.open_nursery() as nursery:
        await job.start(nursery)
        Path(sys.argv[3]).write_text(str(job.pid))
        await job.wait()

trio.run(main)
"""


def _spawn_node(tmp_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", NODE_SCRIPT, JOB, str(tmp_path / "work"), str(tmp_path / "pid")]
    )


@pytest.mark.slow
async def test_node_death_kills_the_job(tmp_path: Path) -> None:
    """A node killed with SIGKILL takes its job's process with it (parent-death signal)."""
    node = _spawn_node(tmp_path)
    try:
        with trio.fail_after(15):
            while not _exists(tmp_path / "pid"):  # noqa: ASYNC110 (a file appearing has no event)
                await trio.sleep(0.05)
        pid = int((tmp_path / "pid").read_text())
        assert not _gone(pid)
        node.kill()
        node.wait()
        with trio.fail_after(3):
            while not _gone(pid):  # noqa: ASYNC110 (not our child: no exit event)
                await trio.sleep(0.05)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        remove_leftover_cgroups(tmp_path / "work")
