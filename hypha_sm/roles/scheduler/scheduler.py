"""The scheduler role's shell: run one job on N workers (``hypha-sm scheduler run job.toml``).

What the scheduler decides lives in its declared machines (``machines/scheduler/``) and pure
core (``roles/scheduler/core``): the allocation advertises, collects offers, accepts the
cheapest until enough workers hold leases (re-advertising until ``advertise_timeout``, then
giving up with a reason), dispatches and follows the job; a placement per lease renews it on a
deadline before the worker's expiry. This module runs that core on the shared runtime loop
(``hypha_sm.runtime.loop``), which records every input in the scheduler's event log, and turns
its effects into network requests and their answers back into events:

- requests to us (offers, job statuses, progress) become events; the reply effect answers them;
- ``LocateGateways``, ``Publish``, ``AcceptLease``, ``RenewLease`` and ``DispatchJob`` run as
  tasks that report back (``GatewaysLocated``, ``Published``, ``LeaseAccepted``, ``Renewed``,
  ``Dispatched`` or their failures);
- ``Notice`` is a log line; ``Finished`` ends the loop.

Every request is checked against who sent it by the core: offers must answer our current
advertisement, and statuses and progress must come from the worker the job was dispatched to.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import trio

from hypha_sm.config.scheduler import DiLoCoSettings, JobSettings, SchedulerSettings
from hypha_sm.core.errors import InvariantViolation
from hypha_sm.core.resources import Amounts, convert
from hypha_sm.net.discovery import Gateways
from hypha_sm.net.keys import load_key_file
from hypha_sm.net.transport import Endpoint, NetConfig, NetError, Publisher, Transport
from hypha_sm.roles.scheduler.core import effects as fx
from hypha_sm.roles.scheduler.core import events as ev
from hypha_sm.roles.scheduler.core.plan import DiLoCoPlan, Plan
from hypha_sm.roles.scheduler.core.role import SCHEDULER
from hypha_sm.roles.scheduler.core.state import SchedulerState
from hypha_sm.roles.scheduler.jobspec import PS_EXECUTOR, diloco_spec
from hypha_sm.roles.scheduler.metrics import MetricsSink
from hypha_sm.runtime.bootstrap import tls_files
from hypha_sm.runtime.loop import Inbox, Stepper, open_run_log, recorded_stepper, run_loop
from hypha_sm.runtime.replies import Pending, Replies, start_later
from hypha_sm.runtime.telemetry import TelemetryConfig, build_exporters
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import PeerId

log = logging.getLogger(__name__)

#: How long a renewal or a dispatch may take before it counts as failed.
RENEW_TIMEOUT = 2.0
DISPATCH_TIMEOUT = 30.0
#: How long a publish waits for a gateway connection (NNG has no connect event).
CONNECT_WAIT = 1.0
SHOWN_METRICS = 12
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass
class Placement:
    """One worker's part of the job as it stands (or ended): its lease, job id and phase."""

    worker: str
    address: str
    lease_id: str
    price: float
    job_id: str = ""
    phase: str = "accepting"
    exit_code: int | None = None
    reason: str = ""


@dataclass
class Outcome:
    """What happened to the job on each worker; ``ok`` if every part finished with exit 0."""

    placements: list[Placement]
    reason: str = ""
    #: The core's verdict, where it has one (a DiLoCo job survives a lost training worker).
    succeeded: bool | None = None

    @property
    def ok(self) -> bool:
        if self.succeeded is not None:
            return self.succeeded
        return bool(self.placements) and all(
            p.phase == "finished" and p.exit_code == 0 for p in self.placements
        )


def plan_of(job: JobSettings) -> Plan:
    """The core's plan for a job from ``job.toml``."""
    return Plan(
        workers=job.workers,
        resources=convert(job.resources, Amounts),
        bid=job.bid,
        max_price=job.max_price,
        offer_wait=job.offer_wait,
        advertise_timeout=job.advertise_timeout,
        renew_interval=job.renew_interval,
        timeout=job.timeout,
        dataset=job.dataset or "",
        slice_timeout=job.slice_timeout,
        epochs=job.epochs,
        diloco=None if job.diloco is None else diloco_plan(job.diloco),
    )


