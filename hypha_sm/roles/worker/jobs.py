"""The node's executor: each job a process tree (``process.py``) with its bridge (``bridge.py``)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from hypha_sm.config.worker import ExecutorSettings
from hypha_sm.core.errors import InvariantViolation
from hypha_sm.roles.ps.runtime import (
    JobSpecError,
    ParameterServerJob,
    load_spec,
    open_ps_log,
)
from hypha_sm.roles.worker.bridge import JobBridge, ReceiveFiles, SendFile, SendProgress
from hypha_sm.roles.worker.core.effects import StartJob
from hypha_sm.roles.worker.executor import StartFailed
from hypha_sm.roles.worker.process import ProcessJob, ProcessSettings, ProcessSpec, StartError
from hypha_sm.roles.worker.slices import SliceFetcher
from hypha_sm.roles.worker.storage import JobDisk, limit_of
from hypha_sm.roles.worker.users import Credentials, JobUsers

log = logging.getLogger(__name__)

#: Longest socket path used as is (the kernel's limit is 108 bytes with the terminator).
MAX_SOCKET_PATH = 100


@dataclass
class _Server:
    """A parameter-server job running in this process, and the storage its lease allows."""

    job: ParameterServerJob
    scope: trio.CancelScope
    ended: trio.Event
    storage: float


class LocalExecutor:
    """Starts, waits for and stops jobs on this machine; implements ``executor.Executor``."""

    def __init__(
        self,
        nursery: trio.Nursery,
        settings: ProcessSettings,
        executors: Sequence[ExecutorSettings],
        *,
        send_progress: SendProgress | None = None,
        send: SendFile | None = None,
        receive: ReceiveFiles | None = None,
        file_roots: Sequence[Path] = (),
        on_bridge_request: Callable[[str, int], None] | None = None,
        users: JobUsers | None = None,
        slices: SliceFetcher | None = None,
    ) -> None:
        self._nursery = nursery
        self._settings = settings
        self._commands: dict[tuple[str, str], ExecutorSettings] = {
            (e.cls, e.name): e for e in executors if e.runtime == "process"
        }
        self._send_progress = send_progress
        self._send = send
        self._receive = receive
        self._file_roots = list(file_roots)
        self._on_bridge_request = on_bridge_request
        self.users = users or JobUsers(mode="node")
        self._slices = slices
        self._jobs: dict[str, tuple[ProcessJob, trio.CancelScope]] = {}
        self._servers: dict[str, _Server] = {}

    async def start(self, job: StartJob) -> None:
        """Create the work dir, bind the bridge, start the process; StartFailed with a reason.

        The core chose the executor and its runtime (``job.executor``); this only finds the
        command configured for it. The core's policy and this list come from the same
        settings, so a missing command is a bug, not a peer's doing.
        """
        if job.executor.runtime == "parameter-server":
            await self._start_parameter_server(job)
            return
        config = self._commands.get((job.executor.cls, job.executor.name))
        if config is None or not config.cmd:
            raise InvariantViolation(f"no command configured for {job.executor}")
        user = self.users.allocate(job.job_id)
        try:
            await self._start(job, config, user)
        except BaseException:
            self.users.release(job.job_id)
            raise

    async def _start(
        self, job: StartJob, config: ExecutorSettings, user: Credentials | None
    ) -> None:
        assert config.cmd is not None
        process = ProcessJob(
            ProcessSpec(
                job.job_id,
                job.work_dir_id,
                config.cmd,
                config.args,
                job.spec,
                job.resources,
                user=user,
            ),
            self._settings,
        )
        try:
            process.prepare()
        except StartError as exc:
            raise StartFailed(str(exc)) from None
        if len(os.fsencode(process.socket_path)) > MAX_SOCKET_PATH:
            # AF_UNIX paths are limited to 108 bytes; a deep work dir moves the socket to a
            # short private path (still mode 0600), which the job gets as SOCKET_PATH.
            process.socket_path = Path(tempfile.gettempdir()) / f"hypha-{job.work_dir_id}.sock"
            log.info(
                "job %s: bridge socket at %s (work dir path too long)",
                job.job_id,
                process.socket_path,
            )
        bridge = JobBridge(
            work_dir=process.work_dir,
            socket_path=process.socket_path,
            job_id=job.job_id,
            send_progress=self._send_progress,
            send=self._send,
            receive=self._receive,
            file_roots=[process.work_dir, *self._file_roots],
            on_request=self._on_bridge_request,
            owner=user,
            fetch_slice=None if self._slices is None else partial(self._slices.fetch, job.job_id),
        )
        scope = trio.CancelScope()

        async def serve_bridge(*, task_status: trio.TaskStatus[object]) -> None:
            with scope:
                await bridge.serve(task_status=task_status)

        try:
            await self._nursery.start(serve_bridge)
        except BaseException:
            shutil.rmtree(process.work_dir, ignore_errors=True)
            raise
        try:
            await process.start(self._nursery)
        except StartError as exc:
            scope.cancel()
            raise StartFailed(str(exc)) from None
        except BaseException:
            scope.cancel()  # whatever failed, the bridge does not outlive the start
            raise
        self._jobs[job.job_id] = (process, scope)

    async def _start_parameter_server(self, job: StartJob) -> None:
        """Run the job's parameter server in this process (``roles/ps``); its own work dir."""
        if self._send is None or self._receive is None or self._send_progress is None:
            raise StartFailed("this node cannot send or receive files (no bulk channel)")
        try:
            plan = load_spec(job.spec)
        except JobSpecError as exc:
            raise StartFailed(f"not a parameter-server job: {exc}") from None
        work_dir = self._settings.work_dir / f"hypha-{job.work_dir_id}"
        try:
            work_dir.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise StartFailed(f"cannot create work dir {work_dir}: {exc}") from None
        try:
            event_log = open_ps_log(self._settings.work_dir / "ps-events")
        except OSError as exc:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise StartFailed(f"cannot open the parameter server's event log: {exc}") from None
        server = ParameterServerJob(
            job.job_id,
            plan,
            work_dir,
            receive=self._receive,
            send=self._send,
            send_progress=self._send_progress,
            event_log=event_log,
        )
        scope = trio.CancelScope()
        ended = trio.Event()

        async def serve() -> None:
            try:
                with scope:
                    await server.run()
            finally:
                event_log.close()
                shutil.rmtree(work_dir, ignore_errors=True)
                ended.set()

        self._nursery.start_soon(serve)
        self._servers[job.job_id] = _Server(server, scope, ended, job.resources.storage)
        log.info("job %s: parameter server for %d workers", job.job_id, len(plan.workers))

    async def wait(self, job_id: str) -> int:
        """The exit code once every process is gone; the bridge closes with the job."""
        if job_id in self._servers:
            running = self._servers[job_id]
            server, ended = running.job, running.ended
            try:
                await ended.wait()
                ok, reason = server.outcome
                if not ok:
                    log.warning("job %s: parameter server failed: %s", job_id, reason)
                return 0 if ok else 1
            finally:
                self._servers.pop(job_id, None)
        process, scope = self._jobs[job_id]
        try:
            code = await process.wait()
            if self._slices is not None:
                # Before the node reports the exit: the scheduler hears "done" for the last
                # slices while the job is still its own.
                await self._slices.job_ended(job_id, finished=code == 0)
            return code
        finally:
            scope.cancel()
            self._jobs.pop(job_id, None)
            self.users.release(job_id)

    def disk_jobs(self) -> list[JobDisk]:
        """Each running job's work dir and the storage its lease allows (for the monitor)."""
        processes = [
            JobDisk(job_id, process.work_dir, limit_of(process.spec.resources.storage))
            for job_id, (process, _) in self._jobs.items()
        ]
        # A parameter server's files come from the job's workers: its lease bounds them too.
        servers = [
            JobDisk(job_id, server.job.work_dir, limit_of(server.storage))
            for job_id, server in self._servers.items()
        ]
        return processes + servers

    def discard(self, job_id: str) -> None:
        """Remove the job's work dir when it ends, even if it fails."""
        entry = self._jobs.get(job_id)
        if entry is not None:
            entry[0].discard_dir = True

    async def stop(self, job_id: str, *, force: bool) -> None:
        """TERM, grace, KILL (``force``: KILL now). A job not (yet) running is ignored."""
        server = self._servers.get(job_id)
        if server is not None:
            server.scope.cancel()
        entry = self._jobs.get(job_id)
        if entry is not None:
            await entry[0].stop(0.0 if force else None)
