"""Every error hypha-sm raises on purpose has its layer's root, so the CLI prints one line."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import hypha_sm
from hypha_sm.cli import main
from hypha_sm.config.layers import ConfigError
from hypha_sm.core.errors import HyphaSMError
from hypha_sm.net.errors import NetworkError
from hypha_sm.wire.errors import WireError

ROOTS = (HyphaSMError, WireError, NetworkError, ConfigError)
#: Errors that never reach the CLI: each is turned into a reply or an event where it is raised.
INTERNAL = {
    "hypha_sm.roles.worker.process.StartError",  # -> StartFailed -> a JobStartFailed event
    "hypha_sm.roles.worker.bridge.interfaces.BridgeError",  # -> a 4xx reply to the job
    "hypha_sm.sdk.bridge_client.BridgeClientError",  # the job program's, not the node's
    "hypha_sm.roles.worker.executor.StartFailed",  # -> a JobStartFailed event
    "hypha_sm.diloco.tensors.LayoutError",  # -> a dropped file, counted by the parameter server
    "hypha_sm.executors.diloco.ExecutorError",  # the training job's own, -> its exit code 1
}


def _errors() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(hypha_sm.__path__, "hypha_sm."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found.append(cls)
    return found


def test_every_error_of_the_package_has_a_layer_root_or_never_reaches_the_cli() -> None:
    unrooted = sorted(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _errors()
        if not issubclass(cls, ROOTS) and f"{cls.__module__}.{cls.__qualname__}" not in INTERNAL
    )
    assert unrooted == []


def _bad_key(tmp_path: Path) -> list[str]:
    key = tmp_path / "key.pem"
    key.write_text("x")
    key.chmod(0o644)
    flags = ["--listen", "tcp://127.0.0.1:0", "--ingest", "tcp://127.0.0.1:0"]
    return ["gateway", "run", "--node-key", str(key), *flags, "--publish", "tcp://127.0.0.1:0"]


def _bad_log(tmp_path: Path) -> list[str]:
    log = tmp_path / "log.jsonl"
    log.write_text('{"format": "other"}\n')
    return ["replay", str(log)]


@pytest.mark.parametrize(
    ("make_argv", "says"),
    [
        (lambda _: ["replay", "/nonexistent/log.jsonl"], "No such file"),
        (_bad_key, "a node key must be private"),  # the network layer's KeyFileError
        (_bad_log, "not an event-log header"),  # the log's LogFormatError
    ],
)
def test_the_cli_prints_one_line_for_an_error_of_any_layer(
    make_argv: Callable[[Path], list[str]],
    says: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(make_argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("hypha-sm: error: ")
    assert says in err
    assert err.count("\n") == 1


class _ClosedPipe:
    """stdout whose reader has left: every write raises, as a pipe to `head` does."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        return self.write_end


def test_output_into_a_closed_pipe_ends_quietly_with_141(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hypha-sm replay LOG | head`: no traceback, the shell's exit code for a closed pipe."""
    pipe = _ClosedPipe()
    monkeypatch.setattr(sys, "stdout", pipe)
    try:
        assert main(["machines"]) == 141
    finally:
        os.close(pipe.read_end)
        os.close(pipe.write_end)


def test_a_port_in_use_is_one_line_not_an_exception_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The listener fails inside the role's nursery (an ExceptionGroup): still one line."""
    import pynng

    from hypha_sm.net.keys import create_key_file

    create_key_file(tmp_path / "key.pem")
    with pynng.Rep0(listen="tcp://127.0.0.1:0") as taken:
        address = taken.listeners[0].url
        argv = ["gateway", "run", "--node-key", str(tmp_path / "key.pem"), "--listen", address]
        argv += ["--ingest", "tcp://127.0.0.1:0", "--publish", "tcp://127.0.0.1:0"]
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"hypha-sm: error: bad_address: {address}: Address in use\n"
