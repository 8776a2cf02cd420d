"""Replay speed: events/s for `hypha-sm replay` on a large recorded log (target >= 50,000/s).

Records a realistic log in memory first (advertisement bursts with declines and offers,
acceptances, renewals, dispatches, job starts and exits, status acks, expiries), then times:

- replay: decode each line, step the core, compare the effects with the recorded ones;
- baseline: decoding the same lines only (msgspec JSON), in the same run.

Usage: python bench/bench_replay.py [--events N] [--repeat R]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time

import msgspec

from hypha_sm.core.resources import Amounts
from hypha_sm.log.codec import Entry
from hypha_sm.log.replay import replay
from hypha_sm.log.store import Recorder
from hypha_sm.machines_io import load_engine
from hypha_sm.roles.worker.core.effects import SendOffer, StartJob
from hypha_sm.roles.worker.core.events import (
    AdvertisementReceived,
    DispatchRequested,
    JobExited,
    JobStarted,
    Now,
    RenewRequested,
    StatusDelivered,
    Tick,
)
from hypha_sm.roles.worker.core.policy import ExecutorRef, ExecutorSpec, Offer, Policy, Timings
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.runtime.loop import Stepper

TRAIN = ExecutorRef(cls="train", name="diloco-transformer")
POLICY = Policy(
    capacity=Amounts(gpu=1_000, cpu=1_000, memory=10_000, storage=100_000),
    executors=(ExecutorSpec(cls="train", name="diloco-transformer", runtime="process"),),
    offer=Offer(price=100, floor=100, strategy="flexible"),
    timings=Timings(),
)


def record(target_events: int) -> bytes:
    """A log of about ``target_events`` inputs from a busy, realistic worker."""
    engine, machines_hash = load_engine(WORKER)
    sink = io.BytesIO()
    recorder = Recorder(sink, WORKER, machines_hash, POLICY, bytes(16))
    rec = Stepper(WORKER, engine, POLICY, bytes(16), recorder)
    t = 0.0
    wall0 = 1_764_000_000.0
    reply = 0
    active: list[str] = []  # accepted leases, renewed every round
    running: list[str] = []
    round_no = 0

    def feed(event: object) -> list[object]:
        return list(rec.feed(event, Now(t, wall0 + t)).effects)  # type: ignore[arg-type]

    while recorder.seq < target_events:
        round_no += 1
        offers = []
        for i in range(20):  # a burst: some declined (bid, executor, size), most offered
            bid = 90.0 if i % 5 == 0 else 120.0
            executors = (ExecutorRef(cls="train", name="other"),) if i % 7 == 0 else (TRAIN,)
            effects = feed(
                AdvertisementReceived(
                    f"r{round_no}-{i}",
                    "12D3KooWSched",
                    "tcp://127.0.0.1:1",
                    Amounts(gpu=1, cpu=1, memory=2),
                    executors,
                    bid,
                    wall0 + t + 5,
                )
            )
            offers += [e.lease_id for e in effects if isinstance(e, SendOffer)]
        t += 0.2
        offers += [e.lease_id for e in feed(Tick()) if isinstance(e, SendOffer)]
        for lease in offers[:4]:  # the scheduler accepts four; the rest expire
            reply += 1
            feed(RenewRequested(lease, "12D3KooWSched", reply))
            active.append(lease)
        for lease in offers[:2]:  # and runs a job on two of them
            reply += 1
            effects = feed(
                DispatchRequested(f"job-{lease}", lease, "12D3KooWSched", TRAIN, "{}", reply)
            )
            for e in effects:
                if isinstance(e, StartJob):
                    feed(JobStarted(e.job_id))
                    feed(StatusDelivered(e.job_id, "running"))
                    running.append(e.job_id)
        t += 1.0
        for lease in active[-40:]:  # renewals keep the recent leases alive
            reply += 1
            feed(RenewRequested(lease, "12D3KooWSched", reply))
        while len(running) > 10:  # older jobs finish; their leases are released
            job = running.pop(0)
            feed(JobExited(job, 0 if round_no % 3 else 1))
            feed(StatusDelivered(job, "finished" if round_no % 3 else "failed"))
        t += 0.5
        feed(Tick())
    return sink.getvalue()


def measure(events: int, repeat: int) -> tuple[int, float, float]:
    """(events in the log, replay events/s, decode-only events/s), medians of ``repeat`` runs."""
    engine, machines_hash = load_engine(WORKER)
    lines = record(events).splitlines(keepends=True)
    count = len(lines) - 1
    decoder = msgspec.json.Decoder(Entry)
    decode_times, replay_times = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        for line in lines[1:]:
            decoder.decode(line)
        decode_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        report = replay(lines, engine, machines_hash, role=WORKER)
        replay_times.append(time.perf_counter() - start)
        if not report.ok or report.events != count:
            raise RuntimeError(f"replay failed: {report.divergence or report.error}")
    return count, count / statistics.median(replay_times), count / statistics.median(decode_times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    count, rate, decode = measure(args.events, args.repeat)
    print(f"python {platform.python_version()}, {count:,} events")
    print(f"{'figure':44} {'value':>14} {'target':>12}  verdict")
    verdict = "PASS" if rate >= 50_000 else "MISS"
    print(
        f"{'replay (decode + step + compare effects)':44} {rate:>10,.0f} ev/s {'>= 50,000':>12}  {verdict}"
    )
    print(f"{'baseline: decode only':44} {decode:>10,.0f} ev/s")
    print(f"{'replay cost / decode-only cost':44} {decode / rate:>13.1f}x")


if __name__ == "__main__":
    main()
