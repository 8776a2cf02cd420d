"""A DiLoCo job's round metrics: files, a line per round, a loss curve, OpenTelemetry."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from hypha_sm.roles.scheduler.metrics import MetricsSink

ROUND = {
    "loss": 3.5,
    "eval_loss": 3.25,
    "samples": 128.0,
    "steps": 16.0,
    "step_ms": 75.0,
    "bytes_sent": 1000.0,
    "bytes_received": 1000.0,
}


def _points(reader: InMemoryMetricReader) -> dict[str, list[object]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[object]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = list(metric.data.data_points)
    return out


def test_round_metrics_go_to_jsonl_csv_the_console_and_opentelemetry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    sink = MetricsSink(tmp_path, workers=2, meter=meter)
    sink.record("w1", 1, ROUND)
    assert "round  1" not in capsys.readouterr().out  # the other worker has not reported yet
    sink.record("w2", 1, {**ROUND, "loss": 3.7})
    line = capsys.readouterr().out
    assert "round  1  train loss 3.6000  eval loss 3.2500  256 samples  75.0 ms/step" in line
    assert "0.00 MB exchanged" in line
    entries = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(e["worker"], e["round"]) for e in entries] == [("w1", 1), ("w2", 1)]
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(ROUND)
    assert {r["metric"] for r in rows} == set(ROUND)
    points = _points(reader)
    assert sorted(p.value for p in points["hypha.training.loss"]) == [3.5, 3.7]
    assert sum(p.value for p in points["hypha.training.samples"]) == 256
    directions = {p.attributes["direction"] for p in points["hypha.training.bytes"]}
    assert directions == {"inbound", "outbound"}
    png = sink.plot()
    assert png is not None
    assert png.read_bytes().startswith(b"\x89PNG")


def test_a_round_a_lost_worker_never_reported_is_still_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = MetricsSink(tmp_path, workers=3)
    for worker in ("a", "b", "c"):
        sink.record(worker, 1, ROUND)
    sink.record("a", 2, ROUND)
    sink.record("b", 2, ROUND)  # c was lost in round 2
    sink.record("a", 3, ROUND)
    sink.record("b", 3, ROUND)  # round 3 waits only for those that reported round 2
    out = capsys.readouterr().out
    assert "round  1" in out
    assert "round  3" in out
    assert "round  2" not in out
    sink.finish()
    assert "(2 workers reported)" in capsys.readouterr().out


def test_the_scheduler_sends_round_metrics_to_opentelemetry_when_an_endpoint_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``telemetry_endpoint`` (or OTEL_EXPORTER_OTLP_ENDPOINT) gives the sink a meter."""
    from hypha_sm.config.scheduler import SchedulerSettings
    from hypha_sm.roles.scheduler import scheduler
    from hypha_sm.roles.scheduler.scheduler import metrics_sink

    # Nothing listens at the endpoint: no export during the test, none at exit.
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")
    monkeypatch.setattr(scheduler.atexit, "register", lambda *a, **k: None)

    base = {
        "node_key": str(tmp_path / "key.pem"),
        "gateway_addresses": ["tcp://127.0.0.1:1"],
        "job": {
            "executor": {"class": "train", "name": "diloco-transformer"},
            "diloco": {"rounds": 1},
            "metrics_dir": str(tmp_path / "m"),
        },
    }
    quiet = metrics_sink(SchedulerSettings.model_validate(base), "peer")
    assert quiet is not None
    assert quiet._instruments is None
    loud = metrics_sink(
        SchedulerSettings.model_validate({**base, "telemetry_endpoint": "http://127.0.0.1:9"}),
        "peer",
    )
    assert loud is not None
    assert loud._instruments is not None
    loud.record("w", 1, ROUND)  # recorded; exported at the next interval or at exit


def test_on_a_terminal_the_rounds_are_a_live_table(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    sink = MetricsSink(tmp_path, workers=1, console=console)
    sink.record("w", 0, {"eval_loss": 5.5})
    sink.record("w", 1, ROUND)
    sink.finish()
    out = screen.getvalue()
    assert "DiLoCo rounds" in out
    assert "3.2500" in out
    assert "train loss" in out
