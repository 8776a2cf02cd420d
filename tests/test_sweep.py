"""The helpers a stop uses on a set of processes: never raise for a process that is gone, and
never signal the node's own process group, init's, or everyone's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from hypha_sm.roles.worker import sweep


@pytest.fixture
def gone(tmp_path: Path) -> psutil.Process:
    """A process handle taken while it ran, for a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"], cwd=tmp_path)
    handle = psutil.Process(child.pid)
    child.wait()
    return handle


def test_a_process_that_is_gone_is_not_alive_not_inside_and_signals_quietly(
    gone: psutil.Process, tmp_path: Path
) -> None:
    assert not sweep.alive(gone)
    assert not sweep.cwd_inside(gone, tmp_path)
    sweep.signal_all([gone, gone], signal.SIGKILL)  # no exception


def test_a_process_that_vanishes_between_two_questions_is_not_alive() -> None:
    """``is_running`` said yes, then ``status`` found no process: not alive."""

    class Vanishing:
        pid = 123_456

        def is_running(self) -> bool:
            return True

        def status(self) -> str:
            raise psutil.NoSuchProcess(self.pid)

    assert not sweep.alive(Vanishing())


def test_a_running_process_is_alive_and_inside_its_work_dir(tmp_path: Path) -> None:
    inner = tmp_path / "job"
    inner.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], cwd=inner)
    try:
        handle = psutil.Process(child.pid)
        assert sweep.alive(handle)
        assert sweep.cwd_inside(handle, tmp_path)
        assert sweep.cwd_inside(handle, inner)
        assert not sweep.cwd_inside(handle, tmp_path / "other")
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    ("pgid", "signalled"),
    [
        (None, False),
        (0, False),  # killpg(0) is the caller's own group
        (1, False),  # init's group
        (-1, False),  # kill(-1): every process the node may signal
        ("own", False),
        (2, True),
        (4242, True),
    ],
)
def test_killpg_never_signals_the_node_its_init_or_everyone(
    monkeypatch: pytest.MonkeyPatch, pgid: int | str | None, signalled: bool
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda group, sig: calls.append((group, sig)))
    target = os.getpgrp() if pgid == "own" else pgid
    assert not isinstance(target, str)
    sweep.killpg(target, signal.SIGTERM)
    assert calls == ([(target, signal.SIGTERM)] if signalled else [])


@pytest.mark.parametrize("error", [ProcessLookupError, PermissionError])
def test_killpg_of_a_group_that_is_gone_or_not_ours_is_quiet(
    monkeypatch: pytest.MonkeyPatch, error: type[OSError]
) -> None:
    def refuse(group: int, sig: int) -> None:
        raise error

    monkeypatch.setattr(os, "killpg", refuse)
    sweep.killpg(4242, signal.SIGKILL)  # no exception


def _started(env: dict[bytes, bytes], cwd: Path) -> subprocess.Popen[bytes]:
    """A sleeping child with this environment, once it runs (it says so through a file)."""
    ready = cwd / "ready"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(30)",
        ],
        cwd=cwd,
        env=env,
    )
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return child


def test_a_marker_a_job_set_to_non_ascii_bytes_is_read_not_raised_on(tmp_path: Path) -> None:
    """A hostile job may rewrite its marker to any bytes; the stop still reads (and compares) it."""
    child = _started({**os.environb, sweep.MARKER.encode(): b"job-\xff\xfe"}, tmp_path)
    try:
        assert sweep.marker_of(child.pid) == "job-\ufffd\ufffd"
    finally:
        child.kill()
        child.wait()


def test_a_marker_past_the_read_cap_is_not_found(tmp_path: Path) -> None:
    """At most 1 MiB of a process's environment is read: a job cannot make the stop read more.

    The environment is laid out in the order given: 9 x 120 KiB of padding, then the marker.
    """
    env = {f"PAD{i}".encode(): b"x" * (120 << 10) for i in range(9)}
    env[sweep.MARKER.encode()] = b"late"
    child = _started(env, tmp_path)
    try:
        assert sweep.marker_of(child.pid) is None
    finally:
        child.kill()
        child.wait()


def test_cgroup_pids_reads_a_group_and_its_descendants_and_skips_what_it_cannot_read(
    tmp_path: Path,
) -> None:
    """Every ``cgroup.procs`` below the path, its own included; one that vanished, cannot be
    read or holds no pid list is skipped."""
    (tmp_path / "cgroup.procs").write_text("12\n7\n")
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "cgroup.procs").write_text("7\n30\n")
    (tmp_path / "a" / "b" / "cgroup.procs").write_text("41\n")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cgroup.procs").write_text("not pids\n")
    (tmp_path / "odd" / "cgroup.procs").mkdir(parents=True)  # reading it: IsADirectoryError
    assert sweep.cgroup_pids(tmp_path) == [7, 12, 30, 41]
    assert sweep.cgroup_pids(tmp_path / "gone") == []


def test_kill_cgroup_removes_nested_groups_deepest_first(tmp_path: Path) -> None:
    """A job may have made child cgroups in its own: each is removed before its parent."""
    group = tmp_path / "job"
    for sub in ("a/b/c", "a/d", "e"):
        (group / sub).mkdir(parents=True)
    assert sweep.kill_cgroup(group) == []  # no process in any of them
    assert not group.exists()
