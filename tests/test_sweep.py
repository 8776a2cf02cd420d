"""The helpers a stop uses on a set of processes: never raise for a process that is gone, and
never signal the node's own process group, init's, or everyone's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
