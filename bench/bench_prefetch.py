"""How long a training job waits for each slice, with and without prefetch, on loopback.

Real parts: a gateway, a data node serving a prepared dataset, the scheduler handing out slices
with grants, and a worker's slice fetcher and bulk server (the job's bridge is left out: the
"job" is a loop that asks the fetcher for the next slice, then "trains" for ``train`` seconds,
a sleep of three times the steady wait without prefetch). For slices of about 1 MiB and 32 MiB it measures the
job's wait per slice after the first, without prefetch (depth 0, the original's behaviour) and
with the default depth 1, in the same run, and prints the ratio.

Target (issue 12): with prefetch, the wait per slice after the first is under 10 % of the wait
without it.

Usage: python bench/bench_prefetch.py [--slices N] [--repeat R]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypha_sm.cli import main as cli  # noqa: E402
from hypha_sm.config.data import DataNodeSettings  # noqa: E402
from hypha_sm.config.scheduler import JobSettings  # noqa: E402
from hypha_sm.net.discovery import Gateways  # noqa: E402
from hypha_sm.net.transport import Endpoint  # noqa: E402
from hypha_sm.roles.data.node import DataNode, load_datasets, plan_of  # noqa: E402
from hypha_sm.roles.gateway.gateway import Gateway  # noqa: E402
from hypha_sm.roles.scheduler.scheduler import Scheduler  # noqa: E402
from hypha_sm.roles.worker.peers import PeerFiles  # noqa: E402
from hypha_sm.roles.worker.slices import SliceFetcher  # noqa: E402
from hypha_sm.wire import messages as m  # noqa: E402
from hypha_sm.wire.envelope import Opened  # noqa: E402
from hypha_sm.wire.identity import Identity  # noqa: E402

LOOPBACK = "tcp://127.0.0.1:0"
SEQ_LEN = 128
SAMPLE_BYTES = SEQ_LEN * 8 * 3  # input_ids, attention_mask, labels as int64


def prepare(directory: Path, name: str, slice_mib: int, slices: int) -> Path:
    """A byte-level text dataset whose slices hold about ``slice_mib`` MiB each."""
    per_slice = max(1, slice_mib * (1 << 20) // SAMPLE_BYTES)
    text = random.Random(0).randbytes(per_slice * SEQ_LEN * (slices + 1) + 1)
    corpus = directory / f"{name}.txt"
    corpus.write_bytes(text)
    out = directory / name
    args = [
        "--samples-per-slice",
        str(per_slice),
        "--seq-len",
        str(SEQ_LEN),
        "--eval-fraction",
        "0",
    ]
    assert cli(["data", "prepare", "--text", str(corpus), "--out", str(out), *args]) == 0
    return out


async def waits(dataset: Path, count: int, prefetch: int, train: float, tmp: Path) -> list[float]:
    """The job's wait for each of ``count`` slices."""
    gateway_id, dn_id, sched_id, worker_id = (
        Identity.from_seed(bytes([n]) * 32) for n in (1, 2, 3, 4)
    )
    gateway = Gateway(Endpoint(gateway_id), listen=LOOPBACK, ingest=LOOPBACK, publish=LOOPBACK)
    jobs: list[str] = []

    async def answer(opened: Opened) -> m.Message:
        message = opened.message
        if isinstance(message, m.RenewLease):
            return m.LeaseRenewed(message.lease_id, time.time() + 30)
        if isinstance(message, m.DispatchJob):
            jobs.append(message.job_id)
            return m.JobDispatched(message.job_id, message.lease_id, time.time() + 30)
        return m.Refused("unsupported")

    name = dataset.name
    with (
        gateway.transport,
        Endpoint(dn_id) as dn,
        Endpoint(sched_id) as sched,
        Endpoint(worker_id) as worker,
    ):
        async with trio.open_nursery() as nursery:
            gw = await nursery.start(gateway.run)
            config = DataNodeSettings(
                node_key=tmp / "k.pem", gateway_addresses=[gw.listen], datasets=[dataset]
            )
            datasets = load_datasets(config.datasets)
            node = DataNode(
                dn, datasets, plan_of(config, datasets), gateways=[gw.listen], address=LOOPBACK
            )
            await nursery.start(node.run)
            worker_address = await nursery.start(worker.serve, LOOPBACK, answer)
            job = JobSettings(
                executor={"class": "train", "name": "x"},
                resources={"cpu": 1, "memory": 1},
                workers=1,
                bid=100.0,
                renew_interval=2.0,
                timeout=600.0,
                dataset=name,
            )
            scheduler = Scheduler(sched, job, gateways=[gw.listen], address=LOOPBACK)
            with worker.subscribe(dial=[gw.publish]) as sub:
                sched_address = await nursery.start(scheduler.run)
                ad = (await sub.receive()).message
                assert isinstance(ad, m.Advertisement)
                offer = m.WorkerOffer(
                    "lease", ad.request_id, 90.0, ad.resources, time.time() + 1, worker_address
                )
                await worker.request(sched_address, offer)
            while not jobs:  # noqa: ASYNC110
                await trio.sleep(0.01)
            (job_id,) = jobs
            await worker.request(sched_address, m.JobStatus(job_id, "running"))
            files = PeerFiles(worker_id, worker, Gateways(worker, [gw.listen]), tmp / "staging")
            bulk = await nursery.start(files.serve, LOOPBACK)
            fetcher = SliceFetcher(
                worker,
                Gateways(worker, [gw.listen]),
                files,
                bulk_address=lambda: str(bulk),
                scheduler_of=lambda _: (str(sched_id.peer_id), sched_address),
                nursery=nursery,
                prefetch=prefetch,
            )
            artifacts = tmp / f"artifacts-{prefetch}"
            artifacts.mkdir()
            waited = []
            for _ in range(count):
                start = time.perf_counter()
                (got,) = await fetcher.fetch(job_id, name, artifacts, None)
                waited.append(time.perf_counter() - start)
                got.path.unlink()
                await trio.sleep(train)  # "training" on the slice
            await fetcher.job_ended(job_id, finished=False)
            nursery.cancel_scope.cancel()
    return waited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=6, help="slices per measurement")
    parser.add_argument("--repeat", type=int, default=2, help="alternating pairs per size")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}; slices per run {args.slices}; pairs {args.repeat}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for mib in (1, 32):
            dataset = prepare(tmp, f"ds{mib}", mib, 4)
            # Train long enough to hide one transfer, no longer: three times the steady wait
            # without prefetch, measured first (the first fetch, "cold", also waits for the
            # scheduler's dataset lookup and is left out of every figure below).
            probe = trio.run(waits, dataset, 4, 0, 0.01, _fresh(tmp))
            cold = probe[0]
            train = max(0.02, 3.0 * statistics.median(probe[1:]))
            without, with_ = [], []
            for _ in range(args.repeat):  # alternate the pair: the machine's noise hits both
                without += trio.run(waits, dataset, args.slices, 0, train, _fresh(tmp))[1:]
                with_ += trio.run(waits, dataset, args.slices, 1, train, _fresh(tmp))[1:]
            rows.append((mib, cold, train, statistics.median(without), statistics.median(with_)))
    print(
        f"{'slice':>8} {'cold fetch':>11} {'train':>8} {'wait, no prefetch':>18} {'wait, prefetch 1':>17} {'ratio':>8}  target < 10 %"
    )
    for mib, cold, train, without, with_ in rows:
        ratio = with_ / without if without else float("nan")
        verdict = "PASS" if ratio < 0.10 else "MISS"
        print(
            f"{mib:>5} MiB {cold * 1e3:>9.1f} ms {train * 1e3:>6.0f} ms {without * 1e3:>15.2f} ms {with_ * 1e3:>14.2f} ms {ratio:>7.1%}  {verdict}"
        )


_counter = 0


def _fresh(tmp: Path) -> Path:
    global _counter
    _counter += 1
    path = tmp / f"run-{_counter}"
    path.mkdir()
    return path


if __name__ == "__main__":
    main()
