"""The NNG transport against bare pynng doing the same job, in the same run, over loopback.

Run from the repository root:

    python bench/bench_net.py            # full run (~3 min)
    python bench/bench_net.py --quick    # smoke test (~25 s)

1. Renew round trip, tcp://127.0.0.1: ``Endpoint.request(RenewLease)`` answered by
   ``Endpoint.serve`` with a ``LeaseRenewed`` through a session (one signed handshake during
   the warm-up, then a ChaCha20-Poly1305 frame each way: ``net.session``), against bare pynng
   Req0/Rep0 under trio (one context each side, ``asend``/``arecv``) moving payloads of the
   signed envelopes' sizes (larger than the sealed frames). Also shown: the transport with
   sessions off (both envelopes signed and verified), and bare pynng plus the four Ed25519
   operations inline (seal and open on both sides, no transport code): the floor signing
   every message imposes.
2. Advertisement throughput, tcp://127.0.0.1: ``Publisher.publish`` (seals each one) to a
   ``Subscription`` (verifies each one), against bare Pub0/Sub0 under trio with ``asend`` /
   ``arecv`` and frames of the same size (the target's baseline), bare Sub0 that also drains
   queued frames without waiting as ``Subscription`` does, and bare plus inline signing and
   verification (the floor the signatures impose). The publisher sends as fast as it can; the rate is
   what the subscriber received per second (first to last arrival). NNG drops when the
   subscriber lags; the transport counts those from the frame numbers (``dropped``); a loss at
   the very end shows only when a later frame comes, so it is reported separately (tail).

Both figures run in two layouts: ``same`` (client and server, or publisher and subscriber, in
one trio loop: total CPU per message) and ``split`` (the server or publisher in a child
process: what two nodes see). Every figure is the median of several repetitions; each
repetition runs the baseline and the transport back to back.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import pynng
import trio

from hypha_sm.net import relay
from hypha_sm.net.transport import DRAIN_BATCH, Endpoint, NetConfig
from hypha_sm.wire.envelope import Opened, Opener, seal
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import (
    TOPIC_WORKER,
    Advertisement,
    Executor,
    LeaseRenewed,
    Message,
    RenewLease,
    Resources,
)

perf = time.perf_counter
SERVER = Identity.from_seed(b"s" * 32)
CLIENT = Identity.from_seed(b"c" * 32)
LEASE = "lease-7f3a9c2e41b84d5fa0c6e19b"
BUFFER = 1024  # pub/sub queue per connection, both sides, for bare and transport alike


@dataclass(frozen=True)
class Sizes:
    rtt_reps: int
    rtt_n: int
    pub_reps: int
    pub_n: int


FULL = Sizes(rtt_reps=5, rtt_n=2000, pub_reps=5, pub_n=20_000)
QUICK = Sizes(rtt_reps=2, rtt_n=400, pub_reps=2, pub_n=4000)


def renew_reply(opened: Opened) -> Message:
    msg = opened.message
    assert isinstance(msg, RenewLease)
    return LeaseRenewed(msg.lease_id, expires=time.time() + 60)


async def renew_handler(opened: Opened) -> Message:
    return renew_reply(opened)


def envelope_sizes() -> tuple[int, int]:
    request = seal(CLIENT, RenewLease(LEASE), time.time(), os.urandom(16))
    reply = seal(SERVER, LeaseRenewed(LEASE, expires=time.time() + 60), time.time(), bytes(16))
    return len(request), len(reply)


def advertisement(i: int) -> Advertisement:
    return Advertisement(
        request_id=f"req-{i:08d}",
        scheduler="12D3KooWExampleSchedulerPeerIdxxxxxxxxxxxxxxxxxxxxx",
        reply_address="tcp://10.0.0.7:7000",
        resources=Resources(gpu=24.0, cpu=8.0, memory=64.0, storage=100.0),
        executors=(Executor("train", "diloco-transformer"),),
        bid=1.25,
        expires=time.time() + 300,
    )


# -- servers (run in this process or a child) ---------------------------------------------------


async def serve_bare(address: str, reply_size: int, started: Callable[[str], None]) -> None:
    reply = os.urandom(reply_size)
    with pynng.Rep0(recv_max_size=2 << 20) as sock:
        url = sock.listen(address).url
        ctx = sock.new_context()
        try:
            started(url)
            while True:
                await ctx.arecv()
                await ctx.asend(reply)
        finally:
            ctx.close()


async def serve_floor(address: str, reply_size: int, started: Callable[[str], None]) -> None:
    opener = Opener()
    with pynng.Rep0(recv_max_size=2 << 20) as sock:
        url = sock.listen(address).url
        ctx = sock.new_context()
        try:
            started(url)
            while True:
                opened = opener.open(await ctx.arecv(), time.time())
                assert isinstance(opened, Opened)
                answer = seal(SERVER, renew_reply(opened), time.time(), os.urandom(16))
                await ctx.asend(answer)
        finally:
            ctx.close()


async def serve_transport(address: str, reply_size: int, started: Callable[[str], None]) -> None:
    with Endpoint(SERVER, NetConfig()) as server:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(server.serve, address, renew_handler)
            started(url)


SERVERS: dict[str, Callable[[str, int, Callable[[str], None]], Awaitable[None]]] = {
    "bare": serve_bare,
    "floor": serve_floor,
    "transport": serve_transport,
    "signed": serve_transport,
}


def _child_server(kind: str, reply_size: int, urls: Any) -> None:
    trio.run(SERVERS[kind], "tcp://127.0.0.1:0", reply_size, urls.put)


# -- clients ------------------------------------------------------------------------------------


async def client_bare(url: str, n: int, request_size: int) -> list[float]:
    payload = os.urandom(request_size)
    lat = []
    with pynng.Req0(dial=url, recv_max_size=2 << 20) as sock:
        ctx = sock.new_context()
        try:
            for _ in range(n):
                t0 = perf()
                await ctx.asend(payload)
                await ctx.arecv()
                lat.append(perf() - t0)
        finally:
            ctx.close()
    return lat


async def client_floor(url: str, n: int, request_size: int) -> list[float]:
    opener = Opener()
    lat = []
    with pynng.Req0(dial=url, recv_max_size=2 << 20) as sock:
        ctx = sock.new_context()
        try:
            for _ in range(n):
                t0 = perf()
                await ctx.asend(seal(CLIENT, RenewLease(LEASE), time.time(), os.urandom(16)))
                opened = opener.open(await ctx.arecv(), time.time())
                lat.append(perf() - t0)
                assert isinstance(opened, Opened)
        finally:
            ctx.close()
    return lat


async def client_transport(
    url: str, n: int, request_size: int, *, sessions: bool = True
) -> list[float]:
    lat = []
    with Endpoint(CLIENT, NetConfig(sessions=sessions)) as client:
        for _ in range(n):
            t0 = perf()
            answer = await client.request(url, RenewLease(LEASE), expect=SERVER.peer_id)
            lat.append(perf() - t0)
            assert isinstance(answer.message, LeaseRenewed)
    return lat


async def client_signed(url: str, n: int, request_size: int) -> list[float]:
    return await client_transport(url, n, request_size, sessions=False)


CLIENTS = {
    "bare": client_bare,
    "floor": client_floor,
    "transport": client_transport,
    "signed": client_signed,
}


async def rtt_same(kind: str, n: int, sizes: tuple[int, int]) -> list[float]:
    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(_started_adapter, SERVERS[kind], sizes[1])
        lat = await CLIENTS[kind](url, n, sizes[0])
        nursery.cancel_scope.cancel()
    return lat


async def _started_adapter(
    server: Callable[[str, int, Callable[[str], None]], Awaitable[None]],
    reply_size: int,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    await server("tcp://127.0.0.1:0", reply_size, task_status.started)


def rtt_split(kind: str, n: int, sizes: tuple[int, int]) -> list[float]:
    ctx = mp.get_context("spawn")
    urls = ctx.Queue()
    child = ctx.Process(target=_child_server, args=(kind, sizes[1], urls), daemon=True)
    child.start()
    try:
        url = urls.get(timeout=30)
        return trio.run(CLIENTS[kind], url, n, sizes[0])
    finally:
        child.terminate()
        child.join()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- pub/sub ------------------------------------------------------------------------------------


@dataclass
class PubRun:
    sent: int
    received: int
    rate: float  # received per second, first to last arrival
    dropped: int  # counted from gaps in the numbering (floor and transport)


async def _until_connected(sock: pynng.Socket) -> None:
    while not sock.pipes:  # noqa: ASYNC110 - NNG has no event for it
        await trio.sleep(0.01)
    await trio.sleep(0.2)


async def publish_bare(url: str, n: int, frame_size: int) -> None:
    body = os.urandom(frame_size - relay.HEADER)
    with pynng.Pub0(send_buffer_size=BUFFER) as sock:
        sock.dial(url, block=False)
        await _until_connected(sock)
        for i in range(1, n + 1):
            await sock.asend(relay.frame(i, body))
        await trio.sleep(0.5)  # let the last frames leave before closing


async def publish_floor(url: str, n: int, frame_size: int) -> None:
    ads = [advertisement(i) for i in range(n)]
    with pynng.Pub0(send_buffer_size=BUFFER) as sock:
        sock.dial(url, block=False)
        await _until_connected(sock)
        for i, ad in enumerate(ads, 1):
            envelope = seal(SERVER, ad, time.time(), os.urandom(16))
            await sock.asend(relay.frame(i, envelope))
        await trio.sleep(0.5)


async def publish_transport(url: str, n: int, frame_size: int) -> None:
    ads = [advertisement(i) for i in range(n)]
    with (
        Endpoint(SERVER, NetConfig(pubsub_buffer=BUFFER)) as endpoint,
        endpoint.publisher(dial=[url]) as pub,
    ):
        while not pub.connections:  # noqa: ASYNC110 - NNG has no event for it
            await trio.sleep(0.01)
        await trio.sleep(0.2)
        for ad in ads:
            await pub.publish(ad)
        await trio.sleep(0.5)


PUBLISHERS = {
    "bare": publish_bare,
    "bare_drain": publish_bare,
    "floor": publish_floor,
    "transport": publish_transport,
}


def _child_publisher(kind: str, url: str, n: int, frame_size: int) -> None:
    trio.run(PUBLISHERS[kind], url, n, frame_size)


class Receiver:
    """The subscribing side of one run.

    ``bare``: Sub0 ``arecv`` per frame. ``bare_drain``: ``arecv``, then the frames already
    queued taken with non-blocking ``recv`` (what ``Subscription`` does). ``floor``: ``arecv``
    plus unframing and opening inline. ``transport``: ``Subscription.receive``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.dropped = 0
        if kind == "transport":
            self.endpoint = Endpoint(CLIENT, NetConfig(pubsub_buffer=BUFFER))
            self.sub = self.endpoint.subscribe(listen=["tcp://127.0.0.1:0"])
            self.url = self.sub.addresses[0]
        else:
            self.sock = pynng.Sub0(recv_buffer_size=BUFFER, recv_max_size=2 << 20)
            self.sock.subscribe(TOPIC_WORKER)
            self.url = self.sock.listen("tcp://127.0.0.1:0").url
            self.opener = Opener()
            self.last = 0
            self.queued = 0

    async def one(self) -> None:
        if self.kind == "transport":
            await self.sub.receive()
        elif self.kind == "bare":
            await self.sock.arecv()
        elif self.kind == "bare_drain":
            if self.queued:
                self.queued -= 1
                await trio.lowlevel.checkpoint()
                return
            await self.sock.arecv()
            for _ in range(DRAIN_BATCH - 1):
                try:
                    self.sock.recv(block=False)
                except pynng.TryAgain:
                    break
                self.queued += 1
        else:
            framed = relay.unframe(await self.sock.arecv())
            assert framed is not None
            seq, envelope = framed
            if self.last and seq > self.last + 1:
                self.dropped += seq - self.last - 1
            self.last = seq
            assert isinstance(self.opener.open(envelope, time.time()), Opened)

    def close(self) -> None:
        if self.kind == "transport":
            self.dropped = self.endpoint.stats().dropped
            self.sub.close()
            self.endpoint.close()
        else:
            self.sock.close()


