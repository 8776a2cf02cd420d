"""The scheduler role against real workers: a real gateway, NNG sockets, processes and bridges."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

from hypha_sm.config.scheduler import JobExecutor, JobSettings
from hypha_sm.config.worker import ExecutorSettings, WorkerSettings
from hypha_sm.net.keys import create_key_file
from hypha_sm.net.transport import Endpoint
from hypha_sm.roles.scheduler.scheduler import Outcome, Scheduler
from hypha_sm.roles.worker.run import run_worker
from hypha_sm.wire import messages as m
from hypha_sm.wire.identity import Identity
from tests.netkit import running_gateway, wait_healthy

pytestmark = pytest.mark.net

SCHED = Identity.from_seed(bytes([71]) * 32)
GATEWAY = Identity.from_seed(bytes([72]) * 32)
JOB = Path(__file__).resolve().parent / "fixtures" / "bridge_job.py"


def worker_settings(
    tmp_path: Path,
    name: str,
    gateway: str,
    mode: str,
    price: float = 100.0,
    strategy: str = "flexible",
    file_roots: list[Path] | None = None,
) -> WorkerSettings:
    create_key_file(tmp_path / f"{name}.pem")
    return WorkerSettings(
        node_key=tmp_path / f"{name}.pem",
        gateway_addresses=[gateway],
        listen_addresses=["tcp://127.0.0.1:0"],
        work_dir=tmp_path / name,
        resources={"cpu": 1, "memory": 1, "storage": 1},
        offer={"price": price, "floor": 50, "strategy": strategy},
        fetch_file_roots=file_roots or [],
        executors=[
            {
                "class": "train",
                "name": "bridge-job",
                "runtime": "process",
                "cmd": sys.executable,
                "args": [str(JOB), mode],
            }
        ],
    )


def job(workers: int, **spec: object) -> JobSettings:
    return JobSettings(
        workers=workers,
        executor={"class": "train", "name": "bridge-job"},
        resources={"cpu": 1, "memory": 1},
        bid=150,
        spec=spec,
        advertise_timeout=20,
        renew_interval=1.0,
        timeout=60,
    )


def unacknowledged_exits(worker: WorkerSettings) -> int:
    """Jobs of ``worker`` whose process exited and whose final status is not yet acknowledged
    (or given up on), from its event log; 1 while a line is half written."""
    exited = reported = 0
    for log in (worker.work_dir / "events").glob("*.jsonl"):
        for line in log.read_text().splitlines()[1:]:
            try:
                event = json.loads(line).get("event", {})
            except ValueError:
                return 1
            kind = event.get("type")
            if kind == "job_exited":
                exited += 1
            elif kind in ("status_delivered", "status_failed") and event["status"] != "running":
                reported += 1
    return max(0, exited - reported)


async def run_job(
    tmp_path: Path, workers: list[WorkerSettings], settings: JobSettings
) -> tuple[Outcome, list[tuple[str, m.ProgressKind]]]:
    progress: list[tuple[str, m.ProgressKind]] = []
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        with Endpoint(SCHED) as transport:
            addresses = []
            for w in workers:
                w.gateway_addresses = [gw.listen]
                addresses.append(await nursery.start(run_worker, w))
            with trio.fail_after(10):
                for address in addresses:
                    await wait_healthy(transport, address)
            scheduler = Scheduler(
                transport,
                settings,
                gateways=[gw.listen],
                address="tcp://127.0.0.1:0",
                on_progress=lambda p, kind: progress.append((p.worker, kind)),
            )
            with trio.fail_after(90):
                outcome = await scheduler.run()
            # The scheduler returns on the last status it takes; each worker still has to take
            # the acknowledgement before its job counts as finished (its job span, its metrics).
            with trio.move_on_after(10):
                while any(unacknowledged_exits(w) for w in workers):  # noqa: ASYNC110 (a file)
                    await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    return outcome, progress


async def test_the_scheduler_runs_one_job_on_two_workers_and_hears_their_progress(
    tmp_path: Path,
) -> None:
    """Advertise → offers → accept → renew → dispatch → progress → finished on both workers."""
    workers = [
        worker_settings(tmp_path, "a", "tcp://127.0.0.1:1", "progress"),
        worker_settings(tmp_path, "b", "tcp://127.0.0.1:1", "progress"),
    ]
    outcome, progress = await run_job(tmp_path, workers, job(2, rounds=2))
    assert outcome.ok, outcome
    assert len({p.worker for p in outcome.placements}) == 2
    assert [p.phase for p in outcome.placements] == ["finished", "finished"]
    for placement in outcome.placements:
        rounds = [
            k.round for w, k in progress if w == placement.worker and isinstance(k, m.RoundMetrics)
        ]
        assert rounds == [1, 2]
    # Leases were released with their jobs: nothing left reserved in either work dir.
    for name in ("a", "b"):
        assert not list((tmp_path / name).glob("hypha-*"))


async def test_the_cheapest_offer_wins_when_more_workers_offer_than_needed(
    tmp_path: Path,
) -> None:
    """Two `whole` workers counter-offer above the bid; the job needs one; the cheaper wins."""
    workers = [
        worker_settings(tmp_path, "dear", "tcp://127.0.0.1:1", "progress", 140, "whole"),
        worker_settings(tmp_path, "cheap", "tcp://127.0.0.1:1", "progress", 120, "whole"),
    ]
    settings = job(1, rounds=1)
    settings.bid = 100
    settings.max_price = 145
    outcome, _ = await run_job(tmp_path, workers, settings)
    assert outcome.ok, outcome
    (chosen,) = outcome.placements
    assert chosen.price == 120


async def test_too_few_workers_fails_with_a_reason_instead_of_waiting_forever(
    tmp_path: Path,
) -> None:
    """Three workers wanted, one exists: the outcome says so after advertise_timeout."""
    settings = job(3)
    settings.advertise_timeout = 2.0
    solo = worker_settings(tmp_path, "solo", "tcp://127.0.0.1:1", "progress")
    outcome, _ = await run_job(tmp_path, [solo], settings)
    assert not outcome.ok
    assert "only 1 of 3 workers accepted" in outcome.reason
    assert [p.phase for p in outcome.placements] == ["released"]  # let go on purpose


def exchange(tmp_path: Path, corpus: str) -> tuple[list[WorkerSettings], str]:
    """Two workers that run the exchange job, and the file:// corpus they may fetch."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.txt").write_text(corpus)
    workers = [
        worker_settings(tmp_path, n, "tcp://127.0.0.1:1", "exchange", file_roots=[data])
        for n in ("a", "b")
    ]
    return workers, f"file://{data / 'corpus.txt'}"


