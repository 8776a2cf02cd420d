"""The worker's policy: what it has, what it runs, how it prices, and its timings.

This is the part of the configuration the core needs. The shell builds it from ``worker.toml``;
the event log stores it in its header so that a replay runs under the same policy.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from hypha_sm.core.resources import Amounts, Weights

Strategy = Literal["whole", "flexible"]
Runtime = Literal["process", "parameter-server"]

#: Which runtime each job class needs (hypha-worker.md §6.1).
RUNTIME_FOR_CLASS: dict[str, str] = {"train": "process", "aggregate": "parameter-server"}


class ExecutorRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An executor as schedulers name it: job class and executor name."""

    cls: str = msgspec.field(name="class")
    name: str


class ExecutorSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A configured executor: its class and name, and the runtime that runs it."""

    cls: str = msgspec.field(name="class")
    name: str
    runtime: Runtime

    @property
    def ref(self) -> ExecutorRef:
        """The descriptor schedulers use to ask for this executor."""
        return ExecutorRef(cls=self.cls, name=self.name)


class Offer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Pricing (specs/pricing.md): floor is the hard minimum; price is the ask."""

    price: float = 100.0
    floor: float = 100.0
    strategy: Strategy = "whole"


class Timings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Durations in seconds and batch sizes. Defaults are the original worker's."""

    window_wait: float = 0.2
    window_limit: int = 100
    offer_timeout: float = 0.5
    lease_timeout: float = 10.0
    start_timeout: float = 60.0
    kill_grace: float = 5.0
    kill_retry: float = 10.0
    report_timeout: float = 10.0
    shutdown_timeout: float = 30.0


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the pure core needs to decide."""

    capacity: Amounts
    executors: tuple[ExecutorSpec, ...] = ()
    offer: Offer = Offer()
    timings: Timings = Timings()
    weights: Weights = Weights()
    #: Most leases held at once, offered or accepted; protects memory from floods of tiny bids.
    max_leases: int = 1024
    #: How long an advertisement id is remembered to drop re-deliveries, when the ad sets no timeout.
    dedupe_window: float = 60.0

    def executor_for(self, ref: ExecutorRef) -> ExecutorSpec | None:
        """The first configured executor with this class and name, if any."""
        for spec in self.executors:
            if spec.cls == ref.cls and spec.name == ref.name:
                return spec
        return None