def diloco_plan(d: DiLoCoSettings) -> DiLoCoPlan:
    """The core's rounds for a DiLoCo job."""
    return DiLoCoPlan(
        rounds=d.rounds,
        samples_per_round=d.avg_samples_between_updates,
        max_batch_size=d.max_batch_size,
        ps_resources=convert(d.parameter_server.resources, Amounts),
        ps_bid=d.parameter_server.bid,
        time_cap_ms=round(d.time_cap * 1000),
        update_cap=d.update_cap,
    )


class Scheduler:
    """Runs one job on ``job.workers`` workers found through ``gateways``.

    ``event_log`` is a binary file the run's event log is written to (``hypha-sm replay``
    reads it); None records nothing.
    """

    def __init__(
        self,
        transport: Transport,
        job: JobSettings,
        *,
        gateways: list[str],
        address: str,
        public_address: str | None = None,
        wall: Callable[[], float] = time.time,
        on_progress: Callable[[Placement, m.ProgressKind], None] | None = None,
        event_log: BinaryIO | None = None,
        seed: bytes | None = None,
    ) -> None:
        self.transport = transport
        self.job = job
        self.gateways = Gateways(transport, gateways, wall=wall)
        self.address = address
        self.public_address = public_address
        self._wall = wall
        self._on_progress = on_progress
        plan = plan_of(job)
        self.stepper: Stepper[SchedulerState] = recorded_stepper(SCHEDULER, plan, event_log, seed)
        self._inbox = Inbox(4096, ev.Tick)
        self._stopped = trio.Event()
        self._replies = Replies()
        self._exits = contextlib.ExitStack()
        self._publisher: Publisher | None = None
        #: Where each data node of the dataset listens (from its signed peer record).
        self._provider_addresses: dict[str, str] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def state(self) -> SchedulerState:
        """The core's state (owned by the loop; read it between steps only)."""
        return self.stepper.state

    # -- the run -------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> Outcome:
        """Place, dispatch and follow the job; return once every part ended or timed out.

        If the job cannot be placed (no gateway, too few offers in time) the outcome says why.
        """
        with self._exits:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                bound = await nursery.start(self.transport.serve, self.address, self._answer)
                self.public_address = self.public_address or bound
                task_status.started(bound)
                nursery.start_soon(self._tell_allocation)
                await self._inbox.send(ev.Begin())
                try:
                    await run_loop(
                        self.stepper,
                        self._inbox,
                        self._perform,
                        stopped=self._stopped,
                        wall=self._wall,
                    )
                finally:
                    nursery.cancel_scope.cancel()
        return self.outcome()

    async def _tell_allocation(self) -> None:
        """While the job is being placed, a line when what the market gave changes.

        And at least every 10 s, so the wait up to advertise_timeout is not silent.
        """
        said, quiet, began = "", 0.0, trio.current_time()
        while True:
            await trio.sleep(ALLOCATION_REPORT_EVERY)
            line = allocation_line(self.state, trio.current_time() - began)
            if line is None:
                return  # placed (or over): the placements' own lines take over
            quiet += ALLOCATION_REPORT_EVERY
            if line != said or quiet >= 10.0:
                log.info("%s", line)
                said, quiet = line, 0.0

    async def stop(self) -> None:
        """Let every lease go and end the run (as SIGINT does)."""
        await self._inbox.send(ev.StopRequested())

    def outcome(self) -> Outcome:
        """Each placement of the job as it stands or ended, and why the run ended if not ok."""
        state = self.state
        placements = []
        for key in state.placed:
            rec = state.records["placement"].get(key)
            if rec is not None:
                placements.append(
                    Placement(rec.worker, rec.address, key, rec.price, rec.job_id, rec.phase)
                )
            elif (ended := state.ended.get(key)) is not None:
                placements.append(
                    Placement(
                        ended.worker,
                        ended.address,
                        key,
                        ended.price,
                        ended.job_id,
                        ended.phase,
                        ended.exit_code,
                        ended.reason,
                    )
                )
        finished = state.finished
        return Outcome(
            placements,
            "" if finished is None else finished[1],
            finished[0] if finished is not None and state.tracker is not None else None,
        )

    # -- requests to us ------------------------------------------------------------------------

    async def _answer(self, opened: Opened) -> m.Message:
        """Turn a verified request into an event; answer with the core's reply effect."""
        message = opened.message
        if isinstance(message, m.Health):
            return m.HealthReply(not self._stopped.is_set())
        if not isinstance(message, _REQUESTS):
            return m.Refused("unsupported")
        token, _ = self._replies.open(message)  # the request stays beside its token
        peer = str(opened.sender)
        event: ev.Event
        if isinstance(message, m.WorkerOffer):
            event = ev.OfferReceived(
                token,
                peer,
                message.request_id,
                message.lease_id,
                message.worker_address,
                message.price,
                convert(message.resources, Amounts),
            )
        elif isinstance(message, m.JobStatus):
            event = ev.StatusReceived(
                token, peer, message.job_id, message.status, message.exit_code, message.reason
            )
        elif isinstance(message, m.DataSliceRequest):
            event = ev.SliceRequested(token, peer, message.job_id, message.dataset)
        elif isinstance(message, m.SliceDoneReport):
            event = ev.SliceDone(token, peer, message.job_id, message.dataset, message.index)
        else:
            progress = message.progress
            kind = type(progress).__struct_config__.tag
            event = ev.ProgressReceived(
                token,
                peer,
                message.job_id,
                str(kind),
                describe_progress(progress),
                getattr(progress, "batch_size", 0),
                getattr(progress, "weights_sha256", ""),
            )
        self._inbox.push_request(event)
        return await self._replies.wait(token)

    def _reply(self, token: int, answer: m.Message) -> Pending | None:
        return self._replies.answer(token, answer)  # None if the peer gave up waiting

    # -- effects -------------------------------------------------------------------------------

    def _later(self, work: Awaitable[None]) -> None:
        assert self._nursery is not None
        start_later(self._nursery, work)

    def _perform(self, effect: fx.Effect) -> None:
        match effect:
            case fx.LocateGateways():
                self._later(self._locate())
            case fx.Publish():
                self._later(self._publish(effect))
            case fx.ReplyOffer(reply_to=token, lease_id=lease_id, reason=reason):
                self._reply(token, m.Refused(reason) if reason else m.OfferAck(lease_id))
            case fx.AcceptLease():
                self._later(self._accept(effect))
            case fx.RenewLease():
                self._later(self._renew(effect))
            case fx.DispatchJob():
                self._later(self._dispatch(effect))
            case fx.ReplyStatus(reply_to=token, job_id=job_id, reason=reason):
                self._reply(token, m.Refused(reason) if reason else m.StatusAck(job_id))
            case fx.ReplyProgress(reply_to=token, job_id=job_id, reply=reply, reason=reason):
                counter = effect.counter if reply == "schedule_update" else None
                answer = m.ProgressReply(reply, counter) if reply else m.Refused(reason)
                pending = self._reply(token, answer)
                if reply and pending is not None and isinstance(pending.context, m.Progress):
                    self._tell_progress(job_id, pending.context.progress)
            case fx.Notice(level=level, text=text):
                log.log(_LEVELS[level], "%s", text)
            case fx.Finished():
                self._stopped.set()
            case fx.LocateDataset(name=name):
                self._later(self._locate_dataset(name))
            case fx.ReplySlice():
                self._reply(effect.reply_to, self._slice_answer(effect))
            case fx.ReplyNoSlice(reply_to=token, reason=reason, retry_after=retry):
                pending = self._replies.get(token)
                request = None if pending is None else pending.context
                outcome: Literal["not_found", "error"] = "not_found" if retry else "error"
                dataset = request.dataset if isinstance(request, m.DataSliceRequest) else ""
                self._reply(
                    token, m.DataSliceAnswer(dataset, outcome, reason=reason, retry_after=retry)
                )
            case fx.ReplySliceDone(reply_to=token, reason=reason):
                self._reply(token, m.Refused(reason) if reason else m.Ack())
            case _:
                raise InvariantViolation(f"the scheduler's shell cannot perform {effect!r}")

    def _slice_answer(self, effect: fx.ReplySlice) -> m.DataSliceAnswer:
        """Where to fetch the slice, with a grant sealed by this scheduler for that worker."""
        grant = m.SliceGrant(
            effect.dataset, effect.index, effect.manifest_hash, effect.peer, effect.expires_wall
        )
        first, *others = effect.providers
        return m.DataSliceAnswer(
            effect.dataset,
            "found",
            first,
            self._provider_addresses.get(first, ""),
            effect.index,
            grant=self.transport.seal(grant),
            manifest_hash=effect.manifest_hash,
            alternates=tuple(others),
        )

    async def _locate_dataset(self, name: str) -> None:
        """The providers of ``name`` that agree on one dataset, with where they listen.

        Providers may disagree (a stranger can announce a dataset of the same name): the
        version most providers announce wins, ties to the lowest manifest hash.
        """
        records = await self.gateways.lookup_dataset(name)
        versions: dict[tuple[int, str], list[str]] = {}
        for record in records:
            versions.setdefault((record.slices, record.manifest_hash), []).append(record.provider)
        providers: list[str] = []
        chosen: tuple[int, str] = (0, "")
        for version, peers in sorted(versions.items(), key=lambda kv: (-len(kv[1]), kv[0][1])):
            for peer in sorted(peers):
                addresses = await self.gateways.lookup_peer(peer)
                if addresses:
                    self._provider_addresses[peer] = addresses[0]
                    providers.append(peer)
            if providers:
                chosen = version
                break
        if not providers:
            await self._inbox.send(ev.DatasetMissing(name, "no data node announces it"))
            return
        slices, manifest_hash = chosen
        await self._inbox.send(ev.DatasetFound(name, slices, manifest_hash, tuple(providers)))

    def _tell_progress(self, job_id: str, progress: m.ProgressKind) -> None:
        lease_id = self.state.jobs.get(job_id)
        rec = None if lease_id is None else self.state.records["placement"].get(lease_id)
        if self._on_progress is not None and rec is not None:
            view = Placement(rec.worker, rec.address, rec.key, rec.price, rec.job_id, rec.phase)
            self._on_progress(view, progress)

    async def _locate(self) -> None:
        ingests, problems = [], []
        for address in self.gateways.addresses:
            try:
                ingests.append((await self.gateways.locate(address)).ingest)
            except NetError as exc:
                log.warning("gateway %s: %s", address, exc)
                problems.append(f"{address}: {exc.reason}")
        if not ingests:
            await self._inbox.send(ev.GatewaysUnreachable("; ".join(problems) or "no gateways"))
            return
        if self._publisher is None:
            self._publisher = self._exits.enter_context(self.transport.publisher(dial=ingests))
        await self._inbox.send(ev.GatewaysLocated(tuple(ingests)))

    async def _publish(self, effect: fx.Publish) -> None:
        publisher = self._publisher
        assert publisher is not None  # the core publishes only after the gateways answered
        with trio.move_on_after(CONNECT_WAIT):
            while not publisher.connections:  # noqa: ASYNC110
                await trio.sleep(0.02)  # NNG has no connect event
        if not publisher.connections:
            await self._inbox.send(ev.PublishFailed(effect.request_id, "no gateway connection"))
            return
        await publisher.publish(self._advertisement(effect))
        await self._inbox.send(ev.Published(effect.request_id))

    def _advertisement(self, effect: fx.Publish) -> m.Advertisement:
        executor = m.Executor(cls=self.job.executor.cls, name=self.job.executor.name)
        resources, bid = self.job.resources, self.job.bid
        if effect.group == "ps" and self.job.diloco is not None:
            executor = PS_EXECUTOR
            resources = self.job.diloco.parameter_server.resources
            bid = self.job.diloco.parameter_server.bid
        return m.Advertisement(
            effect.request_id,
            str(self.transport.peer_id),
            self.public_address or self.address,
            convert(resources, m.Resources),
            (executor,),
            bid,
            effect.expires_wall,
            OFFER_LIFETIME,
        )

    async def _accept(self, effect: fx.AcceptLease) -> None:
        try:
            answer = await self.transport.request(
                effect.address,
                m.RenewLease(effect.lease_id),
                expect=PeerId.parse(effect.worker),
                timeout=self.stepper.state.plan.accept_timeout,
            )
        except NetError as exc:
            await self._inbox.send(ev.AcceptFailed(effect.lease_id, exc.reason))
            return
        if isinstance(answer.message, m.LeaseRenewed):
            await self._inbox.send(ev.LeaseAccepted(effect.lease_id, answer.message.expires))
        else:
            await self._inbox.send(ev.AcceptFailed(effect.lease_id, _why(answer.message)))

    async def _renew(self, effect: fx.RenewLease) -> None:
        try:
            answer = await self.transport.request(
                effect.address,
                m.RenewLease(effect.lease_id),
                expect=PeerId.parse(effect.worker),
                timeout=RENEW_TIMEOUT,
            )
        except NetError as exc:
            await self._inbox.send(ev.RenewFailed(effect.lease_id, exc.reason))
            return
        if isinstance(answer.message, m.LeaseRenewed):
            await self._inbox.send(ev.Renewed(effect.lease_id, answer.message.expires))
        else:
            reason = f"{ev.RENEWAL_REFUSED}{_why(answer.message)}"
            await self._inbox.send(ev.RenewRefused(effect.lease_id, reason))

    async def _dispatch(self, effect: fx.DispatchJob) -> None:
        executor = m.Executor(cls=self.job.executor.cls, name=self.job.executor.name)
        spec: dict[str, object]
        if self.job.diloco is not None:
            if effect.group == "ps":
                executor = PS_EXECUTOR
            spec = diloco_spec(self.job, effect, str(self.transport.peer_id), executor)
        else:
            spec = {
                "job_id": effect.job_id,
                "index": effect.index,
                "workers": list(effect.workers),
                "peers": [w for w in effect.workers if w != effect.worker],
                "scheduler": str(self.transport.peer_id),
                "config": self.job.spec,
            }
        try:
            answer = await self.transport.request(
                effect.address,
                m.DispatchJob(effect.job_id, effect.lease_id, executor, json.dumps(spec)),
                expect=PeerId.parse(effect.worker),
                timeout=DISPATCH_TIMEOUT,
            )
        except NetError as exc:
            await self._inbox.send(ev.DispatchFailed(effect.lease_id, f"dispatch failed: {exc}"))
            return
        message = answer.message
        if isinstance(message, m.JobDispatched):
            await self._inbox.send(ev.Dispatched(effect.lease_id))
        elif isinstance(message, m.DispatchFailed):
            detail = f" ({message.detail})" if message.detail else ""
            reason = f"dispatch refused: {message.reason}{detail}"
            await self._inbox.send(ev.DispatchFailed(effect.lease_id, reason))
        else:
            reason = f"dispatch answered {type(message).__name__}"
            await self._inbox.send(ev.DispatchFailed(effect.lease_id, reason))