async def test_jobs_fetch_an_artifact_report_progress_and_send_each_other_files(
    tmp_path: Path,
) -> None:
    """Each job fetches a file:// artifact, posts status, sends a file to the other worker's
    job through the bulk channel, and receives the other's file on its SSE stream."""
    workers, artifact = exchange(tmp_path, "to be or not to be\n" * 100)
    data = tmp_path / "data"
    settings = job(2, rounds=2, artifact=artifact)
    outcome, progress = await run_job(tmp_path, workers, settings)
    assert outcome.ok, outcome
    reports = [json.loads((data / f"exchange-{i}.json").read_text()) for i in (0, 1)]
    by_index = {p_.worker: i for i, p_ in enumerate(outcome.placements)}
    for report in reports:
        me = outcome.placements[report["index"]].worker
        (other,) = [w for w in by_index if w != me]
        assert report["fetched"][0]["size"] == len("to be or not to be\n" * 100)
        assert report["reply-1"] == {"type": "Ok"}
        assert report["sent"]["results"] == {other: "delivered"}
        (got,) = report["received"]
        assert got["from_peer"] == other
        assert got["path"].startswith(f"incoming/{other}.result-")
        assert got["text"] == f"worker {by_index[other]} read 1900 characters\n"
    assert len([k for _, k in progress if isinstance(k, m.RoundMetrics)]) == 4


