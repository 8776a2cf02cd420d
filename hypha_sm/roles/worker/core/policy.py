"""The worker's policy: what it has, what it runs, how it prices, and its timings.

This is the part of the configuration the core needs. The shell builds it from ``worker.toml``;
the event log stores it in its header so that a replay runs under the same policy.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from hypha_sm.core.errors import HyphaSMError
from hypha_sm.core.resources import Amounts, Weights

Strategy = Literal["whole", "flexible"]
Runtime = Literal["process", "parameter-server"]

#: Which runtime each job class needs (hypha-worker.md §6.1).
RUNTIME_FOR_CLASS: dict[str, str] = {
    "train": "process",
    "inference": "process",
    "aggregate": "parameter-server",
}


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
    #: The longest an offer stays open when an advertisement asks for longer than
    #: ``offer_timeout`` (a loaded scheduler may need more than half a second to accept).
    max_offer_timeout: float = 5.0
    lease_timeout: float = 10.0
    start_timeout: float = 60.0
    kill_grace: float = 5.0
    kill_retry: float = 10.0
    report_timeout: float = 10.0
    shutdown_timeout: float = 30.0
    #: After ``Policy.lapses_before_backoff`` offers in a row lapse unaccepted, a scheduler's
    #: advertisements are declined for this long, doubling with each further lapse up to
    #: ``backoff_max``.
    backoff_base: float = 10.0
    backoff_max: float = 600.0


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
    #: Most offers one scheduler may hold unaccepted at once (each reserves resources).
    max_pending_offers: int = 8
    #: Offers in a row a scheduler may let lapse (or make undeliverable) before backing off.
    lapses_before_backoff: int = 3
    #: Most schedulers whose lapses are remembered (the least recently seen are forgotten).
    scheduler_memory: int = 4096
    #: Most advertisement ids remembered at once (the soonest forgotten go first): a flood of
    #: ads costs bounded memory. Re-deliveries come within milliseconds, not 16,384 ads later.
    dedupe_capacity: int = 16_384
    #: Most ended leases whose owner is told why a late renewal or acceptance finds none
    #: (``offer_expired``, ``job_ended``, ...) instead of ``unknown_lease``; the oldest go first.
    ended_lease_memory: int = 1024

    def executor_for(self, ref: ExecutorRef) -> ExecutorSpec | None:
        """The first configured executor with this class and name, if any."""
        for spec in self.executors:
            if spec.cls == ref.cls and spec.name == ref.name:
                return spec
        return None


class PolicyError(HyphaSMError, ValueError):
    """A policy value is not acceptable; the message names the key, the value and what is allowed."""


def parse_strategy(value: object) -> Strategy:
    """``"whole"``/``"flexible"``, or the original's table form ``{ type = "whole" }``."""
    raw = value.get("type") if isinstance(value, dict) and set(value) == {"type"} else value
    if raw == "whole":
        return "whole"
    if raw == "flexible":
        return "flexible"
    raise PolicyError(
        f'offer.strategy = {value!r}: expected "whole", "flexible", '
        'or a table { type = "whole" | "flexible" }'
    )


def policy_from_config(data: dict[str, object]) -> Policy:
    """Build a Policy from plain config data (as read from TOML), normalising ``offer.strategy``.

    Raises:
        PolicyError: with the offending key, its value and what is allowed.
    """
    data = dict(data)
    offer = data.get("offer")
    if isinstance(offer, dict) and "strategy" in offer:
        data["offer"] = {**offer, "strategy": parse_strategy(offer["strategy"])}
    try:
        policy = msgspec.convert(data, Policy)
    except msgspec.ValidationError as exc:
        raise PolicyError(str(exc)) from None
    for name, amount in msgspec.structs.asdict(policy.capacity).items():
        if not (0.0 <= amount <= 1e9):
            raise PolicyError(f"capacity.{name} = {amount!r}: expected a number from 0 to 1e9")
    offer_value = policy.offer
    if not (0.0 <= offer_value.floor < math.inf and 0.0 <= offer_value.price < math.inf):
        raise PolicyError(
            f"offer price/floor = {offer_value.price!r}/{offer_value.floor!r}: "
            "expected finite numbers >= 0"
        )
    timings = msgspec.structs.asdict(policy.timings)
    for name, seconds in timings.items():
        if name == "window_limit":
            if not (isinstance(seconds, int) and seconds >= 1):
                raise PolicyError(f"timings.window_limit = {seconds!r}: expected an integer >= 1")
        elif not (0.0 < seconds < math.inf):
            raise PolicyError(f"timings.{name} = {seconds!r}: expected seconds > 0")
    if policy.max_leases < 1:
        raise PolicyError(f"max_leases = {policy.max_leases!r}: expected an integer >= 1")
    for name in (
        "max_pending_offers",
        "lapses_before_backoff",
        "scheduler_memory",
        "ended_lease_memory",
    ):
        if getattr(policy, name) < 1:
            raise PolicyError(f"{name} = {getattr(policy, name)!r}: expected an integer >= 1")
    if policy.dedupe_capacity < 1:
        raise PolicyError(
            f"dedupe_capacity = {policy.dedupe_capacity!r}: expected an integer >= 1"
        )
    return policy