async def receive_all(receiver: Receiver, n: int, idle: float = 1.0) -> tuple[int, float]:
    received, first, last = 0, 0.0, 0.0
    while received < n:
        with trio.move_on_after(idle):
            await receiver.one()
            last = perf()
            first = first or last
            received += 1
            continue
        break
    return received, last - first


async def pubsub_once(kind: str, n: int, frame_size: int, split: bool) -> PubRun:
    receiver = Receiver(kind)
    try:
        if split:
            ctx = mp.get_context("spawn")
            args = (kind, receiver.url, n, frame_size)
            child = ctx.Process(target=_child_publisher, args=args, daemon=True)
            child.start()
            try:
                received, span = await receive_all(receiver, n)
            finally:
                await trio.to_thread.run_sync(child.join, 30)
                if child.is_alive():
                    child.terminate()
                    child.join()
        else:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(PUBLISHERS[kind], receiver.url, n, frame_size)
                received, span = await receive_all(receiver, n)
    finally:
        receiver.close()
    rate = (received - 1) / span if received > 1 and span > 0 else 0.0
    return PubRun(n, received, rate, receiver.dropped)


def frame_size() -> int:
    return relay.HEADER + len(seal(SERVER, advertisement(0), time.time(), os.urandom(16)))


# -- report -------------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    measured: str
    target: str
    ok: bool | None
    baseline: str
    ratio: str


