"""Telemetry from real workers: two nodes run a job and export to a loopback OTLP receiver."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.test_scheduler_role import exchange, job, run_job
from tests.test_telemetry import Received, http_receiver, no_proxy

pytestmark = pytest.mark.net

__all__ = ["http_receiver", "no_proxy"]  # fixtures used by name


def _points(received: Received, name: str) -> dict[tuple[tuple[str, Any], ...], float]:
    """The last value of each data point of a sum metric, keyed by its attributes."""
    points: dict[tuple[tuple[str, Any], ...], float] = {}
    for request in received.metrics:
        for rm in request.resource_metrics:
            service = next(
                a.value.string_value for a in rm.resource.attributes if a.key == "hypha.peer_id"
            )
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.sum.data_points:
                        attrs = tuple(
                            sorted(
                                (a.key, a.value.string_value or a.value.int_value)
                                for a in point.attributes
                            )
                        )
                        points[(("peer", service), *attrs)] = point.as_int or point.as_double
    return points


async def test_workers_export_job_spans_bridge_requests_and_bandwidth_by_protocol(
    tmp_path: Path,
    http_receiver: tuple[str, Received],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two workers exchange files in a job: each exports a finished job span, its bridge
    requests, bytes in and out per protocol (request/response, pub/sub, bulk), and its log
    lines about the job carry the job's trace id."""
    endpoint, received = http_receiver
    workers, artifact = exchange(tmp_path, "abc" * 1000)
    for w in workers:
        w.telemetry_endpoint = endpoint
        w.telemetry_protocol = "http/protobuf"
    caplog.set_level(logging.INFO)
    outcome, _ = await run_job(tmp_path, workers, job(2, rounds=1, artifact=artifact))
    assert outcome.ok, outcome

    jobs = [s for _, s in received.spans() if s.name == "hypha.job"]
    assert len(jobs) == 2
    for span in jobs:
        attributes = {a.key: a.value for a in span.attributes}
        assert attributes["hypha.job.status"].string_value == "finished"
    finished = _points(received, "hypha.jobs")
    assert sum(v for k, v in finished.items() if ("status", "finished") in k) == 2
    bridge = _points(received, "hypha.bridge.requests")
    for route in ("fetch", "send", "receive", "status"):
        assert sum(v for k, v in bridge.items() if ("route", route) in k) >= 2, route
    inbound = _points(received, "hypha.bandwidth.inbound.bytes")
    outbound = _points(received, "hypha.bandwidth.outbound.bytes")
    for protocol in ("hypha/request", "hypha/bulk"):
        assert sum(v for k, v in inbound.items() if ("protocols", protocol) in k) > 0, protocol
        assert sum(v for k, v in outbound.items() if ("protocols", protocol) in k) > 0, protocol
    assert sum(v for k, v in inbound.items() if ("protocols", "hypha/pubsub") in k) > 0

    trace_ids = {span.trace_id.hex() for span in jobs}
    traced = [r.getMessage() for r in caplog.records if "trace_id=" in r.getMessage()]
    assert any(t in line for line in traced for t in trace_ids), traced[:5]
