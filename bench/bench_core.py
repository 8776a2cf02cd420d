"""Throughput and memory of the pure core, against the targets of the performance issue.

Run from the repository root:

    python bench/bench_core.py            # full run (~1 min on 2 cores)
    python bench/bench_core.py --quick    # smoke test (< 20 s)
    python bench/bench_core.py --profile ads|renew|mix   # cProfile, top 25

Every timed figure is the median of several repetitions, each paired with a baseline measured
in the same run (the box is a noisy 2-core machine: compare ratios across runs, not raw
numbers). Nothing in a timed section does I/O; events are built before the clock starts
(except the 100 acceptance renewals per mix round, whose lease ids only exist after the flush).
See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import (
    SEED,
    Clock,
    Population,
    ad_batch,
    ad_policy,
    advertisement,
    build_population,
    job_events,
    offers_in,
    renew,
    transitions_in,
)

from hypha_sm.core.engine import Engine
from hypha_sm.core.resources import ZERO, Resources, score, to_resources
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.worker.core.events import AdvertisementReceived, Now, Tick
from hypha_sm.roles.worker.core.policy import Policy
from hypha_sm.roles.worker.core.reducer import initial_state, step
from hypha_sm.roles.worker.core.role import WORKER

perf = time.perf_counter


@dataclass(frozen=True)
class Sizes:
    ad_reps: int
    ad_batches: int  # batches of 100 per repetition
    live: int  # live leases for benchmarks 2 and 3
    renew_reps: int
    renew_per_rep: int
    mix_reps: int
    mix_rounds: int  # rounds of 1,000 inputs per repetition
    replay_events: int  # inputs in the recorded log for benchmark 4


FULL = Sizes(
    ad_reps=7,
    ad_batches=30,
    live=100_000,
    renew_reps=5,
    renew_per_rep=30_000,
    mix_reps=5,
    mix_rounds=20,
    replay_events=200_000,
)
QUICK = Sizes(
    ad_reps=3,
    ad_batches=5,
    live=10_000,
    renew_reps=3,
    renew_per_rep=5_000,
    mix_reps=3,
    mix_rounds=3,
    replay_events=20_000,
)


@dataclass
class Row:
    figure: str
    value: float | None
    unit: str
    target: str
    ok: bool | None
    baseline: str = ""
    ratio: str = ""


# ---------------------------------------------------------------------------------------------
# 1. Advertisement evaluation
# ---------------------------------------------------------------------------------------------


def plain_evaluate(
    ads: list[AdvertisementReceived], policy: Policy, capacity: Resources, now: Now, live: int
) -> tuple[int, Counter[str]]:
    """The same filters, score, rank and greedy reservation in plain Python: no machine, no state.

    Returns the number of offers and the decline reasons, to check it agrees with the engine.
    """
    offer = policy.offer
    flexible = offer.strategy == "flexible"
    weights = policy.weights
    declined: Counter[str] = Counter()
    ranked = []
    for arrival, ad in enumerate(ads):
        bid = ad.bid
        requested = to_resources(ad.resources)
        expires_mono = now.mono + (ad.expires_wall - now.wall)
        if not (0.0 <= bid < math.inf):
            declined["invalid_bid"] += 1
        elif requested is None:
            declined["invalid_resources"] += 1
        elif not (expires_mono > now.mono):
            declined["expired"] += 1
        elif any(policy.executor_for(ref) is None for ref in ad.executors):
            declined["unsupported_executor"] += 1
        elif bid < offer.floor:
            declined["below_floor"] += 1
        elif flexible and bid < offer.price:
            declined["below_price"] += 1
        elif not requested.fits_within(capacity):
            declined["exceeds_capacity"] += 1
        elif flexible and requested.is_zero():
            declined["empty_request"] += 1
        else:
            if flexible:
                res, price = requested, bid
            else:
                res, price = capacity, max(bid, offer.price)
            ranked.append((-score(price, res, weights), arrival, res))
    ranked.sort(key=lambda r: (r[0], r[1]))
    reserved = ZERO
    offers = 0
    for _, _, res in ranked:
        if live + offers >= policy.max_leases:
            declined["too_many_leases"] += 1
        elif res.fits_within(capacity.minus(reserved)):
            reserved = reserved.plus(res)
            offers += 1
        else:
            declined["insufficient_resources"] += 1
    return offers, declined


def bench_ads(engine: Engine, sizes: Sizes, log: Callable[[str], None]) -> list[Row]:
    policy = ad_policy()
    rng = random.Random(1)
    state = initial_state(engine, policy, SEED)
    clock = Clock()
    capacity = state.capacity
    engine_rates, plain_rates, overheads = [], [], []
    total_offers = total_ads = 0
    engine_declines: Counter[str] = Counter()
    plain_declines: Counter[str] = Counter()
    plain_offers = 0
    for rep in range(sizes.ad_reps):
        # Each batch starts a fresh simulated second: the offers of the previous batch expired at
        # the untimed Tick after it (offer_timeout 0.5 s), so capacity is free again.
        t_engine = 0.0
        fed: list[tuple[list[AdvertisementReceived], Now]] = []
        for b in range(sizes.ad_batches):
            batch = ad_batch(rng, f"r{rep}-b{b}", clock.t)
            nows = [clock.advance(1e-6) for _ in batch]
            before = state.counters.copy()
            t0 = perf()
            for ad, now in zip(batch, nows, strict=True):
                out = step(state, ad, now)
            t_engine += perf() - t0
            fed.append((batch, nows[-1]))
            total_offers += sum(1 for _ in offers_in(out))
            total_ads += len(batch)
            diff = state.counters - before
            engine_declines.update(
                {k.split(".", 1)[1]: v for k, v in diff.items() if k.startswith("declined.")}
            )
            clock.advance(1.0)
            step(state, Tick(), clock.now())  # untimed: the offers expire, capacity returns
        # Baseline: the same ads, filters, score, sort and greedy reservation in plain Python.
        t_plain = 0.0
        for batch, now in fed:
            t0 = perf()
            offers, declines = plain_evaluate(batch, policy, capacity, now, 0)
            t_plain += perf() - t0
            plain_offers += offers
            plain_declines.update(declines)
        n = sizes.ad_batches * 100
        engine_rates.append(n / t_engine)
        plain_rates.append(n / t_plain)
        overheads.append(t_engine / t_plain)
    # The engine and the baseline decided the same thing, or the comparison means nothing.
    if plain_declines != engine_declines or plain_offers != total_offers:
        raise AssertionError(
            f"baseline disagrees: engine {total_offers} offers {dict(engine_declines)}; "
            f"plain {plain_offers} offers {dict(plain_declines)}"
        )
    rate = statistics.median(engine_rates)
    plain = statistics.median(plain_rates)
    factor = statistics.median(overheads)
    log(
        f"  ads: {total_ads} evaluated in {sizes.ad_reps} reps x {sizes.ad_batches} batches of "
        f"100; offers {total_offers} ({total_offers / total_ads:.0%}); declines "
        + ", ".join(f"{k} {v}" for k, v in sorted(engine_declines.items()))
    )
    log(
        f"  ads: engine per rep (ads/s): {', '.join(f'{r:,.0f}' for r in engine_rates)}; "
        f"plain: {', '.join(f'{r:,.0f}' for r in plain_rates)}"
    )
    log(f"  ads: engine cost per ad {1e6 / rate:.1f} us, plain {1e6 / plain:.2f} us")
    return [
        Row(
            "1a ad evaluation, full engine path (step x100, flush)",
            rate,
            "ads/s",
            ">= 100,000",
            rate >= 100_000,
            f"plain filter+score+sort {plain:,.0f} ads/s",
            f"engine {factor:.0f}x slower",
        ),
    ]


# ---------------------------------------------------------------------------------------------
# 2. Transitions with 100,000 live machines
# ---------------------------------------------------------------------------------------------


class _Model:
    state: str


def library_baseline(n: int) -> float:
    """Seconds for ``n`` raw flyweight triggers of `transitions` in the renewal's shape.

    One Machine, one plain model; per trigger: assign model.state, trigger with one argument; the
    transition is reflexive (active -> active) with one condition, one before and two after
    callbacks, like the lease's renewal (the engine's marker; extend, reply_renewed). The
    callbacks do nothing.
    """
    from transitions import Machine

    def cond(ctx: object) -> bool:
        return True

    def noop(ctx: object) -> None:
        return None

    model = _Model()
    Machine(
        model=model,
        states=["offered", "active", "draining", "released"],
        transitions=[
            {
                "trigger": "renew_requested",
                "source": "active",
                "dest": "active",
                "conditions": [cond],
                "before": [noop],
                "after": [noop, noop],
            },
        ],
        initial="offered",
        auto_transitions=False,
        send_event=False,
        model_attribute="state",
    )
    trigger = model.trigger  # type: ignore[attr-defined]
    ctx = object()
    t0 = perf()
    for _ in range(n):
        model.state = "active"
        trigger("renew_requested", ctx)
    return perf() - t0


def bench_renewals(
    pop: Population, sizes: Sizes, log: Callable[[str], None]
) -> tuple[Row, list[float]]:
    rng = random.Random(2)
    state, clock = pop.state, pop.clock
    rates, lib_rates, ratios = [], [], []
    for _ in range(sizes.renew_reps):
        picks = [
            pop.lease_ids[rng.randrange(len(pop.lease_ids))] for _ in range(sizes.renew_per_rep)
        ]
        events = [renew(lid, pop.owners[lid], i) for i, lid in enumerate(picks)]
        nows = [clock.advance(1e-6) for _ in events]
        counted = 0
        t0 = perf()
        for event, now in zip(events, nows, strict=True):
            out = step(state, event, now)
            counted += transitions_in(out)
        elapsed = perf() - t0
        assert counted == len(events), (counted, len(events))
        lib = library_baseline(counted)
        rates.append(counted / elapsed)
        lib_rates.append(counted / lib)
        ratios.append(elapsed / lib)
    assert len(state.records["lease"]) == sizes.live
    assert not state.counters["lease.released.expired"]
    rate = statistics.median(rates)
    lib = statistics.median(lib_rates)
    log(
        f"  renew: per rep (transitions/s): {', '.join(f'{r:,.0f}' for r in rates)}; "
        f"library: {', '.join(f'{r:,.0f}' for r in lib_rates)}"
    )
    log(
        f"  renew: {1e6 / rate:.1f} us per renewal step; raw library trigger {1e6 / lib:.1f} us; "
        f"timer heap now {len(state.timers):,} entries for {sizes.live:,} leases"
    )
    return (
        Row(
            f"2a renewals, {sizes.live:,} live leases",
            rate,
            "transitions/s",
            ">= 20,000",
            rate >= 20_000,
            f"raw transitions trigger {lib:,.0f}/s",
            f"engine {statistics.median(ratios):.1f}x the library",
        ),
        rates,
    )


def bench_mix(pop: Population, sizes: Sizes, log: Callable[[str], None]) -> Row:
    """Rounds of 1,000 inputs over the live population, keeping it at exactly ``live`` leases.

    Per round: 100 dispatches (lease: create_job) -> 100 JobStarted (job: starting -> running)
    -> 100 StatusDelivered(running) (ignored: no transition) -> 400 owner renewals on random
    leases -> 100 JobExited (job -> reporting, then lease -> released: 2 each) -> 100
    StatusDelivered(final) (job -> finished/failed) -> 100 new advertisements (99 admits, then
    the flush: 100 batch_closed + 100 reserve -> offered) -> 100 acceptance renewals of the new
    leases. 1,000 inputs, 1,300 declared transitions.
    """
    rng = random.Random(3)
    state, clock = pop.state, pop.clock
    n = len(pop.lease_ids)
    stable = pop.lease_ids[: n * 9 // 10]  # only renewed
    pool = deque(pop.lease_ids[n * 9 // 10 :])  # carry one job each, then are replaced
    job_seq = ad_seq = 0
    rates, ratios, lib_rates = [], [], []
    kinds: Counter[str] = Counter()
    for _ in range(sizes.mix_reps):
        counted = 0
        elapsed = 0.0
        for _ in range(sizes.mix_rounds):
            leases = [pool.popleft() for _ in range(100)]
            lives = []
            for lid in leases:
                job_seq += 1
                lives.append(
                    job_events(
                        f"job-{job_seq:07d}", lid, pop.owners[lid], 0 if job_seq % 10 else 1
                    )
                )
            renewals = [stable[rng.randrange(len(stable))] for _ in range(400)]
            ads = []
            for i in range(100):
                ad_seq += 1
                ads.append(
                    advertisement(
                        f"mix-{ad_seq:08d}",
                        clock.t,
                        bid=100.0 + i,
                        scheduler=pop.owners[leases[i]],
                    )
                )
            inputs = (
                [life[0] for life in lives]
                + [life[1] for life in lives]
                + [life[2] for life in lives]
                + [renew(lid, pop.owners[lid], 7) for lid in renewals]
                + [life[3] for life in lives]
                + [life[4] for life in lives]
                + ads
            )
            nows = [clock.advance(1e-6) for _ in range(len(inputs) + 100)]
            t0 = perf()
            for event, now in zip(inputs, nows, strict=False):
                out = step(state, event, now)
                counted += transitions_in(out)
            accept = [renew(o.lease_id, o.scheduler, 8) for o in offers_in(out)]
            for event, now in zip(accept, nows[len(inputs) :], strict=False):
                out = step(state, event, now)
                counted += transitions_in(out)
            elapsed += perf() - t0
            assert len(accept) == 100
            for o in accept:
                pop.owners[o.lease_id] = o.peer
                pool.append(o.lease_id)
            kinds.update(type(e).__name__ for e in inputs)
            kinds["RenewRequested(accept)"] += len(accept)
        lib = library_baseline(counted)
        rates.append(counted / elapsed)
        lib_rates.append(counted / lib)
        ratios.append(elapsed / lib)
    assert len(state.records["lease"]) == n, len(state.records["lease"])
    assert not state.records["job"]
    assert not state.records["request"]
    assert not state.counters["lease.released.expired"]
    rate = statistics.median(rates)
    lib = statistics.median(lib_rates)
    log(f"  mix: inputs {dict(kinds)}")
    log(
        f"  mix: per rep (transitions/s): {', '.join(f'{r:,.0f}' for r in rates)}; "
        f"live leases stayed at {n:,}; simulated clock at {clock.t:.3f} s"
    )
    return Row(
        f"2b mix (jobs, acks, renewals, ads), {n:,} live",
        rate,
        "transitions/s",
        ">= 20,000",
        rate >= 20_000,
        f"raw transitions trigger {lib:,.0f}/s",
        f"engine {statistics.median(ratios):.1f}x the library",
    )


# ---------------------------------------------------------------------------------------------
# 3. Memory per live machine
# ---------------------------------------------------------------------------------------------


def _slot_values(rec: object) -> list[object]:
    return [
        getattr(rec, name) for cls in type(rec).__mro__ for name in getattr(cls, "__slots__", ())
    ]


def _children(obj: object) -> tuple[object, ...]:
    return tuple(obj) if type(obj) is not str and isinstance(obj, tuple) else ()


def record_bytes(records: list[object]) -> tuple[int, dict[str, int]]:
    """Bytes of the records plus the objects only one record references (deep, through tuples).

    An object referenced from several records (the owner's peer id, the interned phase name,
    None, small ints) is shared, not owned, and is not counted. Returns the total and a
    per-slot breakdown.
    """
    refs: Counter[int] = Counter()
    for rec in records:
        stack = _slot_values(rec)
        while stack:
            obj = stack.pop()
            refs[id(obj)] += 1
            stack.extend(_children(obj))
    total = 0
    by_slot: Counter[str] = Counter()
    for rec in records:
        size = sys.getsizeof(rec)
        total += size
        by_slot["(the record object)"] += size
        names = [n for cls in type(rec).__mro__ for n in getattr(cls, "__slots__", ())]
        for name, value in zip(names, _slot_values(rec), strict=True):
            stack = [value]
            while stack:
                obj = stack.pop()
                if refs[id(obj)] == 1:
                    size = sys.getsizeof(obj)
                    total += size
                    by_slot[name] += size
                stack.extend(_children(obj))
    return total, dict(by_slot)


def engine_bytes(pop: Population) -> dict[str, int]:
    """The engine's per-machine structures, by component (records' own objects excluded)."""
    state = pop.state
    size = sys.getsizeof
    out: dict[str, int] = {}
    out["state.records[kind] dicts (hash tables)"] = sum(size(d) for d in state.records.values())
    out["state.reservations dict (hash table)"] = size(state.reservations)
    heap_tuples = heap_seq = heap_stale_at = 0
    for at, seq, kind, key in state.timers:
        heap_tuples += size((at, seq, kind, key))
        heap_seq += size(seq)
        rec = state.records[kind].get(key)
        if rec is None or rec.deadline is not at:
            heap_stale_at += size(at)  # a stale entry keeps its own float alive
    out["state.timers list (pointer array)"] = size(state.timers)
    out["state.timers entries (4-tuples)"] = heap_tuples
    out["state.timers sequence ints"] = heap_seq
    out["state.timers stale deadlines (floats)"] = heap_stale_at
    seen = size(state.seen_ads) + size(state.seen_heap)
    seen += sum(size(e) + size(e[0]) for e in state.seen_heap)
    label = (
        f"state.seen_ads + seen_heap (dedupe memory; {len(state.seen_ads)} ids held, "
        "the dict keeps its peak table)"
    )
    out[label] = seen
    out["state.counters"] = size(state.counters) + sum(size(k) for k in state.counters)
    return out


def rss_bytes() -> int:
    with open("/proc/self/status") as f:  # not in a timed section
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_memory(
    engine: Engine, sizes: Sizes, rss_per_machine: float, log: Callable[[str], None]
) -> list[Row]:
    n = sizes.live
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    traced0 = tracemalloc.get_traced_memory()[0]
    pop = build_population(engine, n)
    gc.collect()
    traced1 = tracemalloc.get_traced_memory()[0]
    snap = tracemalloc.take_snapshot()
    # What the benchmark itself holds (the list of ids, the owners map): not the state's.
    bench_held = sys.getsizeof(pop.lease_ids) + sys.getsizeof(pop.owners) + sys.getsizeof(pop)
    state_traced = traced1 - traced0 - bench_held
    leases = list(pop.state.records["lease"].values())
    rec_total, rec_by_slot = record_bytes(leases)
    bench_held += sys.getsizeof(leases)
    state_traced -= sys.getsizeof(leases)
    overhead = state_traced - rec_total
    parts = engine_bytes(pop)
    accounted = sum(parts.values())
    log(
        f"  memory: tracemalloc, state with {n:,} active leases: {state_traced / 1e6:.2f} MB "
        f"= {state_traced / n:.0f} B per lease"
    )
    log(f"  memory: the records themselves {rec_total / n:.0f} B per lease:")
    for name, b in sorted(rec_by_slot.items(), key=lambda kv: -kv[1]):
        log(f"      {b / n:7.1f} B  {name}")
    log(
        f"  memory: everything else (engine overhead) {overhead / n:.0f} B per lease; "
        f"accounted by component {accounted / n:.0f} B:"
    )
    for name, b in sorted(parts.items(), key=lambda kv: -kv[1]):
        log(f"      {b / n:7.1f} B  {name}")
    log(
        f"      {(overhead - accounted) / n:7.1f} B  not itemised: ints are 32 B to tracemalloc, 28 B to getsizeof (x3)"
    )
    log("  memory: top allocation sites (tracemalloc, growth during the build):")
    for stat in snap.compare_to(base, "lineno")[:8]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        log(f"      {stat.size_diff / n:7.1f} B/lease  {stat.count_diff:>9,} blocks  {where}")
    # Renewals: each pushes a new heap entry and the old one stays until its (stale) time
    # comes, so fast renewals would pile entries up; the state compacts the heap once it holds
    # more than 2 x live records + 1024 entries. Measure one extra renewal per lease, then ten
    # rapid ones (a peer renewing far faster than Hypha's 6.67 s), with everything still live.
    del snap, base
    for lid in pop.lease_ids:
        step(pop.state, renew(lid, pop.owners[lid]), pop.clock.advance(1e-6))
    gc.collect()
    traced2 = tracemalloc.get_traced_memory()[0]
    per_extra = (traced2 - traced1) / n
    heap_per = len(pop.state.timers) / n
    log(
        f"  memory: after one more renewal of every lease the heap holds {heap_per:.1f} entries "
        f"per lease; each stale entry costs {per_extra:.0f} B until its old deadline passes"
    )
    for _ in range(10):
        for lid in pop.lease_ids:
            step(pop.state, renew(lid, pop.owners[lid]), pop.clock.advance(1e-6))
    gc.collect()
    traced3 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    rapid = (overhead + traced3 - traced1) / n
    rapid_heap = len(pop.state.timers) / n
    log(
        f"  memory: after 10 more rapid renewals of every lease the heap holds "
        f"{rapid_heap:.1f} entries per lease (compaction) -> {rapid:,.0f} B overhead per lease"
    )
    return [
        Row(
            f"3 engine overhead per live machine ({n:,} leases)",
            overhead / n,
            "B/machine",
            "<= 1,024",
            overhead / n <= 1024,
            f"record itself {rec_total / n:.0f} B",
            f"overhead {overhead / rec_total:.2f}x the record",
        ),
        Row(
            "3' same, after 1 extra renewal per lease",
            (overhead + traced2 - traced1) / n,
            "B/machine",
            "<= 1,024",
            (overhead + traced2 - traced1) / n <= 1024,
            f"+{per_extra:.0f} B per stale timer entry",
            "",
        ),
        Row(
            "3'' same, after 11 rapid renewals per lease",
            rapid,
            "B/machine",
            "<= 1,024",
            rapid <= 1024,
            f"{rapid_heap:.1f} heap entries per lease",
            "heap compaction bounds it",
        ),
        Row(
            "3x cross-check: RSS growth per lease (whole state)",
            rss_per_machine,
            "B/machine",
            "(info)",
            None,
            f"tracemalloc whole state {state_traced / n:.0f} B",
            "upper bound: incl. freed garbage",
        ),
    ]


# ---------------------------------------------------------------------------------------------


def environment(engine_build_s: float) -> list[str]:
    load = os.getloadavg()
    return [
        f"python {platform.python_version()} ({platform.python_implementation()}) on "
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, "
        f"loadavg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"transitions {version('transitions')}, msgspec {version('msgspec')}, "
        f"hypha-sm {version('hypha-sm')}; gc {'enabled' if gc.isenabled() else 'disabled'}; "
        f"engine built in {engine_build_s * 1e3:.0f} ms",
    ]


def print_table(rows: list[Row]) -> None:
    headers = ("figure", "measured", "target", "", "baseline (same run)", "ratio")
    cells = []
    for r in rows:
        measured = "n/a" if r.value is None else f"{r.value:,.0f} {r.unit}"
        status = "-" if r.ok is None else ("PASS" if r.ok else "MISS")
        cells.append((r.figure, measured, r.target, status, r.baseline, r.ratio))
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def profile(engine: Engine, what: str, sizes: Sizes) -> None:
    """cProfile of the engine's steps only (event building and baselines are not profiled)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    if what == "ads":
        rng = random.Random(1)
        state = initial_state(engine, ad_policy(), SEED)
        clock = Clock()
        for b in range(sizes.ad_batches * 3):
            batch = ad_batch(rng, f"p-b{b}", clock.t)
            nows = [clock.advance(1e-6) for _ in batch]
            prof.enable()
            for ad, now in zip(batch, nows, strict=True):
                step(state, ad, now)
            prof.disable()
            clock.advance(1.0)
            step(state, Tick(), clock.now())
        print(f"profile: {sizes.ad_batches * 300:,} advertisements through step")
    else:
        pop = build_population(engine, sizes.live)
        if what == "renew":
            rng = random.Random(2)
            picks = [pop.lease_ids[rng.randrange(sizes.live)] for _ in range(sizes.renew_per_rep)]
            events = [renew(lid, pop.owners[lid], i) for i, lid in enumerate(picks)]
            nows = [pop.clock.advance(1e-6) for _ in events]
            state = pop.state
            prof.enable()
            for event, now in zip(events, nows, strict=True):
                step(state, event, now)
            prof.disable()
            print(f"profile: {len(events):,} renewals, {sizes.live:,} live leases")
        else:
            sizes = Sizes(**{**sizes.__dict__, "mix_reps": 1})
            prof.runcall(bench_mix, pop, sizes, lambda s: None)
            print(f"profile: {sizes.mix_rounds} mix rounds (includes building the round's events)")
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(25)
    # Where the time goes, by package (tottime summed over the functions of each file group).
    groups: Counter[str] = Counter()
    total = 0.0
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "transitions" in filename:
            group = "transitions library"
        elif "logging" in filename:
            group = "logging (debug/info calls made by transitions)"
        elif "hypha_sm" in filename:
            group = "hypha_sm/" + filename.split("hypha_sm/", 1)[1]
        elif filename == "~":
            group = "builtins (isinstance, heappush, getattr, ...)"
        else:
            group = Path(filename).name
        groups[group] += tottime
        total += tottime
    print("tottime by file:")
    for group, t in groups.most_common(12):
        print(f"  {t / total:6.1%}  {t:7.3f} s  {group}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test, < 20 s)")
    parser.add_argument(
        "--profile",
        choices=("ads", "renew", "mix"),
        help="run one workload under cProfile and print the top 25 by tottime",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    started = perf()
    t0 = perf()
    engine, _ = load_engine(
        WORKER
    )  # reads machines/worker/*.toml: the only I/O, before any timing
    build_s = perf() - t0
    if args.profile:
        profile(engine, args.profile, sizes)
        return

    def log(text: str) -> None:
        print(text, flush=True)

    print("== environment")
    for line in environment(build_s):
        print("  " + line)
    print(f"== sizes: {'quick' if args.quick else 'full'} {sizes}")
    rows: list[Row] = []

    print("== 1. advertisement evaluation")
    rows += bench_ads(engine, sizes, log)

    print(f"== 2. transitions with {sizes.live:,} live leases")
    gc.collect()
    rss0 = rss_bytes()
    t0 = perf()
    pop = build_population(engine, sizes.live)
    build = perf() - t0
    gc.collect()
    rss_per = (
        rss_bytes() - rss0 - sys.getsizeof(pop.lease_ids) - sys.getsizeof(pop.owners)
    ) / sizes.live
    log(
        f"  built {sizes.live:,} active leases through ads -> offers -> renewals in {build:.1f} s "
        f"({pop.steps:,} inputs, {pop.transitions:,} transitions: "
        f"{pop.transitions / build:,.0f} transitions/s while the population grew)"
    )
    row, _ = bench_renewals(pop, sizes, log)
    rows.append(row)
    rows.append(bench_mix(pop, sizes, log))
    del pop
    gc.collect()

    print(f"== 3. memory with {sizes.live:,} live leases")
    rows += bench_memory(engine, sizes, rss_per, log)

    print("== 4. replay of a recorded log (bench/bench_replay.py)")
    from bench_replay import measure

    count, replay_rate, decode_rate = measure(sizes.replay_events, 3 if args.quick else 5)
    log(
        f"  replayed {count:,} events: {replay_rate:,.0f} events/s; decoding alone {decode_rate:,.0f}/s"
    )
    rows.append(
        Row(
            "4 replay (decode + step + compare effects)",
            replay_rate,
            "events/s",
            ">= 50,000",
            replay_rate >= 50_000,
            f"decode only {decode_rate:,.0f} events/s",
            f"replay {decode_rate / replay_rate:.0f}x the decode cost",
        )
    )
    print()
    print_table(rows)
    print(f"\n(total bench time {perf() - started:.0f} s)")


if __name__ == "__main__":
    main()
