"""The contract between the worker's loop and whatever runs its jobs (the process executor today)."""

from __future__ import annotations

from typing import Protocol

from hypha_sm.roles.worker.core.effects import StartJob


class Executor(Protocol):
    """Runs jobs for the loop.

    ``start`` returns once the job runs (or raises ``StartFailed`` with a reason); ``wait``
    returns the exit code once every process of the job is gone.
    """

    async def start(self, job: StartJob) -> None: ...

    async def wait(self, job_id: str) -> int: ...

    async def stop(self, job_id: str, *, force: bool) -> None: ...


class StartFailed(Exception):
    """An executor could not start a job; ``str()`` is the reason."""