async def test_hostile_bridge_requests_get_4xx_and_the_job_goes_on(tmp_path: Path) -> None:
    """Path traversal, an absolute path, a 2 MiB body, bad JSON and a bad URI are refused with
    JSON errors while the job runs; the job then reports progress and finishes."""
    out = tmp_path / "hostile.json"
    worker = worker_settings(tmp_path, "h", "tcp://127.0.0.1:1", "hostile")
    outcome, progress = await run_job(tmp_path, [worker], job(1, rounds=1, out=str(out)))
    assert outcome.ok, outcome
    results = json.loads(out.read_text())
    assert {k: v["status"] for k, v in results.items()} == {
        "traversal": 400,
        "absolute": 400,
        "huge": 413,
        "bad_json": 400,
        "wrong_shape": 400,
    }
    assert all(set(v["body"]) == {"code", "detail"} for v in results.values())
    assert [k for _, k in progress] == [m.RoundMetrics(1, {"loss": 1.0})]


async def test_a_non_diloco_spec_for_the_parameter_server_is_refused_with_a_clear_reason(
    tmp_path: Path,
) -> None:
    """A spec that is not a DiLoCo parameter-server job is refused at start, saying why."""
    worker = worker_settings(tmp_path, "ps", "tcp://127.0.0.1:1", "progress")
    worker.executors.append(
        ExecutorSettings.model_validate(
            {"class": "aggregate", "name": "parameter-server", "runtime": "parameter-server"}
        )
    )
    settings = job(1)
    settings.executor = JobExecutor.model_validate(
        {"class": "aggregate", "name": "parameter-server"}
    )
    outcome, _ = await run_job(tmp_path, [worker], settings)
    (placement,) = outcome.placements
    assert placement.phase == "failed"
    assert placement.reason == (
        "dispatch refused: start_failed "
        '(not a parameter-server job: the spec has no "executor.config")'
    )


async def test_a_cheap_offer_that_never_answers_does_not_keep_real_workers_out(
    tmp_path: Path,
) -> None:
    """An attacker answers every advertisement with a cheaper offer naming an address that
    never replies; offers are accepted concurrently, so the real worker is still placed."""
    attacker = Identity.from_seed(bytes([73]) * 32)
    hung: list[object] = []

    async def never(opened: object) -> m.Message:
        hung.append(opened)
        await trio.sleep_forever()
        raise AssertionError

    worker = worker_settings(tmp_path, "real", "tcp://127.0.0.1:1", "progress")
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        with Endpoint(SCHED) as transport, Endpoint(attacker) as evil:
            worker.gateway_addresses = [gw.listen]
            address = await nursery.start(run_worker, worker)
            trap = await nursery.start(evil.serve, "tcp://127.0.0.1:0", never)
            with evil.subscribe(dial=[gw.publish]) as ads:

                async def undercut() -> None:
                    async for opened in ads:
                        ad = opened.message
                        assert isinstance(ad, m.Advertisement)
                        offer = m.WorkerOffer(
                            "evil-lease", ad.request_id, 1.0, ad.resources, ad.expires, trap
                        )
                        await evil.request(ad.reply_address, offer)

                nursery.start_soon(undercut)
                with trio.fail_after(10):
                    await wait_healthy(transport, address)
                    while not ads.connections:  # noqa: ASYNC110 - NNG has no connect event
                        await trio.sleep(0.01)
                scheduler = Scheduler(
                    transport, job(1, rounds=1), gateways=[gw.listen], address="tcp://127.0.0.1:0"
                )
                with trio.fail_after(60):
                    outcome = await scheduler.run()
        nursery.cancel_scope.cancel()
    assert hung, "the attacker's offer was tried"
    assert outcome.ok, outcome
    assert [p.price for p in outcome.placements] == [150.0]