#: The requests the scheduler answers through its core (each with a reply effect).
_REQUESTS = (m.WorkerOffer, m.JobStatus, m.DataSliceRequest, m.SliceDoneReport, m.Progress)


def _why(message: m.Message) -> str:
    return str(getattr(message, "reason", type(message).__name__))


def describe_progress(progress: m.ProgressKind) -> str:
    """One human line for a progress report."""
    match progress:
        case m.RoundMetrics(round=n, metrics=metrics):
            names = sorted(metrics)
            shown = " ".join(f"{k}={metrics[k]:.4g}" for k in names[:SHOWN_METRICS])
            more = f" (+{len(names) - SHOWN_METRICS} more)" if len(names) > SHOWN_METRICS else ""
            return f"round {n}: {shown}{more}"
        case m.BatchStatus(batch_size=size):
            return f"step done (batch {size})"
        case m.UpdateStarted():
            return "sending its update"
        case m.UpdateApplied():
            return "update applied"
        case m.UpdateReceived():
            return "update received"


#: Seconds an offer should stay open for us: a worker's default is 0.5 s, and on a loaded
#: machine an acceptance arrived 0.61 s after the offer (issue 14, item 7).
OFFER_LIFETIME = 2.0
#: Seconds between two looks at how the placing goes.
ALLOCATION_REPORT_EVERY = 2.0
_PLACING = ("idle", "locating", "advertising", "collecting", "accepting")


