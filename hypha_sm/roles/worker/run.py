"""``hypha-sm run worker.toml``: a worker node on the real network with real processes.

Start-up: load the settings and the node key, clean up what a previous run left (job processes
and work dirs), open the event log in ``<work_dir>/events/``, then run the loop. The first
SIGINT or SIGTERM asks the core to wind down (stop taking work, stop every job, report); a
second one forces the exit.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # as in process.py
import trio

from hypha_sm.config.worker import (
    WorkerSettings,
    capacity_warnings,
    executor_warnings,
    summary,
    uses_tls,
)
from hypha_sm.core.errors import HyphaSMError
from hypha_sm.core.resources import Amounts, convert
from hypha_sm.log.store import Recorder
from hypha_sm.machines_io import load_engine
from hypha_sm.net.discovery import Gateways, dialable, has_wildcard_host
from hypha_sm.net.keys import load_key_file
from hypha_sm.net.tls import TlsFiles
from hypha_sm.net.transport import Endpoint, NetConfig
from hypha_sm.roles.worker.core.policy import ExecutorSpec, Offer, Policy
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.roles.worker.core.state import WorkerState
from hypha_sm.roles.worker.jobs import LocalExecutor
from hypha_sm.roles.worker.limits import find_cgroup_parent, slow_cgroup_migrations
from hypha_sm.roles.worker.node import WorkerNode
from hypha_sm.roles.worker.otel import telemetry_from_settings
from hypha_sm.roles.worker.peers import PeerFiles, bulk_address_for
from hypha_sm.roles.worker.process import ProcessSettings, sweep_forever
from hypha_sm.roles.worker.slices import SliceFetcher
from hypha_sm.roles.worker.storage import StorageMonitor, free_bytes
from hypha_sm.roles.worker.sweep import become_subreaper, is_subreaper
from hypha_sm.roles.worker.telemetry import Telemetry, install_trace_ids
from hypha_sm.roles.worker.users import JobUsers, check_reachable
from hypha_sm.roles.worker.workdirs import clean_orphans, prune_failed
from hypha_sm.runtime.bootstrap import on_stop_signals, tls_files
from hypha_sm.runtime.loop import Stepper
from hypha_sm.wire import messages as m
from hypha_sm.wire.identity import Identity

log = logging.getLogger(__name__)


def policy_from_settings(settings: WorkerSettings) -> Policy:
    """What the core decides with, from the worker's settings."""
    return Policy(
        capacity=convert(settings.resources, Amounts),
        executors=tuple(
            ExecutorSpec(cls=e.cls, name=e.name, runtime=e.runtime) for e in settings.executors
        ),
        offer=Offer(
            price=settings.offer.price,
            floor=settings.offer.floor,
            strategy=settings.offer.strategy,
        ),
    )


class StartupError(HyphaSMError):
    """The node cannot start; the message says why and what to do."""


def _open_event_log(settings: WorkerSettings, work_dir: Path) -> Stepper[WorkerState]:
    """The worker's core, recorded to the rotating event log in ``<work_dir>/events``.

    On a full disk, the kept dirs of failed jobs are removed and it is tried once more; then a
    one-line error.
    """
    engine, machines_hash = load_engine(WORKER)

    policy = policy_from_settings(settings)

    def attempt() -> Stepper[WorkerState]:
        seed = secrets.token_bytes(16)
        recorder = Recorder.open_rotating(
            work_dir / "events",
            WORKER,
            machines_hash,
            policy,
            seed,
            max_bytes=settings.event_log_max_bytes,
            keep=settings.event_log_keep,
            fsync=settings.event_log_fsync,
        )
        return Stepper(WORKER, engine, policy, seed, recorder)

    try:
        return attempt()
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise StartupError(
                f"cannot start the event log in {work_dir / 'events'}: {exc}"
            ) from None
        removed = prune_failed(work_dir, 0)
        log.warning(
            "the disk of %s is full: removed %d kept failed job dirs to start",
            work_dir,
            len(removed),
        )
    try:
        return attempt()
    except OSError as exc:
        raise StartupError(
            f"cannot start the event log in {work_dir / 'events'}: {exc}; "
            f"{free_bytes(work_dir)} bytes free: free some space and start again"
        ) from None


