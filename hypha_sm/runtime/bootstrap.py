"""Start-up every role shares: its TLS files from settings, and what SIGINT/SIGTERM do."""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import trio

from hypha_sm.net.tls import TlsFiles

log = logging.getLogger(__name__)


class TlsSettings(Protocol):
    """The TLS part of a role's settings (worker, gateway, scheduler)."""

    @property
    def cert_pem(self) -> Path | None: ...

    @property
    def key_pem(self) -> Path | None: ...

    @property
    def trust_pem(self) -> Path | None: ...


def tls_files(settings: TlsSettings) -> TlsFiles | None:
    """The role's certificate, key and trust bundle, or None when it has no TLS set up.

    The settings validate that the three come together (or a ``tls+tcp://`` address needs
    them), so one missing means none is configured.
    """
    if settings.cert_pem and settings.key_pem and settings.trust_pem:
        return TlsFiles(settings.cert_pem, settings.key_pem, settings.trust_pem)
    return None


async def on_stop_signals(
    first: Callable[[str], Awaitable[None]],
    again: Callable[[str], None] | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Wait for SIGINT/SIGTERM/SIGHUP: the first runs ``first(name)``; a later ``again(name)``.

    SIGHUP (the terminal the node ran in closed) stops it as cleanly as the others.

    Without ``again`` it returns after the first signal (the caller then stops). With it,
    it keeps listening, so a second Ctrl-C can force what the first asked for gently. Start
    it with ``nursery.start``: it reports started once the signals are caught.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        task_status.started()
        count = 0
        async for signum in signals:
            count += 1
            name = signal.Signals(signum).name
            if count == 1:
                await first(name)
                if again is None:
                    return
            elif again is not None:
                again(name)
                return
