"""OpenTelemetry: metrics and spans read off real core steps, the settings, and real OTLP export.

The core is driven through whole lease and job lives (``tests.helpers.Worker``) and every step
is handed to ``on_step``, as the node loop does. Metrics are read back through the SDK's
in-memory reader and spans through its in-memory exporter; the last tests export over OTLP
(HTTP and gRPC) to receivers on loopback and decode what arrived.
"""

from __future__ import annotations

import gzip
import logging
import random
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from hypha_sm.config.worker import load_worker_settings
from hypha_sm.init import write_example
from hypha_sm.net.transport import NetStats
from hypha_sm.roles.worker import otel
from hypha_sm.roles.worker import telemetry as tm
from hypha_sm.roles.worker.core.events import (
    Event,
    JobExited,
    JobStarted,
    JobStartFailed,
    ShutdownRequested,
    StatusDelivered,
    StatusFailed,
)
from hypha_sm.roles.worker.core.policy import ExecutorRef, Policy
from hypha_sm.roles.worker.core.reducer import Step
from hypha_sm.roles.worker.otel import OtelTelemetry, telemetry_from_settings
from hypha_sm.roles.worker.telemetry import Telemetry
from hypha_sm.runtime import telemetry as rt
from hypha_sm.runtime.telemetry import TelemetryConfig
from tests.helpers import OTHER, SCHED, Worker, ad, at, dispatch, policy, renew

PEER = "12D3KooWTelemetryTestPeer"


# -- driving a core and reading the SDK back -----------------------------------------------------


class Life:
    """A worker core whose every step is observed by ``telemetry``, as the node loop does."""

    def __init__(self, telemetry: Telemetry, pol: Policy | None = None) -> None:
        self.worker = Worker(pol)
        self.telemetry = telemetry

    def feed(self, event: Event, t: float | None = None) -> Step:
        out = self.worker.feed(event, t)
        self.telemetry.on_step(event, out, at(self.worker.t))
        return out

    def tick(self, t: float) -> Step:
        from hypha_sm.roles.worker.core.events import Tick

        return self.feed(Tick(), t)

    def lease(self, request_id: str, t: float) -> str:
        """Advertise, let the window close, and return the offered lease id."""
        self.feed(ad(request_id, t=t), t)
        out = self.tick(t + self.worker.timings.window_wait)
        (offer,) = out.effects
        return offer.lease_id  # type: ignore[union-attr]


def in_memory() -> tuple[OtelTelemetry, InMemoryMetricReader, InMemorySpanExporter]:
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    telemetry = OtelTelemetry(
        resource={"service.name": "test-worker", rt.PEER_ID_ATTRIBUTE: PEER},
        metric_readers=[reader],
        span_exporters=[spans],
    )
    return telemetry, reader, spans


Key = tuple[tuple[str, Any], ...]


