"""Advertisement relay: scheduler → gateway → worker, signed and verified, vs bare pynng.

Three processes over tcp loopback in both variants, the same payload size, the same async API
(trio, ``asend``/``arecv``):

- hypha-sm: a scheduler process publishes ``Advertisement``s, sealed before the clock starts
  (the bare publisher's frames are built before it too), to a real gateway process
  (``hypha-sm gateway run``: verifies each, relays it byte for byte); the worker (this process)
  subscribes and verifies each again.
- baseline: a bare Pub0 process → a bare relay process (Sub0 → Pub0, forwarding frames
  unchecked) → a bare Sub0 here, frames of the envelope's size.

The rate is what the worker received per second (first to last arrival). Losses are reported:
for hypha-sm they are counted (gateway overload, frame-number gaps); bare pynng loses silently.
Usage: python bench/bench_relay.py [--count N] [--reps R]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import pynng
import trio
from gateway_process import start_gateway

from hypha_sm.net.transport import Endpoint
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import Advertisement, Executor, Resources

MP = mp.get_context("spawn")  # a forked child would inherit the running trio loop
SCHED = Identity.from_seed(bytes([3]) * 32)
WORKER = Identity.from_seed(bytes([4]) * 32)
TOPIC = b"hypha/worker\x00"


def advert(n: int) -> Advertisement:
    return Advertisement(
        f"7f1c0a52-0000-4000-8000-{n:012d}",
        str(SCHED.peer_id),
        "tcp://127.0.0.1:7100",
        Resources(gpu=8, cpu=4, memory=16, storage=10),
        (Executor(cls="train", name="diloco-transformer"),),
        160.0,
        time.time() + 60,
    )


def _publish_hypha(address: str, count: int, start: float) -> None:
    async def run() -> None:
        with Endpoint(SCHED) as node, node.publisher(dial=[address]) as pub:
            # Sealed before the clock starts, as the bare publisher's frames are built before
            # it: the figure is the relay's (gateway and worker verifying), not the signing.
            envelopes = [node.seal(advert(n)) for n in range(count)]
            await trio.sleep(max(0.0, start - time.time()))
            for envelope in envelopes:
                await pub.relay(envelope)
            await trio.sleep(1.0)

    trio.run(run)


def _publish_bare(address: str, count: int, start: float, size: int) -> None:
    async def run() -> None:
        with pynng.Pub0(dial=address) as pub:
            await trio.sleep(max(0.0, start - time.time()))
            body = TOPIC + bytes(size)
            for _ in range(count):
                await pub.asend(body)
            await trio.sleep(1.0)

    trio.run(run)


def _relay_bare(ingest: str, publish: str, ready: mp.Event) -> None:  # type: ignore[name-defined]
    async def run() -> None:
        with (
            pynng.Sub0(listen=ingest, recv_buffer_size=1024) as sub,
            pynng.Pub0(listen=publish) as pub,
        ):
            sub.subscribe(TOPIC)
            ready.set()
            while True:
                await pub.asend(await sub.arecv())

    trio.run(run)


async def receive(sub_next, count: int, window: float) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    got = 0
    first = last = 0.0
    with trio.move_on_after(window):
        while got < count:
            await sub_next()
            last = time.perf_counter()
            if got == 0:
                first = last
            got += 1
    return got, max(last - first, 1e-9)


def run_hypha(count: int, tmp: Path) -> tuple[float, int, str]:
    gw, addresses = start_gateway(tmp)
    ingest, publish = addresses.ingest, addresses.publish

    async def main() -> tuple[int, float, int]:
        with Endpoint(WORKER) as node, node.subscribe(dial=[publish]) as sub:
            await trio.sleep(0.3)
            start = time.time() + 0.5
            proc = MP.Process(target=_publish_hypha, args=(ingest, count, start))
            proc.start()
            got, span = await receive(sub.receive, count, 30)
            proc.join()
            return got, span, node.stats().dropped

    got, span, dropped = trio.run(main)
    gw.terminate()
    _, err = gw.communicate(timeout=10)
    return got / span, count - got, f"worker counted {dropped} dropped; {err.strip()}"


def run_bare(count: int, size: int) -> tuple[float, int]:
    ingest, publish = "tcp://127.0.0.1:17931", "tcp://127.0.0.1:17932"
    ready = MP.Event()
    relay = MP.Process(target=_relay_bare, args=(ingest, publish, ready), daemon=True)
    relay.start()
    ready.wait(10)

    async def main() -> tuple[int, float]:
        with pynng.Sub0(dial=publish, recv_buffer_size=1024) as sub:
            sub.subscribe(TOPIC)
            await trio.sleep(0.3)
            start = time.time() + 0.5
            proc = MP.Process(target=_publish_bare, args=(ingest, count, start, size))
            proc.start()
            result = await receive(sub.arecv, count, 30)
            proc.join()
            return result

    got, span = trio.run(main)
    relay.terminate()
    relay.join()
    return got / span, count - got


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    size = len(Endpoint(SCHED).seal(advert(0))) + 8  # envelope plus the relay frame number
    hypha_rates, bare_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            b, b_lost = run_bare(args.count, size)
            h, h_lost, note = run_hypha(args.count, Path(tmp))
            bare_rates.append(b)
            hypha_rates.append(h)
            print(
                f"rep {rep}: bare {b:,.0f}/s (lost {b_lost}, silently); hypha-sm {h:,.0f}/s "
                f"(lost {h_lost}: {note})",
                flush=True,
            )
    ratio = statistics.median(h / b for h, b in zip(hypha_rates, bare_rates, strict=True))
    print(f"\nrelay, {size}-byte frames, {args.count:,} per rep, median of {args.reps}:")
    print(f"  bare pynng relay     {statistics.median(bare_rates):>10,.0f} ads/s received")
    print(f"  hypha-sm gateway     {statistics.median(hypha_rates):>10,.0f} ads/s received")
    print(f"  ratio {ratio:.0%} (target >= 50%): {'PASS' if ratio >= 0.5 else 'MISS'}")


if __name__ == "__main__":
    main()
