"""The scheduler's plan: what its core decides with, carried in its event log's header."""

from __future__ import annotations

import math

import msgspec

from hypha_sm.core.resources import Amounts


class DiLoCoPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A DiLoCo job's rounds and its parameter server (hypha-execution.md §1.2, §9)."""

    #: Outer rounds (the original's ``update_rounds``).
    rounds: int
    #: Samples, summed over the workers, between two updates (``avg_samples_between_updates``).
    samples_per_round: int
    #: The largest batch a worker is given (its offer's gpu / the job's gpu, capped by this).
    max_batch_size: int
    #: What the parameter server must offer, and what it is paid at most.
    ps_resources: Amounts
    ps_bid: float
    #: The projection's caps (the original's 10 s after the round start and 3 batches).
    time_cap_ms: int = 10_000
    update_cap: int = 3


class Plan(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One job's placement rules and timings (from ``job.toml``'s ``[job]``), in seconds."""

    workers: int
    resources: Amounts
    bid: float
    #: The most the job pays per worker; the bid when unset.
    max_price: float | None = None
    #: How long offers are collected after the first one arrives.
    offer_wait: float = 0.1
    #: How long to advertise before giving up.
    advertise_timeout: float = 60.0
    #: How often a held lease is renewed (sooner if the worker's expiry is nearer).
    renew_interval: float = 1.0
    #: How long the job may run once dispatched.
    timeout: float = 3600.0
    #: How long an advertisement is valid for the workers that receive it.
    ad_lifetime: float = 5.0
    #: Offers kept per advertisement (anyone who saw it can offer).
    max_offers: int = 256
    #: How long accepting one offer may take: a temporary lease lapses 0.5 s after it was made.
    accept_timeout: float = 0.4
    #: How long the cheapest untried offer waits for the ones before it to answer.
    hedge: float = 0.05
    #: How long to wait before asking the gateways or publishing again.
    retry: float = 0.5
    #: How long an advertisement waits for a first offer before it is published again.
    first_offer_wait: float = 1.0
    #: The dataset the job's workers take slices of ("" for none).
    dataset: str = ""
    #: How long a worker may hold a slice before it goes back to the pool.
    slice_timeout: float = 600.0
    #: Epochs to hand out (0: as many as the job asks for).
    epochs: int = 0
    #: A DiLoCo job: its training workers (``workers``) and one parameter server.
    diloco: DiLoCoPlan | None = None

    @property
    def price_limit(self) -> float:
        """The highest acceptable price."""
        return self.bid if self.max_price is None else self.max_price


def plan_problem(plan: Plan) -> str | None:
    """Why a plan read from a log cannot run (None if it can)."""
    if plan.workers < 1:
        return f"workers {plan.workers} < 1"
    timings = (
        plan.offer_wait,
        plan.advertise_timeout,
        plan.renew_interval,
        plan.timeout,
        plan.ad_lifetime,
        plan.accept_timeout,
        plan.hedge,
        plan.retry,
        plan.first_offer_wait,
        plan.slice_timeout,
    )
    if not all(math.isfinite(t) and t >= 0 for t in timings):
        return "timings must be finite and not negative"
    if plan.renew_interval <= 0 or plan.retry <= 0 or plan.hedge <= 0:
        return "renew_interval, retry and hedge must be positive"
    if plan.slice_timeout <= 0 or plan.epochs < 0:
        return "slice_timeout must be positive and epochs not negative"
    if plan.diloco is not None:
        d = plan.diloco
        if d.rounds < 1 or d.samples_per_round < 1 or d.max_batch_size < 1:
            return "rounds, samples_per_round and max_batch_size must be at least 1"
        if not (math.isfinite(d.ps_bid) and d.ps_bid > 0) or d.update_cap < 1:
            return "ps_bid must be positive and update_cap at least 1"
    return None