def allocation_line(state: SchedulerState, waited: float) -> str | None:
    """How placing the job goes after ``waited`` seconds, in one line.

    None once it is placed or over.
    """
    allocation = state.records["allocation"].get("job")
    if allocation is None or allocation.phase not in _PLACING:
        return None
    counters = state.counters
    refused = {
        k.removeprefix("offers.refused."): v
        for k, v in counters.items()
        if k.startswith("offers.refused.") and v
    }
    offers = counters["offers.taken"] + sum(refused.values())
    held = sum(len(state.held_in(g)) for g in state.groups())
    wanted = sum(state.wanted(g) for g in state.groups())
    why = ", ".join(f"{r} {n}" for r, n in sorted(refused.items()))
    return (
        f"placing the job ({allocation.phase}, {waited:.0f} of {state.plan.advertise_timeout:g} s):"
        f" {offers} offer(s) seen"
        + (f", {sum(refused.values())} refused ({why})" if refused else "")
        + f", {held} of {wanted} lease(s) held"
    )


async def run_scheduler(
    settings: SchedulerSettings, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> Outcome:
    """Run the job described by ``settings`` on the real network; its outcome.

    With ``event_log_dir`` set, the run's event log is ``<dir>/scheduler-<run>-000001.jsonl``
    (``hypha-sm replay <dir>`` replays the newest run).
    """
    identity = load_key_file(settings.node_key)
    with contextlib.ExitStack() as files:
        sink: BinaryIO | None = None
        if settings.event_log_dir is not None:
            sink = files.enter_context(open_run_log(settings.event_log_dir, SCHEDULER))
            log.info("event log %s", sink.name)
        with Endpoint(identity, NetConfig(tls=tls_files(settings))) as transport:
            metrics = metrics_sink(settings, identity.peer_id)
            scheduler = Scheduler(
                transport,
                settings.job,
                gateways=settings.gateway_addresses,
                address=settings.listen_address,
                public_address=settings.external_address,
                event_log=sink,
                on_progress=None if metrics is None else _metrics_hook(metrics),
            )
            log.info("scheduler %s: %d worker(s) wanted", identity.peer_id, settings.job.workers)
            try:
                return await scheduler.run(task_status=task_status)
            finally:
                if metrics is not None:
                    png = metrics.plot()
                    print(
                        f"metrics: {metrics.jsonl}, {metrics.csv}"
                        + (f", loss curve {png}" if png else ""),
                        flush=True,
                    )


def metrics_sink(settings: SchedulerSettings, peer_id: object) -> MetricsSink | None:
    """A DiLoCo job's metrics sink (None for other jobs).

    Files go to ``metrics_dir`` (else beside the event log, or here); with
    ``telemetry_endpoint`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT``) the values go to OpenTelemetry.
    """
    job = settings.job
    if job.diloco is None:
        return None
    directory = job.metrics_dir or (settings.event_log_dir or Path.cwd()) / "metrics"
    from rich.console import Console

    return MetricsSink(directory, job.workers, _meter(settings, peer_id), Console())


def _meter(settings: SchedulerSettings, peer_id: object) -> Any:
    config = TelemetryConfig.from_settings(settings, peer_id)
    if config is None:
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    exporter, _ = build_exporters(config)
    reader = PeriodicExportingMetricReader(
        exporter, export_interval_millis=config.export_interval * 1000
    )
    resource = Resource.create({**config.resource, "service.name": "hypha-scheduler"})
    provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
    atexit.register(provider.shutdown)  # the last round's values are exported before exit
    return provider.get_meter("hypha_sm.scheduler")


def _metrics_hook(sink: MetricsSink) -> Callable[[Placement, m.ProgressKind], None]:
    def hook(placement: Placement, progress: m.ProgressKind) -> None:
        if isinstance(progress, m.RoundMetrics):
            sink.record(placement.worker, progress.round, dict(progress.metrics))

    return hook
