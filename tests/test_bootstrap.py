"""Start-up every role shares: TLS files from settings, and what stop signals do."""

from __future__ import annotations

import os
import signal
import types
from pathlib import Path

import pytest
import trio

from hypha_sm.net.tls import TlsFiles
from hypha_sm.runtime.bootstrap import on_stop_signals, tls_files

C, K, T = Path("c.pem"), Path("k.pem"), Path("t.pem")


@pytest.mark.parametrize(
    ("cert", "key", "trust", "expected"),
    [
        (C, K, T, TlsFiles(C, K, T)),
        (None, None, None, None),
        (C, K, None, None),
        (None, K, T, None),
    ],
)
def test_tls_files_come_as_a_set_of_three_or_not_at_all(
    cert: Path | None, key: Path | None, trust: Path | None, expected: TlsFiles | None
) -> None:
    settings = types.SimpleNamespace(cert_pem=cert, key_pem=key, trust_pem=trust)
    assert tls_files(settings) == expected


async def test_the_first_signal_asks_gently_and_the_second_forces() -> None:
    """SIGTERM runs ``first``; SIGINT after it runs ``again``; then the watcher returns."""
    seen: list[str] = []
    asked, forced = trio.Event(), trio.Event()

    async def first(name: str) -> None:
        seen.append(f"first {name}")
        asked.set()

    def again(name: str) -> None:
        seen.append(f"again {name}")
        forced.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(on_stop_signals, first, again)
            os.kill(os.getpid(), signal.SIGTERM)
            await asked.wait()
            os.kill(os.getpid(), signal.SIGINT)
            await forced.wait()
    assert seen == ["first SIGTERM", "again SIGINT"]


async def test_without_again_the_watcher_returns_after_the_first_signal() -> None:
    seen: list[str] = []

    async def first(name: str) -> None:
        seen.append(name)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(on_stop_signals, first)
            os.kill(os.getpid(), signal.SIGINT)
    assert seen == ["SIGINT"]
