"""The worker's telemetry interface: the switched-off ``Telemetry`` and the log adapters.

The working implementation is ``hypha_sm.roles.worker.otel.OtelTelemetry``; build either with
``hypha_sm.roles.worker.otel.telemetry_from_settings``.

Theory of operation. Telemetry is off unless an endpoint is configured; then ``Telemetry`` is a
do-nothing object whose hooks return at once, and the OpenTelemetry SDK is never imported. When
it is on (``OtelTelemetry``), the node loop makes one call per input,
``telemetry.on_step(event, result, now)``, and everything about the core is derived from that
step: the input, the effects, and the trace of transitions (machine, key, from, event, to,
index of the declared transition). Decline and release reasons are the arguments of the
declared actions (``decline(below_floor)``, ``release(expired)``), read once from the machine
definitions, so nothing here repeats the core's decisions. The shell's other parts report
through ``on_bridge_request``, ``on_bytes`` and ``on_rejected``; a transport's own counters are
read with ``watch_transport``.

Counting is done in plain Python counters on the loop's thread; the SDK reads them through
observable instruments when it exports (on its own thread), so a step costs a few dictionary
updates, not an SDK call per metric. Only the job-duration histogram and the spans call the SDK
directly, and those happen once per lease or job, not per advertisement.

Spans: one ``hypha.lease`` span per lease (from the offer to the release) and one ``hypha.job``
span per job (from the dispatch to its final report), the job's span a child of its lease's, so
the two share a trace id. Span times are the step's wall clock (``Now.wall``).
``job_log_extra(job_id)`` and ``job_logger(logger, job_id)`` put that trace id into log lines.

Settings (``hypha_sm.runtime.telemetry.TelemetryConfig.from_settings``): the ``telemetry_*`` keys of ``WorkerSettings``
(``OTEL_*`` variables are already merged into them) and ``OTEL_SERVICE_NAME``. See
docs/telemetry.md.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from hypha_sm.net.transport import NetStats
from hypha_sm.roles.worker.core.events import Event, Now
from hypha_sm.roles.worker.core.reducer import Step

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)

SAMPLE_EVERY: Final = 1.0

Direction = Literal["inbound", "outbound"]


# -- the disabled telemetry (and the interface) ---------------------------------------------


class StatsSource(Protocol):
    """What ``watch_transport`` reads: a ``Transport`` (``Endpoint``, ``MemoryEndpoint``)."""

    def stats(self) -> NetStats: ...


class Telemetry:
    """Telemetry switched off: every hook returns at once and nothing is exported.

    ``OtelTelemetry`` has the same interface and does the work. Build either with
    ``hypha_sm.roles.worker.otel.telemetry_from_settings``. All hooks are called from the trio thread.
    """

    enabled: bool = False

    def on_step(self, event: Event, result: Step, now: Now) -> None:
        """Observe one core step (call it right after ``Recorder.feed``)."""

    def on_bridge_request(self, route: str, status_code: int) -> None:
        """Count one job-bridge request by route name and HTTP status."""

    def on_bytes(self, protocols: str, direction: Direction, n: int) -> None:
        """Count ``n`` bytes read (inbound) or written (outbound) over ``protocols``."""

    def on_rejected(self, reason: str) -> None:
        """Count one refused message that no watched transport counts."""

    def watch_transport(self, transport: StatsSource) -> None:
        """Export this transport's counters (``NetStats``) from now on."""

    def sample(self) -> None:
        """Read the watched transports now (on the trio thread)."""

    async def sample_forever(self, interval: float = SAMPLE_EVERY) -> None:
        """Read the watched transports every ``interval`` s (a nursery task; off: returns)."""

    def trace_id(self, job_id: str) -> str | None:
        """The job's trace id as 32 hex digits, while live and for a while after (off: None)."""
        return None

    def job_log_extra(self, job_id: str) -> dict[str, str]:
        """``extra=`` for a log call about a job: ``job_id`` and ``trace_id`` ('' if none)."""
        return {"job_id": job_id, "trace_id": self.trace_id(job_id) or ""}

    def job_logger(self, logger: logging.Logger, job_id: str) -> JobLogAdapter:
        """A logger whose lines about this job end with ``trace_id=<hex>`` (when known)."""
        return JobLogAdapter(logger, self, job_id)

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        """Export everything recorded so far (blocks; see ``aflush``).

        Returns False if the SDK says the flush did not finish. A collector that cannot be
        reached is logged by the exporters; each export gives up after ``export_timeout``.
        """
        return True

    def shutdown(self) -> None:
        """End open spans, export, and stop the exporters (idempotent; blocks, see ``aclose``).

        Call it once the node loop has stopped.
        """

    async def aflush(self) -> bool:
        """``force_flush`` without blocking trio: the export runs in a worker thread."""
        return True

    async def aclose(self) -> None:
        """``shutdown`` without blocking trio (a forced exit may cancel it)."""


class JobLogAdapter(logging.LoggerAdapter[logging.Logger]):
    """Adds ``job_id`` and ``trace_id`` to each record and ``trace_id=<hex>`` to the message.

    The trace id is looked up when the line is logged, so an adapter made before the job's
    span started (or after it ended) still finds it.
    """

    def __init__(self, logger: logging.Logger, telemetry: Telemetry, job_id: str) -> None:
        super().__init__(logger, {"job_id": job_id})
        self.telemetry = telemetry
        self.job_id = job_id

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Attach the job's ids; append the trace id to the message."""
        extra = self.telemetry.job_log_extra(self.job_id)
        kwargs["extra"] = {**extra, **(kwargs.get("extra") or {})}
        if extra["trace_id"]:
            msg = f"{msg} trace_id={extra['trace_id']}"
        return msg, kwargs


class TraceIdFilter(logging.Filter):
    """Gives every record a ``trace_id`` (found from its ``job_id`` extra, else '').

    Install it on a handler whose format uses ``%(trace_id)s``.
    """

    def __init__(self, telemetry: Telemetry) -> None:
        super().__init__()
        self.telemetry = telemetry

    def filter(self, record: logging.LogRecord) -> bool:
        """Set ``record.trace_id``; never drops a record."""
        if not getattr(record, "trace_id", ""):
            job_id = getattr(record, "job_id", None)
            found = self.telemetry.trace_id(job_id) if isinstance(job_id, str) else None
            record.trace_id = found or ""
        return True


class _TraceSuffix(logging.Filter):
    """Appends `` trace_id=<hex>`` to records about a traced job (those with a ``job_id``)."""

    def __init__(self, telemetry: Telemetry) -> None:
        super().__init__()
        self.telemetry = telemetry

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "job_id", None)
        if isinstance(job_id, str) and not getattr(record, "_hypha_traced", False):
            found = self.telemetry.trace_id(job_id)
            if found:
                record.msg = f"{record.getMessage()} trace_id={found}"
                record.args = ()
                record._hypha_traced = True
        return True


def install_trace_ids(telemetry: Telemetry, logger: logging.Logger | None = None) -> None:
    """Make the handlers of ``logger`` (default: root) show each traced job's trace id."""
    if not telemetry.enabled:
        return
    suffix = _TraceSuffix(telemetry)
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(suffix)
