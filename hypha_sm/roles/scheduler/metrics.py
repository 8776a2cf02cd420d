"""A DiLoCo job's metrics as the scheduler hears them: files, a line per round, a loss curve.

Each worker's round metrics (loss, eval loss, samples, step time, bytes) are appended to
``metrics.jsonl`` and ``metrics.csv`` as they arrive; once every training worker reported a
round, one line sums it up on the console; at the end the loss curve is drawn to
``loss.png`` (matplotlib, if installed). Shell only: the core never sees metrics.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger("hypha_sm.roles.scheduler")

COLUMNS = ("time", "worker", "round", "metric", "value")


class _Instruments:
    """The round metrics as OpenTelemetry instruments (attribute ``hypha.worker``)."""

    def __init__(self, meter: Any) -> None:
        self.loss = meter.create_gauge(
            "hypha.training.loss", description="mean inner loss of a round"
        )
        self.eval_loss = meter.create_gauge(
            "hypha.training.eval_loss", description="held-out loss of the global weights"
        )
        self.round = meter.create_gauge("hypha.training.round", description="last round reported")
        self.samples = meter.create_counter("hypha.training.samples", unit="{sample}")
        self.bytes = meter.create_counter("hypha.training.bytes", unit="By")
        self.step = meter.create_histogram("hypha.training.step_duration", unit="ms")

    def record(self, worker: str, rnd: int, metrics: dict[str, float]) -> None:
        who = {"hypha.worker": worker}
        self.round.set(rnd, who)
        for name, gauge in (("loss", self.loss), ("eval_loss", self.eval_loss)):
            if math.isfinite(metrics.get(name, math.nan)):
                gauge.set(metrics[name], who)
        if "samples" in metrics:
            self.samples.add(metrics["samples"], who)
        for key, direction in (("bytes_sent", "outbound"), ("bytes_received", "inbound")):
            if key in metrics:
                self.bytes.add(metrics[key], {**who, "direction": direction})
        if "step_ms" in metrics:
            self.step.record(metrics["step_ms"], who)


class MetricsSink:
    """Where one job's metrics go."""

    def __init__(
        self, directory: Path, workers: int, meter: Any = None, console: Any = None
    ) -> None:
        self.directory = directory
        self.workers = workers
        self._console = console
        self._live: Any = None
        self._table: Any = None
        self._instruments = None if meter is None else _Instruments(meter)
        directory.mkdir(parents=True, exist_ok=True)
        self.jsonl = directory / "metrics.jsonl"
        self.csv = directory / "metrics.csv"
        self.png = directory / "loss.png"
        with self.csv.open("w", newline="") as f:
            csv.writer(f).writerow(COLUMNS)
        self.jsonl.write_text("")
        self.rounds: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)
        self.shown: set[int] = set()

    def record(self, worker: str, rnd: int, metrics: dict[str, float]) -> None:
        """One worker's metrics for a round."""
        now = time.time()
        with self.jsonl.open("a") as f:
            f.write(
                json.dumps({"time": now, "worker": worker, "round": rnd, "metrics": metrics})
                + "\n"
            )
        with self.csv.open("a", newline="") as f:
            writer = csv.writer(f)
            for name, value in sorted(metrics.items()):
                writer.writerow((f"{now:.3f}", worker, rnd, name, value))
        self.rounds[rnd].setdefault(worker, {}).update(metrics)
        if self._instruments is not None:
            self._instruments.record(worker, rnd, metrics)
        # Every worker that reported the round before (a worker lost on the way is not waited for).
        expected = len(self.rounds[rnd - 1]) if rnd - 1 in self.rounds else self.workers
        if len(self.rounds[rnd]) >= expected and rnd not in self.shown:
            self.shown.add(rnd)
            self._show(rnd)

    def _show(self, rnd: int, note: str = "") -> None:
        """A live table on a terminal (rich), else one line per round."""
        console = self._console
        if console is None or not console.is_terminal:
            print(self.summary(rnd) + note, flush=True)
            return
        from rich.live import Live
        from rich.table import Table

        if self._table is None:
            self._table = Table(title="DiLoCo rounds", title_justify="left")
            for column in ("round", "train loss", "eval loss", "samples", "ms/step", "MB"):
                self._table.add_column(column, justify="right")
            self._live = Live(self._table, console=console, auto_refresh=False)
            self._live.start()
        figures = self.figures(rnd)
        self._table.add_row(
            str(rnd),
            "" if rnd == 0 else f"{figures['loss']:.4f}",
            f"{figures['eval_loss']:.4f}",
            "" if rnd == 0 else f"{figures['samples']:.0f}",
            "" if rnd == 0 else f"{figures['step_ms']:.1f}",
            "" if rnd == 0 else f"{figures['mb']:.2f}" + note,
        )
        self._live.refresh()

    def finish(self) -> None:
        """Rounds not every worker reported (one left on the way) are shown as they stand."""
        for rnd in sorted(set(self.rounds) - self.shown):
            self.shown.add(rnd)
            self._show(rnd, f"  ({len(self.rounds[rnd])} workers reported)")
        if self._live is not None:
            self._live.stop()
            self._live = None

    def figures(self, rnd: int) -> dict[str, float]:
        """A round over its workers: mean losses and step time, summed samples and megabytes."""
        per = self.rounds[rnd]

        def mean(name: str) -> float:
            values = [m[name] for m in per.values() if name in m and math.isfinite(m[name])]
            return sum(values) / len(values) if values else math.nan

        def total(name: str) -> float:
            return sum(m.get(name, 0.0) for m in per.values())

        return {
            "loss": mean("loss"),
            "eval_loss": mean("eval_loss"),
            "step_ms": mean("step_ms"),
            "samples": total("samples"),
            "mb": (total("bytes_sent") + total("bytes_received")) / 1e6,
        }

    def summary(self, rnd: int) -> str:
        """One line for a round every worker reported."""
        f = self.figures(rnd)
        if rnd == 0:
            return f"round  0  eval loss {f['eval_loss']:.4f} (initial weights)"
        return (
            f"round {rnd:2d}  train loss {f['loss']:.4f}  eval loss {f['eval_loss']:.4f}  "
            f"{f['samples']:.0f} samples  {f['step_ms']:.1f} ms/step  "
            f"{f['mb']:.2f} MB exchanged"
        )

    def plot(self) -> Path | None:
        """The loss curves (train per worker, eval mean) as a PNG; None without matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        self.finish()
        rounds = sorted(self.rounds)
        if not rounds:
            return None
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        workers = sorted({w for r in rounds for w in self.rounds[r]})
        for n, worker in enumerate(workers, start=1):
            xs = [r for r in rounds if "loss" in self.rounds[r].get(worker, {})]
            ax.plot(
                xs,
                [self.rounds[r][worker]["loss"] for r in xs],
                "o-",
                label=f"train loss, worker {n}",
            )
        xs, ys = [], []
        for r in rounds:
            evals = [
                m["eval_loss"]
                for m in self.rounds[r].values()
                if math.isfinite(m.get("eval_loss", math.nan))
            ]
            if evals:
                xs.append(r)
                ys.append(sum(evals) / len(evals))
        ax.plot(xs, ys, "s--", color="black", label="eval loss (global weights)")
        ax.set_xlabel("outer round")
        ax.set_ylabel("cross-entropy (nats per byte)")
        ax.set_title("DiLoCo: loss per outer round")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.png)
        plt.close(fig)
        return self.png