async def run_worker(
    settings: WorkerSettings, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a worker until it stops; ``task_status`` gets the address it serves on."""
    identity = load_key_file(settings.node_key)
    telemetry = telemetry_from_settings(settings, identity.peer_id)
    install_trace_ids(telemetry)
    try:
        await _run(settings, identity, telemetry, task_status)
    finally:
        # Export what is left even when the node is being cancelled; each export is bounded.
        with trio.CancelScope(shield=True), trio.move_on_after(15):
            await telemetry.aclose()


def _all_files(tls: TlsFiles) -> bool:
    return all(os.path.isfile(p) for p in (tls.cert, tls.key, tls.trust))


async def _run(
    settings: WorkerSettings,
    identity: Identity,
    telemetry: Telemetry,
    task_status: trio.TaskStatus[str],
) -> None:
    tls = tls_files(settings)
    # No tls+tcp:// address: the files are not needed, and missing ones are not an error.
    if tls is not None and not uses_tls(settings) and not _all_files(tls):
        tls = None
    if not settings.external_addresses and has_wildcard_host(settings.listen_addresses[0]):
        log.warning(
            "listening on %s with no external_addresses: offers and the peer record carry a "
            "wildcard host, which only peers on this machine can dial",
            settings.listen_addresses[0],
        )
    work_dir = settings.work_dir.absolute()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(work_dir, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        raise StartupError(
            f"work_dir {work_dir}: cannot create or write it: {exc.strerror}"
        ) from None
    if problems := job_user_problems(settings):
        raise StartupError(problems[0])
    users = JobUsers(settings.job_user, settings.job_uid_range)
    described = users.describe()
    log.info("%s", described[0].upper() + described[1:])
    log.info("%s", summary(settings))
    for lacking in capacity_warnings(
        settings,
        cpus=os.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
        gpu_found=shutil.which("nvidia-smi") is not None,
        disk_bytes=shutil.disk_usage(work_dir).free,
    ):
        log.warning("%s: it will be offered all the same", lacking)
    for injection in executor_warnings(settings):
        log.warning("%s", injection)
    if (warning := users.warning()) is not None:
        log.warning("%s", warning)
    if find_cgroup_parent() is not None and slow_cgroup_migrations():
        log.info(
            "cgroup2 is mounted without favordynmods: each job start waits ~10 ms for the "
            "kernel to move the job into its cgroup (docs/operations.md, Resource enforcement)"
        )
    adopting = is_subreaper()
    if not become_subreaper():
        log.warning(
            "cannot become a child subreaper: a job process that double-forks and leaves its "
            "work dir escapes the stop unless it runs in a cgroup"
        )
    try:
        await _serve(settings, identity, telemetry, task_status, tls, work_dir, users)
    finally:
        become_subreaper(adopting)  # a process that embeds the node gets its setting back


async def _serve(
    settings: WorkerSettings,
    identity: Identity,
    telemetry: Telemetry,
    task_status: trio.TaskStatus[str],
    tls: TlsFiles | None,
    work_dir: Path,
    users: JobUsers,
) -> None:
    report = await clean_orphans(work_dir)
    log.info("start-up cleanup: %s", report)
    stepper = _open_event_log(settings, work_dir)
    recorder = stepper.recorder
    assert recorder is not None
    with Endpoint(identity, NetConfig(tls=tls)) as transport, stepper:
        gateways = Gateways(transport, settings.gateway_addresses)
        telemetry.watch_transport(transport)
        peer_files = PeerFiles(
            identity,
            transport,
            gateways,
            work_dir / "bulk-staging",
            tls=tls,
            on_bytes=telemetry.on_bytes,
        )
        async with trio.open_nursery() as nursery:
            if telemetry.enabled:
                nursery.start_soon(telemetry.sample_forever)
            bulk_address = settings.bulk_listen_address or bulk_address_for(
                settings.listen_addresses[0]
            )
            bulk_bound = await nursery.start(peer_files.serve, bulk_address)
            log.info("receiving peer files on %s", bulk_bound)
            reachable = next(iter(settings.external_addresses), settings.listen_addresses[0])
            slices = SliceFetcher(
                transport,
                gateways,
                peer_files,
                bulk_address=lambda: dialable(str(bulk_bound), reachable),
                scheduler_of=lambda job_id: node.scheduler_of(job_id),
                nursery=nursery,
            )

            async def send_progress(progress: m.Progress) -> m.ProgressReply:
                return await node.send_progress(progress)

            executor = LocalExecutor(
                nursery,
                ProcessSettings(work_dir=work_dir),
                settings.executors,
                send_progress=send_progress,
                send=peer_files.send,
                receive=peer_files.receive,
                file_roots=settings.fetch_file_roots,
                on_bridge_request=telemetry.on_bridge_request,
                users=users,
                slices=slices,
            )
            node = WorkerNode(
                stepper,
                transport,
                executor,
                address=settings.listen_addresses[0],
                public_address=next(iter(settings.external_addresses), None),
                transfer_offers=peer_files.consider,
                gateways=gateways,
                telemetry=telemetry,
            )
            disk = StorageMonitor(
                work_dir,
                recorder,
                executor.disk_jobs,
                node.submit,
                discard=executor.discard,
                reserve=settings.disk_reserve_mb * 1024 * 1024,
            )
            node.on_log_trouble = disk.alarm
            nursery.start_soon(disk.run)
            nursery.start_soon(sweep_forever)
            done = trio.Event()

            async def run_node(*, task_status: trio.TaskStatus[str]) -> None:
                try:
                    await node.run(settings.gateway_addresses, task_status=task_status)
                finally:
                    done.set()

            bound = await nursery.start(run_node)
            log.info(
                "worker %s serving on %s; event log %s", identity.peer_id, bound, recorder.path
            )
            task_status.started(bound)

            async def drain(name: str) -> None:
                log.info("%s: stopping (again to force)", name)
                await node.shutdown()

            def force(name: str) -> None:
                log.warning("%s again: forcing the exit", name)
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as watchers:
                await watchers.start(on_stop_signals, drain, force)
                await done.wait()
                watchers.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


def job_user_problems(settings: WorkerSettings) -> list[str]:
    """Why jobs could not run as ``job_user`` says (``run`` and ``check-config`` alike)."""
    users = JobUsers(settings.job_user, settings.job_uid_range)
    try:
        users.describe()
    except ValueError as exc:
        return [str(exc)]
    if users.isolated:
        work_dir = settings.work_dir.absolute()
        problems = check_reachable([e.cmd for e in settings.executors if e.cmd], work_dir)
        if problems:
            return [
                "jobs run as users of their own (job_user = auto, as root), who cannot reach "
                f"{'; '.join(problems)}: open those paths to other users (chmod o+x), or set "
                'job_user = "node" to run jobs as this node\'s user'
            ]
    return []
