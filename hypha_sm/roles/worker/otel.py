"""The worker's telemetry when it is on: OpenTelemetry metrics and spans read off the core's steps.

See ``hypha_sm.roles.worker.telemetry`` for the interface and docs/telemetry.md for what is
exported. Counting is done in plain Python counters on the loop's thread; the SDK reads them
through observable instruments when it exports (on its own thread).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from hypha_sm import __version__
from hypha_sm.core.engine import CREATED, REJECTED, Engine
from hypha_sm.core.errors import InvariantViolation
from hypha_sm.core.trace import TraceEntry
from hypha_sm.roles.worker.core.effects import (
    ReplyDispatched,
    ReplyDispatchFailed,
    ReplyRenewed,
    ReplyRenewFailed,
    SendOffer,
    StartJob,
)
from hypha_sm.roles.worker.core.events import AdvertisementReceived, Event, JobExited, Now
from hypha_sm.roles.worker.core.reducer import Step

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Histogram, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Span, Tracer


from hypha_sm.roles.worker.telemetry import SAMPLE_EVERY, Direction, StatsSource, Telemetry
from hypha_sm.runtime.telemetry import (
    DEFAULT_SERVICE_NAME,
    TelemetryConfig,
    TelemetrySettings,
    build_exporters,
    build_sampler,
)

#: The declared phases whose entry the spans mark (checked against machines/worker/ by a test
#: and when telemetry binds to an engine: a renamed phase must not silently drop a span event).
JOB_PHASES_READ = ("running", "cancelling", "reporting", "failed")
REQUEST_PHASES_READ = ("declined",)

log = logging.getLogger(__name__)

DURATION_BUCKETS: Final = (
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    21600.0, 86400.0,
)  # fmt: skip
ENDED_JOBS_REMEMBERED: Final = 4096


# -- the real one ----------------------------------------------------------------------------


class _Live:
    """A lease or job being traced: its span, its record, and when it began."""

    __slots__ = ("rec", "renewals", "span", "start_mono", "timed")

    def __init__(self, span: Span, rec: Any, start_mono: float) -> None:
        self.span = span
        self.rec = rec
        self.start_mono = start_mono
        self.renewals = 0
        self.timed = False


@dataclass(frozen=True)
class _NetSnapshot:
    accepted: int = 0
    rejected: Mapping[str, int] | None = None
    duplicates: int = 0
    dropped: int = 0
    failed: Mapping[str, int] | None = None
    connection_errors: int = 0
    bytes_in: Mapping[str, int] | None = None
    bytes_out: Mapping[str, int] | None = None


def _ns(now: Now) -> int:
    return int(now.wall * 1e9)


def _attrs(names: tuple[str, ...], values: tuple[Any, ...]) -> dict[str, Any]:
    return {n: v for n, v in zip(names, values, strict=True) if v is not None and v != ""}


class OtelTelemetry(Telemetry):
    """Telemetry on: metrics and spans through the OpenTelemetry SDK.

    Args:
        resource: the resource's attributes (default: ``service.name=hypha-worker``).
        metric_readers: where metrics go (``PeriodicExportingMetricReader`` in production,
            ``InMemoryMetricReader`` in tests).
        span_exporters: each is wrapped in a ``SimpleSpanProcessor`` (exports as a span ends).
        span_processors: added as they are (``BatchSpanProcessor`` in production).
        sampler: the trace sampler (default: always on).
    """

    enabled = True
    #: What ``from_config`` built it from (None when built directly, as tests do).
    config: TelemetryConfig | None = None

    def __init__(
        self,
        *,
        resource: Mapping[str, str] | None = None,
        metric_readers: Sequence[MetricReader] = (),
        span_exporters: Sequence[SpanExporter] = (),
        span_processors: Sequence[SpanProcessor] = (),
        sampler: Sampler | None = None,
    ) -> None:
        from opentelemetry.metrics import Observation
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.version import __version__ as sdk_version

        attributes = dict(resource or {"service.name": DEFAULT_SERVICE_NAME})
        res = Resource(
            {
                "telemetry.sdk.language": "python",
                "telemetry.sdk.name": "opentelemetry",
                "telemetry.sdk.version": sdk_version,
                **attributes,
            }
        )
        self.resource = res
        self.meter_provider: MeterProvider = MeterProvider(
            metric_readers=list(metric_readers), resource=res, shutdown_on_exit=False
        )
        self.tracer_provider: TracerProvider = TracerProvider(
            sampler=sampler or build_sampler(None, None), resource=res, shutdown_on_exit=False
        )
        for exporter in span_exporters:
            self.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        for processor in span_processors:
            self.tracer_provider.add_span_processor(processor)
        self.tracer: Tracer = self.tracer_provider.get_tracer("hypha_sm", __version__)
        self._observation = Observation
        #: Errors raised inside hooks (logged, never propagated into the node loop).
        self.errors = 0
        self._closed = False

        # Counters kept on the loop's thread, read by the SDK at export time.
        self._steps = 0
        self._received = 0
        self._offered = 0
        self._declined: Counter[str] = Counter()
        self._lease_states: Counter[str] = Counter()
        self._lease_releases: Counter[str] = Counter()
        self._renewals: Counter[tuple[str, str]] = Counter()
        self._dispatches: Counter[tuple[str, str]] = Counter()
        self._jobs: Counter[tuple[str, int | None]] = Counter()
        self._bridge: Counter[tuple[str, int]] = Counter()
        self._bytes_in: Counter[str] = Counter()
        self._bytes_out: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._net = _NetSnapshot()
        self._transports: list[StatsSource] = []
        self._next_sample = -math.inf

        # What is being traced, and the trace ids of recently ended jobs.
        self._leases: dict[str, _Live] = {}
        self._live_jobs: dict[str, _Live] = {}
        self._ended_traces: collections.OrderedDict[str, str] = collections.OrderedDict()

        # Read from the machine definitions on the first step.
        self._engine: Engine | None = None
        self._reasons: dict[tuple[str, int], str] = {}
        self._lease_terminal: frozenset[str] = frozenset()
        self._job_terminal: frozenset[str] = frozenset()

        meter = self.meter_provider.get_meter("hypha_sm", __version__)
        self._duration: Histogram = meter.create_histogram(
            "hypha.job.duration",
            unit="s",
            description="Time from dispatch until the job's processes were gone, by status",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        count = meter.create_observable_counter
        count(
            "hypha.core.steps",
            [self._scalar(lambda: self._steps)],
            "{step}",
            "Inputs the core has stepped",
        )
        count(
            "hypha.advertisements.received",
            [self._scalar(lambda: self._received)],
            "{advertisement}",
            "Job advertisements received (duplicates included)",
        )
        count(
            "hypha.advertisements.offered",
            [self._scalar(lambda: self._offered)],
            "{advertisement}",
            "Advertisements answered with an offer",
        )
        count(
            "hypha.advertisements.declined",
            [self._tally(self._declined, ("reason",))],
            "{advertisement}",
            "Advertisements dropped without an offer, by reason",
        )
        meter.create_observable_up_down_counter(
            "hypha.leases",
            [self._tally(self._lease_states, ("state",))],
            "{lease}",
            "Live leases by state",
        )
        count(
            "hypha.lease.releases",
            [self._tally(self._lease_releases, ("reason",))],
            "{lease}",
            "Leases released, by reason",
        )
        count(
            "hypha.lease.renewals",
            [self._tally(self._renewals, ("outcome", "reason"))],
            "{request}",
            "Lease renewal requests, by outcome (renewed, refused) and refusal reason",
        )
        count(
            "hypha.job.dispatches",
            [self._tally(self._dispatches, ("outcome", "reason"))],
            "{request}",
            "Dispatch requests answered, by outcome (dispatched, refused) and reason",
        )
        count(
            "hypha.jobs",
            [self._tally(self._jobs, ("status", "exit_code"))],
            "{job}",
            "Jobs ended, by final status and exit code",
        )
        count(
            "hypha.bridge.requests",
            [self._tally(self._bridge, ("route", "status_code"))],
            "{request}",
            "Job-bridge requests, by route and HTTP status",
        )
        count(
            "hypha.bandwidth.inbound.bytes",
            [self._bandwidth(self._bytes_in, "bytes_in")],
            "By",
            "Inbound bandwidth usage by transport protocols",
        )
        count(
            "hypha.bandwidth.outbound.bytes",
            [self._bandwidth(self._bytes_out, "bytes_out")],
            "By",
            "Outbound bandwidth usage by transport protocols",
        )
        count(
            "hypha.messages.rejected",
            [self._rejected_callback],
            "{message}",
            "Envelopes and connections refused, by reason",
        )
        count(
            "hypha.messages.accepted",
            [self._scalar(lambda: self._net.accepted)],
            "{message}",
            "Envelopes verified and handed on",
        )
        count(
            "hypha.messages.duplicates",
            [self._scalar(lambda: self._net.duplicates)],
            "{message}",
            "Publications already seen (through another gateway)",
        )
        count(
            "hypha.messages.dropped",
            [self._scalar(lambda: self._net.dropped)],
            "{message}",
            "Publications lost on the way (gaps in a connection's numbering)",
        )
        count(
            "hypha.requests.failed",
            [self._failed_callback],
            "{request}",
            "This node's own requests that failed, by reason",
        )

    @classmethod
    def from_config(cls, config: TelemetryConfig) -> OtelTelemetry:
        """Exporting over OTLP as ``config`` says (periodic metrics, batched spans)."""
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        metric_exporter, span_exporter = build_exporters(config)
        interval_ms = config.export_interval * 1000.0
        timeout_ms = (config.export_timeout or 30.0) * 1000.0
        reader = PeriodicExportingMetricReader(
            metric_exporter, export_interval_millis=interval_ms, export_timeout_millis=timeout_ms
        )
        telemetry = cls(
            resource=config.resource,
            metric_readers=[reader],
            span_processors=[BatchSpanProcessor(span_exporter)],
            sampler=build_sampler(config.sampler, config.sample_ratio),
        )
        telemetry.config = config
        return telemetry

    # -- observable callbacks (run on the SDK's export thread) ---------------------------------

    def _scalar(
        self, read: Callable[[], int]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        observation = self._observation

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [observation(read())]

        return callback

    def _tally(
        self, counts: Counter[Any], names: tuple[str, ...]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        observation = self._observation
        single = len(names) == 1

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            items = list(counts.items())  # one C-level copy: safe against the loop's updates
            return [observation(v, _attrs(names, (k,) if single else k)) for k, v in items]

        return callback

    def _bandwidth(
        self, counted: Counter[str], field: str
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """Bytes reported through ``on_bytes`` plus those the watched transports counted."""
        observation = self._observation

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            totals: Counter[str] = Counter(dict(counted))
            totals.update(getattr(self._net, field) or {})
            return [observation(v, {"protocols": k}) for k, v in totals.items()]

        return callback

    def _rejected_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        totals: Counter[str] = Counter(dict(self._rejected))
        totals.update(self._net.rejected or {})
        return [self._observation(v, {"reason": k}) for k, v in totals.items()]

    def _failed_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        failed = self._net.failed or {}
        return [self._observation(v, {"reason": k}) for k, v in failed.items()]

    # -- hooks -----------------------------------------------------------------------------------

    def on_step(self, event: Event, result: Step, now: Now) -> None:
        """Derive counters, lease and job spans and durations from one step."""
        if self._closed:
            return
        try:
            self._steps += 1
            if type(event) is AdvertisementReceived:
                self._received += 1
            state = result.state
            if state.engine is not self._engine:
                self._bind(state.engine)
            for entry in result.trace:
                kind = entry[0]
                if kind == "request":
                    if entry[4] == "declined":
                        self._declined[self._reasons.get(("request", entry[5]), "unknown")] += 1
                    elif entry[5] == REJECTED:
                        self._declined["duplicate"] += 1
                elif kind == "batch":
                    reason = self._reasons.get(("batch", entry[5]))
                    if reason is not None:
                        self._declined[reason] += 1
                elif kind == "lease":
                    self._on_lease(entry, result, now)
                elif kind == "job":
                    self._on_job(entry, event, result, now)
            for effect in result.effects:
                if isinstance(effect, SendOffer):
                    self._offered += 1
                elif isinstance(effect, ReplyRenewed):
                    self._renewals[("renewed", "")] += 1
                    live = self._leases.get(effect.lease_id)
                    if live is not None:
                        live.renewals += 1
                elif isinstance(effect, ReplyRenewFailed):
                    self._renewals[("refused", effect.reason)] += 1
                elif isinstance(effect, ReplyDispatched):
                    self._dispatches[("dispatched", "")] += 1
                elif isinstance(effect, ReplyDispatchFailed):
                    self._dispatches[("refused", effect.reason)] += 1
            if self._transports and now.mono >= self._next_sample:
                self._next_sample = now.mono + SAMPLE_EVERY
                self.sample()
        except Exception:
            self._failed("on_step")

    def _failed(self, where: str) -> None:
        self.errors += 1
        if self.errors <= 10:
            log.exception("telemetry: %s failed (the node carries on)", where)

    def _bind(self, engine: Engine) -> None:
        """Read reasons and terminal phases from the machine definitions."""
        reasons: dict[tuple[str, int], str] = {}
        for kind, action in (("request", "decline"), ("batch", "refuse_advertisement")):
            for t in engine.specs[kind].transitions:
                for ref in t.effects:
                    if ref.name == action and ref.arg:
                        reasons[(kind, t.index)] = ref.arg
        for t in engine.specs["lease"].transitions:
            for ref in t.effects:
                if ref.name == "release" and ref.arg:
                    reasons[("lease", t.index)] = ref.arg
        self._reasons = reasons
        for kind, names in (("job", JOB_PHASES_READ), ("request", REQUEST_PHASES_READ)):
            declared = {state.name for state in engine.specs[kind].states}
            if not declared.issuperset(names):
                raise InvariantViolation(
                    f"telemetry reads {kind} phases {sorted(set(names) - declared)}, "
                    "which the machines do not declare"
                )
        self._lease_terminal = frozenset(engine.runtimes["lease"].terminal)
        self._job_terminal = frozenset(engine.runtimes["job"].terminal)
        self._engine = engine

    def _on_lease(self, entry: TraceEntry, result: Step, now: Now) -> None:
        _, key, src, _, dst, index = entry
        if dst is None:
            return  # ignored or rejected
        if index == CREATED:
            rec = result.state.records["lease"].get(key)
            if rec is not None:
                request_id, owner, price = rec.request_id, rec.owner, rec.price
            else:  # created and released in the same step: the offer has what we need
                offer = next(
                    e for e in result.effects if type(e) is SendOffer and e.lease_id == key
                )
                request_id, owner, price = offer.request_id, offer.scheduler, offer.price
            span = self.tracer.start_span(
                "hypha.lease",
                start_time=_ns(now),
                attributes={
                    "hypha.lease.id": key,
                    "hypha.request.id": request_id,
                    "hypha.scheduler": owner,
                    "hypha.lease.price": price,
                },
            )
            self._leases[key] = _Live(span, rec, now.mono)
            self._lease_states[dst] += 1
            return
        live = self._leases.get(key)
        if dst == src or live is None:
            return  # no phase change, or a lease from before telemetry started
        self._lease_states[src] -= 1
        if dst not in self._lease_terminal:
            self._lease_states[dst] += 1
            live.span.add_event(dst, timestamp=_ns(now))
            return
        reason = live.rec.end_reason if live.rec is not None else ""
        reason = reason or self._reasons.get(("lease", index), "")
        self._lease_releases[reason] += 1
        del self._leases[key]
        attributes: dict[str, Any] = {
            "hypha.lease.state": dst,
            "hypha.lease.end_reason": reason,
            "hypha.lease.renewals": live.renewals,
        }
        if live.rec is not None and live.rec.job_id is not None:
            attributes["hypha.job.id"] = live.rec.job_id
        live.span.set_attributes(attributes)
        live.span.end(end_time=_ns(now))

    def _on_job(self, entry: TraceEntry, event: Event, result: Step, now: Now) -> None:
        _, key, src, _, dst, index = entry
        if dst is None:
            return
        if index == CREATED:
            self._start_job(key, result, now)
            return
        if dst == src:
            return
        live = self._live_jobs.get(key)
        if live is None:
            return
        span, rec = live.span, live.rec
        if dst == "running":
            span.add_event("started", timestamp=_ns(now))
        elif dst == "cancelling":
            span.add_event("stopping", {"hypha.job.reason": rec.reason}, timestamp=_ns(now))
        elif dst == "reporting":
            exited = {"hypha.job.status": rec.outcome}
            if type(event) is JobExited:
                exited["hypha.job.exit_code"] = event.exit_code
            span.add_event("exited", exited, timestamp=_ns(now))
            self._time_job(live, rec.outcome, now)
        if dst not in self._job_terminal:
            return
        self._time_job(live, dst, now)
        exit_code: int | None = rec.exit_code
        self._jobs[(dst, exit_code)] += 1
        attributes: dict[str, Any] = {"hypha.job.status": dst}
        if exit_code is not None:
            attributes["hypha.job.exit_code"] = exit_code
        if rec.reason:
            attributes["hypha.job.reason"] = rec.reason
        span.set_attributes(attributes)
        if dst == "failed":
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, rec.reason or f"exit code {exit_code}"))
        span.end(end_time=_ns(now))
        del self._live_jobs[key]
        ended = self._ended_traces
        ended[key] = _trace_hex(span)
        if len(ended) > ENDED_JOBS_REMEMBERED:
            ended.popitem(last=False)

    def _start_job(self, key: str, result: Step, now: Now) -> None:
        from opentelemetry.trace import set_span_in_context

        rec = result.state.records["job"].get(key)
        start = next(e for e in result.effects if type(e) is StartJob and e.job_id == key)
        lease = self._leases.get(start.lease_id)
        context = set_span_in_context(lease.span) if lease is not None else None
        attributes: dict[str, Any] = {
            "hypha.job.id": key,
            "hypha.lease.id": start.lease_id,
            "hypha.executor.class": start.executor.cls,
            "hypha.executor.name": start.executor.name,
        }
        if lease is not None and lease.rec is not None:
            attributes["hypha.request.id"] = lease.rec.request_id
            attributes["hypha.scheduler"] = lease.rec.owner
        span = self.tracer.start_span(
            "hypha.job", context=context, start_time=_ns(now), attributes=attributes
        )
        self._live_jobs[key] = _Live(span, rec, now.mono)

    def _time_job(self, live: _Live, status: str, now: Now) -> None:
        if not live.timed:
            live.timed = True
            self._duration.record(now.mono - live.start_mono, {"status": status})

    def on_bridge_request(self, route: str, status_code: int) -> None:
        """Count one job-bridge request by route name and HTTP status."""
        self._bridge[(route, int(status_code))] += 1

    def on_bytes(self, protocols: str, direction: Direction, n: int) -> None:
        """Count ``n`` bytes read (inbound) or written (outbound) over ``protocols``.

        Raises:
            ValueError: ``direction`` is neither ``inbound`` nor ``outbound``.
        """
        if direction == "inbound":
            self._bytes_in[protocols] += n
        elif direction == "outbound":
            self._bytes_out[protocols] += n
        else:
            raise ValueError(f"direction must be 'inbound' or 'outbound', not {direction!r}")

    def on_rejected(self, reason: str) -> None:
        """Count one refused message that no watched transport counts."""
        self._rejected[reason] += 1

    def watch_transport(self, transport: StatsSource) -> None:
        """Export this transport's ``NetStats`` (read on the trio thread by ``sample``)."""
        self._transports.append(transport)
        self.sample()

    def sample(self) -> None:
        """Read the watched transports now; the exporter sees this snapshot."""
        if not self._transports:
            return
        try:
            rejected: Counter[str] = Counter()
            failed: Counter[str] = Counter()
            accepted = duplicates = dropped = connection_errors = 0
            bytes_in: Counter[str] = Counter()
            bytes_out: Counter[str] = Counter()
            for transport in self._transports:
                s = transport.stats()
                bytes_in.update(s.bytes_in)
                bytes_out.update(s.bytes_out)
                accepted += s.accepted
                rejected.update(s.rejected)
                duplicates += s.duplicates
                dropped += s.dropped
                failed.update(s.failed_requests)
                connection_errors += s.connection_errors
            if connection_errors:
                rejected["connection_error"] += connection_errors
            self._net = _NetSnapshot(
                accepted,
                dict(rejected),
                duplicates,
                dropped,
                dict(failed),
                connection_errors,
                dict(bytes_in),
                dict(bytes_out),
            )
        except Exception:
            self._failed("sample")

    async def sample_forever(self, interval: float = SAMPLE_EVERY) -> None:
        """Read the watched transports every ``interval`` seconds, until cancelled."""
        import trio

        while True:
            self.sample()
            await trio.sleep(interval)

    def trace_id(self, job_id: str) -> str | None:
        """The job's trace id (32 hex digits) while it lives and for a while after."""
        live = self._live_jobs.get(job_id)
        if live is not None:
            return _trace_hex(live.span)
        return self._ended_traces.get(job_id)

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        """Read the transports, then export all metrics and ended spans now (blocks)."""
        if self._closed:
            return True
        self.sample()
        return self._flush_providers(timeout_millis)

    def _flush_providers(self, timeout_millis: int) -> bool:
        metrics_ok = self.meter_provider.force_flush(timeout_millis)
        spans_ok = self.tracer_provider.force_flush(timeout_millis)
        return bool(metrics_ok and spans_ok)

    async def aflush(self) -> bool:
        """``force_flush`` with the export in a worker thread (the trio loop keeps running)."""
        import trio

        if self._closed:
            return True
        self.sample()
        return await trio.to_thread.run_sync(self._flush_providers, 10_000, abandon_on_cancel=True)

    def shutdown(self) -> None:
        """End spans still open (marked ``hypha.unfinished``), export, stop the exporters."""
        if self._close():
            self._shutdown_providers()

    async def aclose(self) -> None:
        """``shutdown`` with the final export in a worker thread (cancellable)."""
        import trio

        if self._close():
            await trio.to_thread.run_sync(self._shutdown_providers, abandon_on_cancel=True)

    def _close(self) -> bool:
        """Take the last reading and end open spans; False if already closed."""
        if self._closed:
            return False
        self.sample()
        end = time.time_ns()
        for live in [*self._live_jobs.values(), *self._leases.values()]:
            live.span.set_attribute("hypha.unfinished", True)
            live.span.end(end_time=end)
        self._live_jobs.clear()
        self._leases.clear()
        self._closed = True
        return True

    def _shutdown_providers(self) -> None:
        for shut in (self.meter_provider.shutdown, self.tracer_provider.shutdown):
            try:
                shut()
            except Exception:
                self._failed("shutdown")


def _trace_hex(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def telemetry_from_settings(
    settings: TelemetrySettings,
    peer_id: object,
    *,
    environ: Mapping[str, str] | None = None,
) -> Telemetry:
    """Exporting over OTLP if ``telemetry_endpoint`` is set, else the switched-off ``Telemetry``.

    Raises:
        TelemetryConfigError: see ``TelemetryConfig.from_settings``.
    """
    config = TelemetryConfig.from_settings(settings, peer_id, environ=environ)
    if config is None:
        return Telemetry()
    return OtelTelemetry.from_config(config)