def metrics(reader: InMemoryMetricReader) -> dict[str, dict[Key, Any]]:
    """Every metric's points: name -> {sorted attributes: value, or (count, sum) for histograms}."""
    data = reader.get_metrics_data()
    out: dict[str, dict[Key, Any]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points = out.setdefault(metric.name, {})
                for p in metric.data.data_points:
                    key = tuple(sorted((p.attributes or {}).items()))
                    value = (p.count, p.sum) if hasattr(p, "count") else p.value  # type: ignore[union-attr]
                    points[key] = value
    return out


def by(name: str, **attributes: Any) -> Key:
    del name
    return tuple(sorted(attributes.items()))


def span_named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def run_two_leases_and_jobs(life: Life) -> dict[str, Any]:
    """A known life: declines of three kinds, two leases with jobs (exit 0, exit 3), one
    offer left to expire, renewals refused twice. Returns the lease ids and a trace id."""
    w = life.worker
    seen: dict[str, Any] = {}
    life.feed(ad("a"), 0.0)
    life.feed(ad("cheap", bid=50.0), 0.0)  # below the floor of 100
    life.feed(ad("odd", executors=(ExecutorRef(cls="train", name="nope"),)), 0.0)
    life.feed(ad("a"), 0.05)  # the same advertisement again
    (offer,) = life.tick(0.2).effects
    lease1 = offer.lease_id  # type: ignore[union-attr]
    life.feed(renew(lease1), 0.3)  # accepted
    life.feed(renew(lease1, peer=OTHER), 0.31)  # refused: not_owner
    life.feed(renew("ghost"), 0.32)  # refused: unknown_lease
    life.feed(dispatch(lease1, "job-1"), 0.4)
    seen["trace_while_starting"] = life.telemetry.trace_id("job-1")
    life.feed(JobStarted("job-1"), 0.5)
    life.feed(StatusDelivered("job-1", "running"), 0.6)
    life.feed(renew(lease1), 1.0)
    life.feed(JobExited("job-1", 0), 2.5)
    life.feed(StatusDelivered("job-1", "finished"), 2.6)

    lease2 = life.lease("b", 3.0)
    life.feed(renew(lease2), 3.3)
    life.feed(dispatch(lease2, "job-2"), 3.4)
    life.feed(JobStarted("job-2"), 3.5)
    life.feed(JobExited("job-2", 3), 4.0)
    life.feed(StatusFailed("job-2", "failed", "timeout"), 4.1)

    lease3 = life.lease("c", 5.0)  # offered, never renewed
    life.tick(5.2 + w.timings.offer_timeout)
    seen.update(lease1=lease1, lease2=lease2, lease3=lease3)
    return seen


# -- (1) a real core's life, read back through the SDK ------------------------------------------


def test_a_core_life_yields_exact_counters_reasons_gauge_spans_and_durations() -> None:
    """Counters, decline reasons, the lease gauge, job spans and durations match what happened."""
    telemetry, reader, spans = in_memory()
    life = Life(telemetry)
    seen = run_two_leases_and_jobs(life)
    m = metrics(reader)

    assert m["hypha.core.steps"] == {(): len(life.worker.inputs)}
    assert m["hypha.advertisements.received"] == {(): 6}
    assert m["hypha.advertisements.offered"] == {(): 3}
    assert m["hypha.advertisements.declined"] == {
        by("", reason="below_floor"): 1,
        by("", reason="unsupported_executor"): 1,
        by("", reason="duplicate"): 1,
    }
    assert m["hypha.lease.renewals"] == {
        by("", outcome="renewed"): 3,
        by("", outcome="refused", reason="not_owner"): 1,
        by("", outcome="refused", reason="unknown_lease"): 1,
    }
    assert m["hypha.job.dispatches"] == {by("", outcome="dispatched"): 2}
    assert m["hypha.lease.releases"] == {
        by("", reason="job_ended"): 2,
        by("", reason="not_accepted"): 1,
    }
    # Every lease ended: the gauge is back to zero in each state it passed through.
    assert m["hypha.leases"] == {by("", state="offered"): 0, by("", state="active"): 0}
    assert m["hypha.jobs"] == {
        by("", status="finished", exit_code=0): 1,
        by("", status="failed", exit_code=3): 1,
    }
    count, total = m["hypha.job.duration"][by("", status="finished")]
    assert count == 1
    assert total == pytest.approx(2.5 - 0.4)
    assert m["hypha.job.duration"][by("", status="failed")] == (1, pytest.approx(4.0 - 3.4))
    assert telemetry.errors == 0

    # Spans: one per lease, one per job, each job a child of its lease (same trace).
    leases = {s.attributes["hypha.lease.id"]: s for s in span_named(spans, "hypha.lease")}  # type: ignore[index]
    jobs = {s.attributes["hypha.job.id"]: s for s in span_named(spans, "hypha.job")}  # type: ignore[index]
    assert set(leases) == {seen["lease1"], seen["lease2"], seen["lease3"]}
    assert set(jobs) == {"job-1", "job-2"}
    job1, lease1 = jobs["job-1"], leases[seen["lease1"]]
    assert job1.attributes is not None
    assert dict(job1.attributes) == {
        "hypha.job.id": "job-1",
        "hypha.lease.id": seen["lease1"],
        "hypha.request.id": "a",
        "hypha.scheduler": SCHED,
        "hypha.executor.class": "train",
        "hypha.executor.name": "diloco-transformer",
        "hypha.job.status": "finished",
        "hypha.job.exit_code": 0,
    }
    assert job1.parent is not None
    assert lease1.context is not None
    assert job1.context is not None
    assert job1.parent.span_id == lease1.context.span_id
    assert job1.context.trace_id == lease1.context.trace_id
    assert [e.name for e in job1.events] == ["started", "exited"]
    assert job1.start_time == int(at(0.4).wall * 1e9)
    assert job1.end_time == int(at(2.6).wall * 1e9)
    assert job1.status.status_code == StatusCode.UNSET
    job2 = jobs["job-2"]
    assert job2.attributes is not None
    assert job2.attributes["hypha.job.exit_code"] == 3
    assert job2.status.status_code == StatusCode.ERROR
    assert lease1.attributes is not None
    assert lease1.attributes["hypha.lease.end_reason"] == "job_ended"
    assert lease1.attributes["hypha.lease.renewals"] == 2
    assert lease1.attributes["hypha.job.id"] == "job-1"
    assert [e.name for e in lease1.events] == ["active"]
    lease3 = leases[seen["lease3"]]
    assert lease3.attributes is not None
    assert lease3.attributes["hypha.lease.end_reason"] == "not_accepted"
    assert job1.resource.attributes[rt.PEER_ID_ATTRIBUTE] == PEER

    # The trace id for logs: known from dispatch on, and still after the job ended.
    trace_hex = format(job1.context.trace_id, "032x")
    assert seen["trace_while_starting"] == trace_hex
    assert telemetry.trace_id("job-1") == trace_hex
    assert telemetry.job_log_extra("job-1") == {"job_id": "job-1", "trace_id": trace_hex}
    telemetry.shutdown()


def test_the_lease_gauge_counts_live_leases_by_state_mid_life() -> None:
    """While a lease is accepted and another only offered, the gauge says so."""
    telemetry, reader, _ = in_memory()
    life = Life(telemetry)
    first = life.lease("a", 0.0)
    life.feed(renew(first), 0.3)
    life.lease("b", 0.4)
    assert metrics(reader)["hypha.leases"] == {
        by("", state="offered"): 1,
        by("", state="active"): 1,
    }
    life.feed(dispatch(first, "job-1"), 0.7)
    life.feed(ShutdownRequested(), 0.8)  # the job is stopped; its lease drains
    assert metrics(reader)["hypha.leases"] == {
        by("", state="offered"): 0,
        by("", state="active"): 0,
        by("", state="draining"): 1,
    }
    life.feed(JobStartFailed("job-1", "stopped"), 0.9)
    life.feed(StatusDelivered("job-1", "cancelled"), 1.0)
    m = metrics(reader)
    assert m["hypha.leases"][by("", state="draining")] == 0
    assert m["hypha.lease.releases"] == {by("", reason="shutdown"): 2}
    assert m["hypha.jobs"] == {by("", status="cancelled"): 1}
    assert m["hypha.job.dispatches"] == {by("", outcome="refused", reason="shutting_down"): 1}
    telemetry.shutdown()


def test_a_lease_offered_and_released_in_one_step_still_gets_its_span_and_reason() -> None:
    """Shutdown arriving after the window's deadline: the flush offers, the shutdown releases."""
    telemetry, reader, spans = in_memory()
    life = Life(telemetry)
    life.feed(ad("a"), 0.0)
    out = life.feed(ShutdownRequested(), 0.3)  # the window closes (0.2) first, in this step
    (offer,) = [e for e in out.effects if type(e).__name__ == "SendOffer"]
    m = metrics(reader)
    assert m["hypha.lease.releases"] == {by("", reason="shutdown"): 1}
    assert m["hypha.leases"] == {by("", state="offered"): 0}
    (span,) = span_named(spans, "hypha.lease")
    assert span.attributes is not None
    assert span.attributes["hypha.lease.id"] == offer.lease_id  # type: ignore[attr-defined]
    assert span.attributes["hypha.request.id"] == "a"
    assert span.attributes["hypha.lease.end_reason"] == "shutdown"
    assert telemetry.errors == 0
    telemetry.shutdown()


@pytest.mark.parametrize("seed", range(5))
def test_decline_and_release_reasons_agree_with_the_cores_own_counters(seed: int) -> None:
    """Over a random workload, the exported reasons equal the core's counters, and every
    received advertisement is offered, declined, or still in the window."""
    rng = random.Random(seed)
    telemetry, reader, _ = in_memory()
    pol = policy(
        strategy=rng.choice(["flexible", "whole"]), price=120.0, floor=100.0, max_leases=3
    )
    life = Life(telemetry, pol)
    t = 0.0
    names = [f"r{i}" for i in range(40)]
    for _ in range(150):
        t += rng.choice([0.0, 0.05, 0.3, 0.7])
        roll = rng.random()
        if roll < 0.6:
            life.feed(
                ad(
                    rng.choice(names),
                    bid=rng.choice([50.0, 110.0, 150.0, float("nan"), -1.0]),
                    cpu=rng.choice([1.0, 8.0, 100.0, -2.0]),
                    executors=rng.choice([(ExecutorRef(cls="train", name="nope"),), ()]),
                    expires_in=rng.choice([5.0, 0.1, -1.0]),
                    t=t,
                ),
                t,
            )
        elif roll < 0.8 and life.worker.state.records["lease"]:
            lease_id = rng.choice(sorted(life.worker.state.records["lease"]))
            life.feed(renew(lease_id, peer=rng.choice([SCHED, OTHER])), t)
        else:
            life.tick(t)
    life.feed(ShutdownRequested(), t + 1)
    life.tick(t + 100)
    counters = life.worker.state.counters
    m = metrics(reader)
    declined = {
        dict(k)["reason"]: v for k, v in m.get("hypha.advertisements.declined", {}).items()
    }
    expected = {k.split(".", 1)[1]: v for k, v in counters.items() if k.startswith("declined.")}
    if counters["rejected.request.duplicate"]:
        expected["duplicate"] = counters["rejected.request.duplicate"]
    assert declined == expected
    releases = {dict(k)["reason"]: v for k, v in m.get("hypha.lease.releases", {}).items()}
    assert releases == {
        k.rsplit(".", 1)[1]: v for k, v in counters.items() if k.startswith("lease.released.")
    }
    received = m["hypha.advertisements.received"][()]
    offered = m.get("hypha.advertisements.offered", {}).get((), 0)
    assert received == offered + sum(declined.values())  # the window was flushed by shutdown
    assert offered == counters["offers"]
    assert all(v == 0 for v in m.get("hypha.leases", {}).values())
    assert telemetry.errors == 0
    telemetry.shutdown()


def test_shell_hooks_count_bridge_requests_bytes_and_rejections() -> None:
    """on_bridge_request, on_bytes, on_rejected and a watched transport's NetStats are exported."""
    telemetry, reader, _ = in_memory()

    @dataclass
    class FakeTransport:
        rejected: dict[str, int] = field(default_factory=dict)

        def stats(self) -> NetStats:
            return NetStats(
                accepted=7,
                rejected=types.MappingProxyType(dict(self.rejected)),
                duplicates=2,
                dropped=1,
                handler_errors=0,
                failed_requests=types.MappingProxyType({"timeout": 4}),
                connection_errors=0,
            )

    transport = FakeTransport({"bad_signature": 3})
    telemetry.watch_transport(transport)
    telemetry.on_bridge_request("status", 200)
    telemetry.on_bridge_request("status", 200)
    telemetry.on_bridge_request("fetch", 404)
    telemetry.on_bytes("hypha/bulk", "inbound", 1000)
    telemetry.on_bytes("hypha/bulk", "inbound", 24)
    telemetry.on_bytes("hypha/request", "outbound", 300)
    telemetry.on_rejected("stale")
    with pytest.raises(ValueError, match="direction"):
        telemetry.on_bytes("hypha/bulk", "sideways", 1)  # type: ignore[arg-type]
    transport.rejected = {"bad_signature": 5, "stale": 1}  # read again at the next sample
    telemetry.sample()
    m = metrics(reader)
    assert m["hypha.bridge.requests"] == {
        by("", route="status", status_code=200): 2,
        by("", route="fetch", status_code=404): 1,
    }
    assert m["hypha.bandwidth.inbound.bytes"] == {by("", protocols="hypha/bulk"): 1024}
    assert m["hypha.bandwidth.outbound.bytes"] == {by("", protocols="hypha/request"): 300}
    assert m["hypha.messages.rejected"] == {
        by("", reason="bad_signature"): 5,
        by("", reason="stale"): 2,
    }
    assert m["hypha.messages.accepted"] == {(): 7}
    assert m["hypha.messages.duplicates"] == {(): 2}
    assert m["hypha.messages.dropped"] == {(): 1}
    assert m["hypha.requests.failed"] == {by("", reason="timeout"): 4}
    telemetry.shutdown()


def test_a_failing_hook_is_logged_and_never_reaches_the_node_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transport whose stats() raises costs a log line, not the node."""
    telemetry, _, _ = in_memory()

    class Broken:
        def stats(self) -> NetStats:
            raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="hypha_sm.roles.worker.telemetry"):
        telemetry.watch_transport(Broken())
        Life(telemetry).lease("a", 0.0)
    assert telemetry.errors >= 1
    assert "telemetry: sample failed" in caplog.text
    telemetry.shutdown()


def test_log_lines_about_a_job_carry_its_trace_id(caplog: pytest.LogCaptureFixture) -> None:
    """job_logger appends trace_id=<hex>; TraceIdFilter fills %(trace_id)s from a job_id extra."""
    telemetry, _, _ = in_memory()
    life = Life(telemetry)
    lease = life.lease("a", 0.0)
    life.feed(renew(lease), 0.3)
    life.feed(dispatch(lease, "job-1"), 0.4)
    trace_hex = telemetry.trace_id("job-1")
    assert trace_hex is not None
    assert len(trace_hex) == 32
    logger = logging.getLogger("tests.telemetry.job")
    with caplog.at_level(logging.INFO, logger="tests.telemetry.job"):
        telemetry.job_logger(logger, "job-1").info("started %s", "ok")
        logger.info("plain", extra=telemetry.job_log_extra("job-1"))
    first, second = caplog.records
    assert first.getMessage() == f"started ok trace_id={trace_hex}"
    assert first.trace_id == trace_hex  # type: ignore[attr-defined]
    assert second.trace_id == trace_hex  # type: ignore[attr-defined]

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.job_id = "job-1"
    assert tm.TraceIdFilter(telemetry).filter(record)
    assert record.trace_id == trace_hex  # type: ignore[attr-defined]
    other = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    tm.TraceIdFilter(telemetry).filter(other)
    assert other.trace_id == ""  # type: ignore[attr-defined]
    assert telemetry.job_log_extra("never-ran") == {"job_id": "never-ran", "trace_id": ""}
    telemetry.shutdown()


def test_shutdown_ends_open_spans_marked_unfinished_and_is_idempotent() -> None:
    """A node that exits with a job still running still exports its lease and job spans."""
    telemetry, _, spans = in_memory()
    life = Life(telemetry)
    lease = life.lease("a", 0.0)
    life.feed(renew(lease), 0.3)
    life.feed(dispatch(lease, "job-1"), 0.4)
    assert spans.get_finished_spans() == ()
    telemetry.shutdown()
    telemetry.shutdown()
    ended = {s.name: s for s in spans.get_finished_spans()}
    assert set(ended) == {"hypha.lease", "hypha.job"}
    assert all(s.attributes and s.attributes["hypha.unfinished"] for s in ended.values())


def test_sampled_out_jobs_export_no_spans_but_keep_a_trace_id_for_logs() -> None:
    """With always_off, nothing is exported, yet log lines can still be correlated."""
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    telemetry = OtelTelemetry(
        metric_readers=[reader],
        span_exporters=[spans],
        sampler=rt.build_sampler("always_off", None),
    )
    life = Life(telemetry)
    lease = life.lease("a", 0.0)
    life.feed(renew(lease), 0.3)
    life.feed(dispatch(lease, "job-1"), 0.4)
    life.feed(JobStarted("job-1"), 0.5)
    life.feed(JobExited("job-1", 0), 1.0)
    life.feed(StatusDelivered("job-1", "finished"), 1.1)
    assert spans.get_finished_spans() == ()
    assert telemetry.trace_id("job-1") not in (None, "0" * 32)
    assert metrics(reader)["hypha.jobs"] == {by("", status="finished", exit_code=0): 1}
    telemetry.shutdown()


# -- (2) off unless configured --------------------------------------------------------------------


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_SERVICE_NAME",
        "OTEL_METRIC_EXPORT_INTERVAL",
    ):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "worker.toml"
    write_example(path, work_dir=tmp_path / "work")
    return path


def test_without_an_endpoint_telemetry_is_a_no_op_that_builds_no_exporter(
    example: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No endpoint: the plain Telemetry, every hook does nothing, no exporter is made."""

    def no_exporters(config: TelemetryConfig) -> Any:
        raise AssertionError("an exporter was built with telemetry off")

    monkeypatch.setattr(otel, "build_exporters", no_exporters)
    settings = load_worker_settings(example, {})
    telemetry = telemetry_from_settings(settings, PEER)
    assert type(telemetry) is Telemetry
    assert not telemetry.enabled
    life = Life(telemetry)
    lease = life.lease("a", 0.0)
    life.feed(renew(lease), 0.3)
    life.feed(dispatch(lease, "job-1"), 0.4)
    telemetry.on_bridge_request("status", 200)
    telemetry.on_bytes("hypha/bulk", "inbound", 10)
    telemetry.on_rejected("stale")
    telemetry.watch_transport(types.SimpleNamespace(stats=lambda: 1 / 0))  # never read
    assert telemetry.trace_id("job-1") is None
    assert telemetry.job_log_extra("job-1") == {"job_id": "job-1", "trace_id": ""}
    assert telemetry.force_flush()
    telemetry.shutdown()


def test_a_disabled_node_never_imports_the_opentelemetry_sdk() -> None:
    """Telemetry off costs no SDK import (checked in a fresh interpreter)."""
    code = (
        "import sys, types\n"
        "from hypha_sm.roles.worker.otel import telemetry_from_settings\n"
        "s = types.SimpleNamespace(telemetry_endpoint=None, telemetry_headers=None,"
        " telemetry_attributes=None, telemetry_protocol=None, telemetry_sampler=None,"
        " telemetry_sample_ratio=None)\n"
        "t = telemetry_from_settings(s, 'peer')\n"
        "assert not t.enabled\n"
        "bad = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- (3) settings and the environment -------------------------------------------------------------


def _enable(example: Path, extra: str = "") -> None:
    text = example.read_text().replace(
        '# telemetry_endpoint = "https://otlp.example/otlp"',
        'telemetry_endpoint = "http://127.0.0.1:4318/"\n' + extra,
    )
    example.write_text(text)


def test_otel_service_name_wins_and_the_peer_id_is_in_the_resource(
    example: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_SERVICE_NAME > service.name in the attributes > hypha-worker; the peer id is added."""
    _enable(example)
    settings = load_worker_settings(example, {})
    config = TelemetryConfig.from_settings(settings, PEER)
    assert config is not None
    assert config.resource == {
        "service.name": "hypha-worker",
        "service.instance.id": PEER,
        rt.PEER_ID_ATTRIBUTE: PEER,
    }
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,region=eu%2Dwest")
    settings = load_worker_settings(example, {})
    config = TelemetryConfig.from_settings(settings, PEER)
    assert config is not None
    assert config.resource["service.name"] == "from-attrs"
    assert config.resource["region"] == "eu-west"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "worker-07")
    config = TelemetryConfig.from_settings(settings, PEER)
    assert config is not None
    assert config.resource["service.name"] == "worker-07"
    telemetry = OtelTelemetry(resource=config.resource)
    assert telemetry.resource.attributes["service.name"] == "worker-07"
    assert telemetry.resource.attributes[rt.PEER_ID_ATTRIBUTE] == PEER
    telemetry.shutdown()


def test_headers_and_resource_attributes_are_parsed_and_bad_ones_refused() -> None:
    """k=v,k2=v2 with trimming, skipped empties and percent-decoding; no '=' is an error."""
    assert rt.parse_pairs(" a = 1 ,, Authorization=Basic%20abc=,x=", "h") == {
        "a": "1",
        "Authorization": "Basic abc=",
        "x": "",
    }
    assert rt.parse_pairs(None, "h") == {}
    with pytest.raises(rt.TelemetryConfigError, match=r"telemetry_headers: 'oops' is not"):
        rt.parse_pairs("a=1,oops", "telemetry_headers")
    with pytest.raises(rt.TelemetryConfigError, match="is not key=value"):
        rt.parse_pairs("=v", "telemetry_attributes")


def test_settings_from_the_file_and_otel_variables_reach_the_config(
    example: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers, protocol, sampler and export interval travel from the settings to the config."""
    _enable(example, 'telemetry_headers = "x-key=file"\ntelemetry_protocol = "grpc"\n')
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-key=env,x-team=ml")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "1500")
    config = TelemetryConfig.from_settings(load_worker_settings(example, {}), PEER)
    assert config is not None
    assert config.protocol == "grpc"
    assert config.headers == {"x-key": "env", "x-team": "ml"}
    assert (config.sampler, config.sample_ratio) == ("traceidratio", 0.25)
    assert config.export_interval == 1.5
    assert config.export_timeout == rt.DEFAULT_EXPORT_TIMEOUT
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # then the exporters read it
    config = TelemetryConfig.from_settings(load_worker_settings(example, {}), PEER)
    assert config is not None
    assert config.export_timeout is None
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "soon")
    with pytest.raises(rt.TelemetryConfigError, match="OTEL_METRIC_EXPORT_INTERVAL"):
        TelemetryConfig.from_settings(load_worker_settings(example, {}), PEER)


def test_the_protocol_selects_the_http_or_grpc_exporters() -> None:
    """http/protobuf posts to <endpoint>/v1/{metrics,traces}; grpc uses the gRPC exporters."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter as GrpcMetrics,
    )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcSpans,
    )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetrics,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpans,
    )

    def config(protocol: str) -> TelemetryConfig:
        return TelemetryConfig(
            endpoint="http://127.0.0.1:9/",
            protocol=protocol,  # type: ignore[arg-type]
            headers={"X-Key": "v"},
            resource={},
        )

    metrics_exporter, spans_exporter = rt.build_exporters(config("http/protobuf"))
    assert type(metrics_exporter) is HttpMetrics
    assert type(spans_exporter) is HttpSpans
    assert metrics_exporter._endpoint == "http://127.0.0.1:9/v1/metrics"
    assert spans_exporter._endpoint == "http://127.0.0.1:9/v1/traces"
    metrics_exporter.shutdown()
    spans_exporter.shutdown()  # type: ignore[no-untyped-call]

    metrics_exporter, spans_exporter = rt.build_exporters(config("grpc"))
    assert type(metrics_exporter) is GrpcMetrics
    assert type(spans_exporter) is GrpcSpans
    metrics_exporter.shutdown()
    spans_exporter.shutdown()


def test_samplers_follow_the_otel_names_and_defaults() -> None:
    """always_on/off, (parent-based) ratio; a bare ratio means parent-based; ratio is clamped."""
    from opentelemetry.sdk.trace import sampling

    assert rt.build_sampler(None, None) is sampling.ALWAYS_ON
    assert rt.build_sampler("always_off", None) is sampling.ALWAYS_OFF
    ratio = rt.build_sampler("traceidratio", 1.5)
    assert isinstance(ratio, sampling.TraceIdRatioBased)
    assert ratio.rate == 1.0
    assert isinstance(rt.build_sampler(None, 0.1), sampling.ParentBased)
    assert isinstance(rt.build_sampler("parentbased_traceidratio", None), sampling.ParentBased)
    with pytest.raises(rt.TelemetryConfigError, match="telemetry_sampler"):
        rt.build_sampler("sometimes", None)


# -- (4) real OTLP export to loopback receivers ---------------------------------------------------


@dataclass
class Received:
    """What a receiver got: decoded requests and the headers they came with."""

    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def metric_names(self) -> set[str]:
        return {
            m.name
            for req in self.metrics
            for rm in req.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        }

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        out: list[tuple[dict[str, Any], Any]] = []
        for req in self.traces:
            for rs in req.resource_spans:
                resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                out.extend((resource, s) for ss in rs.scope_spans for s in ss.spans)
        return out


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_COMPRESSION"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def http_receiver(no_proxy: None) -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            received.headers.append({k.lower(): v for k, v in self.headers.items()})
            if self.path == "/v1/metrics":
                request: Any = metrics_service_pb2.ExportMetricsServiceRequest()
                reply: Any = metrics_service_pb2.ExportMetricsServiceResponse()
                request.ParseFromString(body)
                received.metrics.append(request)
            elif self.path == "/v1/traces":
                request = trace_service_pb2.ExportTraceServiceRequest()
                reply = trace_service_pb2.ExportTraceServiceResponse()
                request.ParseFromString(body)
                received.traces.append(request)
            else:
                self.send_error(404)
                return
            data = reply.SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def grpc_receiver(no_proxy: None) -> Iterator[tuple[str, Received]]:
    import grpc  # type: ignore[import-untyped]

    received = Received()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.metrics.append(request)
            received.headers.append(dict(context.invocation_metadata()))
            return metrics_service_pb2.ExportMetricsServiceResponse()

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.traces.append(request)
            received.headers.append(dict(context.invocation_metadata()))
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)  # type: ignore[no-untyped-call]
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(grace=None).wait(10)


def _export_a_life(endpoint: str, protocol: str) -> OtelTelemetry:
    settings = types.SimpleNamespace(
        telemetry_endpoint=endpoint,
        telemetry_headers="X-Hypha-Token=secret%20value",
        telemetry_attributes="deployment.environment=test",
        telemetry_protocol=protocol,
        telemetry_sampler=None,
        telemetry_sample_ratio=None,
    )
    telemetry = telemetry_from_settings(settings, PEER, environ={"OTEL_SERVICE_NAME": "w-1"})
    assert isinstance(telemetry, OtelTelemetry)
    life = Life(telemetry)
    run_two_leases_and_jobs(life)
    telemetry.on_bytes("hypha/bulk", "outbound", 4096)
    assert telemetry.force_flush(timeout_millis=20_000)
    return telemetry


def _check_arrival(received: Received) -> None:
    names = received.metric_names()
    assert {
        "hypha.advertisements.received",
        "hypha.advertisements.offered",
        "hypha.advertisements.declined",
        "hypha.leases",
        "hypha.lease.renewals",
        "hypha.jobs",
        "hypha.job.duration",
        "hypha.bandwidth.outbound.bytes",
    } <= names
    jobs = [(resource, s) for resource, s in received.spans() if s.name == "hypha.job"]
    assert len(jobs) == 2
    resource, job = next(
        (r, s)
        for r, s in jobs
        if any(a.key == "hypha.job.id" and a.value.string_value == "job-1" for a in s.attributes)
    )
    attributes = {a.key: a.value for a in job.attributes}
    assert attributes["hypha.job.status"].string_value == "finished"
    assert attributes["hypha.job.exit_code"].int_value == 0
    assert len(job.trace_id) == 16
    assert resource["service.name"] == "w-1"
    assert resource[rt.PEER_ID_ATTRIBUTE] == PEER
    assert resource["deployment.environment"] == "test"
    assert any(h.get("x-hypha-token") == "secret value" for h in received.headers)


def test_metrics_and_job_spans_arrive_at_an_otlp_http_receiver(
    http_receiver: tuple[str, Received],
) -> None:
    """http/protobuf: POST /v1/metrics and /v1/traces decode to our metrics and job spans."""
    endpoint, received = http_receiver
    telemetry = _export_a_life(endpoint, "http/protobuf")
    _check_arrival(received)
    telemetry.shutdown()


def test_metrics_and_job_spans_arrive_at_an_otlp_grpc_receiver(
    grpc_receiver: tuple[str, Received],
) -> None:
    """grpc: the same signals arrive at a gRPC collector on loopback, headers as metadata."""
    endpoint, received = grpc_receiver
    telemetry = _export_a_life(endpoint, "grpc")
    _check_arrival(received)
    telemetry.shutdown()


async def test_aflush_exports_from_a_worker_thread_while_trio_runs(
    http_receiver: tuple[str, Received],
) -> None:
    """The async flush used by the node delivers the same signals (that it does not block the
    loop is test_a_slow_export_never_blocks_the_trio_loop)."""
    endpoint, received = http_receiver
    settings = types.SimpleNamespace(
        telemetry_endpoint=endpoint,
        telemetry_headers=None,
        telemetry_attributes=None,
        telemetry_protocol="http/protobuf",
        telemetry_sampler=None,
        telemetry_sample_ratio=None,
    )
    telemetry = telemetry_from_settings(settings, PEER, environ={})
    run_two_leases_and_jobs(Life(telemetry))
    assert await telemetry.aflush()
    assert "hypha.jobs" in received.metric_names()
    assert [s.name for _, s in received.spans()].count("hypha.job") == 2
    await telemetry.aclose()
    await telemetry.aclose()  # idempotent


def _silent_collector_settings(monkeypatch: pytest.MonkeyPatch, timeout: float) -> Any:
    """Telemetry settings for a collector that accepts connections and never answers."""
    import socket

    silent = socket.socket()  # accepts connections (the backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", str(timeout))
    settings = types.SimpleNamespace(
        telemetry_endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}",
        telemetry_headers=None,
        telemetry_attributes=None,
        telemetry_protocol="http/protobuf",
        telemetry_sampler=None,
        telemetry_sample_ratio=None,
    )
    settings.socket = silent
    return settings


@pytest.mark.parametrize("call", ["aflush", "aclose"])
async def test_a_slow_export_never_blocks_the_trio_loop(
    no_proxy: None, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """The export to a collector that never answers runs in a worker thread: while it waits,
    every other trio task gets to run (the flush or close is then still pending), and it can
    be cancelled."""
    import trio
    import trio.testing

    settings = _silent_collector_settings(monkeypatch, timeout=2.0)
    telemetry = telemetry_from_settings(settings, PEER)
    run_two_leases_and_jobs(Life(telemetry))
    done = trio.Event()

    async def export() -> None:
        await getattr(telemetry, call)()
        done.set()

    otel_log = logging.getLogger("opentelemetry")
    level = otel_log.level
    otel_log.setLevel(logging.CRITICAL)  # the exporter's retries would be logged as errors
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(export)
            # Every task is blocked: the export waits in its thread, and we are running.
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            pending = not done.is_set()
            nursery.cancel_scope.cancel()
    finally:
        settings.socket.close()
        # The cancelled export's threads would go on retrying (with random jitter) into later
        # tests; stop them (an abandoned aclose is already stopping them in its thread), each
        # wait bounded by the export timeout now that nothing listens.
        telemetry.shutdown()
        for thread in threading.enumerate():
            if thread.name.startswith(("Otel", "_shutdown_providers")):
                thread.join(timeout=60)
        otel_log.setLevel(level)
    assert pending, f"{call} finished before the loop ran again: it blocked trio"
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("Otel")]
    assert not leftover, f"exporter threads still running after shutdown: {leftover}"


def test_the_phases_telemetry_reads_are_declared_by_the_machines() -> None:
    """Spans mark entering declared phases; renaming one in machines/worker/ fails here, not
    silently in production."""
    from hypha_sm.machines_io import load_specs
    from hypha_sm.roles.worker.otel import JOB_PHASES_READ, REQUEST_PHASES_READ

    specs = load_specs(role="worker")
    for kind, names in (("job", JOB_PHASES_READ), ("request", REQUEST_PHASES_READ)):
        declared = {state.name for state in specs[kind].states}
        assert set(names) <= declared, (kind, set(names) - declared)