def print_table(rows: list[Row]) -> None:
    headers = ("figure", "measured", "target", "", "baseline (same run)", "ratio")
    cells = [
        (
            r.figure,
            r.measured,
            r.target,
            "-" if r.ok is None else ("PASS" if r.ok else "MISS"),
            r.baseline,
            r.ratio,
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def environment() -> str:
    load = os.getloadavg()
    return (
        f"python {platform.python_version()} on {platform.machine()} {platform.system()}, "
        f"{os.cpu_count()} CPUs, loadavg {load[0]:.2f}; pynng {version('pynng')}, "
        f"trio {version('trio')}, cryptography {version('cryptography')}, "
        f"msgspec {version('msgspec')}"
    )


def bench_rtt(sizes: Sizes, layout: str, rows: list[Row]) -> None:
    env_sizes = envelope_sizes()
    p50: dict[str, list[float]] = {k: [] for k in CLIENTS}
    p99: dict[str, list[float]] = {k: [] for k in CLIENTS}
    warm = max(50, sizes.rtt_n // 10)
    for rep in range(sizes.rtt_reps):
        for kind in CLIENTS:
            if layout == "same":
                lat = trio.run(rtt_same, kind, sizes.rtt_n + warm, env_sizes)
            else:
                lat = rtt_split(kind, sizes.rtt_n + warm, env_sizes)
            lat = lat[warm:]
            p50[kind].append(percentile(lat, 0.50) * 1e6)
            p99[kind].append(percentile(lat, 0.99) * 1e6)
        print(
            f"  renew {layout} rep {rep + 1}: "
            + ", ".join(f"{k} p50 {p50[k][-1]:.0f} µs p99 {p99[k][-1]:.0f} µs" for k in CLIENTS),
            file=sys.stderr,
        )
    med = {k: statistics.median(v) for k, v in p50.items()}
    med99 = {k: statistics.median(v) for k, v in p99.items()}
    ratio = med["transport"] / med["bare"]
    rows.append(
        Row(
            f"1 renew RTT p50, tcp, {layout} ({env_sizes[0]}/{env_sizes[1]} B)",
            f"{med['transport']:.0f} µs",
            "<= 1.5x bare",
            ratio <= 1.5,
            f"bare {med['bare']:.0f} µs; bare+sign/verify {med['floor']:.0f} µs; "
            f"signed envelopes (no session) {med['signed']:.0f} µs",
            f"{ratio:.2f}x (signed {med['signed'] / med['bare']:.2f}x, "
            f"floor of signing {med['floor'] / med['bare']:.2f}x)",
        )
    )
    rows.append(
        Row(
            f"1 renew RTT p99, tcp, {layout}",
            f"{med99['transport']:.0f} µs",
            "(report)",
            None,
            f"bare {med99['bare']:.0f} µs; bare+sign/verify {med99['floor']:.0f} µs",
            f"{med99['transport'] / med99['bare']:.2f}x",
        )
    )


def bench_pubsub(sizes: Sizes, layout: str, rows: list[Row]) -> None:
    size = frame_size()
    runs: dict[str, list[PubRun]] = {k: [] for k in PUBLISHERS}
    for rep in range(sizes.pub_reps):
        for kind, done in runs.items():
            run = trio.run(pubsub_once, kind, sizes.pub_n, size, layout == "split")
            done.append(run)
            print(
                f"  pubsub {layout} rep {rep + 1} {kind}: {run.rate:,.0f}/s, "
                f"received {run.received}/{run.sent}, gap-counted drops {run.dropped}",
                file=sys.stderr,
            )
    rate = {k: statistics.median(r.rate for r in v) for k, v in runs.items()}
    lost = {k: statistics.median(r.sent - r.received for r in v) for k, v in runs.items()}
    counted = statistics.median(r.dropped for r in runs["transport"])
    # The target's baseline is bare pynng with the same async API: asend/arecv per frame.
    # bare+drain (arecv, then take what is queued without waiting, as Subscription does) is
    # shown too, so that the gain from draining is not mistaken for a cheap transport.
    ratio = rate["transport"] / rate["bare"]
    rows.append(
        Row(
            f"2 ads/s signed+verified, tcp, {layout} ({size} B frames)",
            f"{rate['transport']:,.0f}/s",
            ">= 50% of bare",
            ratio >= 0.5,
            f"bare {rate['bare']:,.0f}/s; bare+drain {rate['bare_drain']:,.0f}/s; "
            f"bare+sign/verify {rate['floor']:,.0f}/s",
            f"{ratio:.0%} (vs bare+drain {rate['transport'] / rate['bare_drain']:.0%}; "
            f"floor {rate['floor'] / rate['bare']:.0%})",
        )
    )
    rows.append(
        Row(
            f"2 lost of {sizes.pub_n:,} sent flat out, {layout}",
            f"{lost['transport']:,.0f} (gap-counted {counted:,.0f})",
            "counted",
            None,
            f"bare lost {lost['bare']:,.0f} (silently)",
            "",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--layout", choices=["same", "split", "both"], default="both")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    layouts = ["same", "split"] if args.layout == "both" else [args.layout]
    rows: list[Row] = []
    t0 = perf()
    for layout in layouts:
        bench_rtt(sizes, layout, rows)
    for layout in layouts:
        bench_pubsub(sizes, layout, rows)
    print(environment())
    print(f"sizes: {sizes}; took {perf() - t0:.0f} s")
    print_table(rows)


if __name__ == "__main__":
    main()
