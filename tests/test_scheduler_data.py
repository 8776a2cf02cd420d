"""The scheduler hands out slices over real sockets: dataset lookup at a real gateway, grants,
"slice done", and refusals for whoever is not a worker of the job."""

from __future__ import annotations

import time

import pytest
import trio

from hypha_sm.config.scheduler import JobSettings
from hypha_sm.net.discovery import Gateways
from hypha_sm.net.transport import Endpoint, NetError
from hypha_sm.roles.scheduler.scheduler import Scheduler
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened, open_record
from hypha_sm.wire.identity import Identity
from tests.netkit import LOOPBACK, running_gateway

pytestmark = pytest.mark.net

GATEWAY = Identity.from_seed(bytes([91]) * 32)
SCHED = Identity.from_seed(bytes([92]) * 32)
WORKER = Identity.from_seed(bytes([93]) * 32)
DATA_NODE = Identity.from_seed(bytes([94]) * 32)
IMPOSTOR = Identity.from_seed(bytes([95]) * 32)
STRANGER = Identity.from_seed(bytes([96]) * 32)
HASH = "sha256:" + "ab" * 32
DATA_ADDRESS = "tcp://127.0.0.1:7399"


def job() -> JobSettings:
    return JobSettings(
        executor={"class": "train", "name": "x"},
        resources={"cpu": 1, "memory": 1},
        workers=1,
        bid=100.0,
        advertise_timeout=10.0,
        renew_interval=1.0,
        timeout=30.0,
        dataset="fox",
        epochs=1,
    )


async def announce(gateway: str, who: Identity, slices: int, manifest_hash: str) -> None:
    """A data node's peer record and dataset record, signed by itself, at the gateway."""
    with Endpoint(who) as node:
        await Gateways(node, [gateway]).register(gateway, [DATA_ADDRESS], 600.0)
        record = m.DatasetRecord("fox", str(who.peer_id), time.time() + 600, slices, manifest_hash)
        assert (await node.request(gateway, record)).message == m.Ack()


async def test_a_worker_of_the_job_gets_granted_slices_and_strangers_get_refusals() -> None:
    """The dataset most data nodes announce wins over an impostor's (two honest records against
    one); each slice comes with a grant sealed by the scheduler for that worker; every slice is
    handed out once per epoch and reported done; others are refused with a reason."""
    jobs: list[str] = []

    async def worker_answers(opened: Opened) -> m.Message:
        message = opened.message
        if isinstance(message, m.RenewLease):
            return m.LeaseRenewed(message.lease_id, time.time() + 10)
        if isinstance(message, m.DispatchJob):
            jobs.append(message.job_id)
            return m.JobDispatched(message.job_id, message.lease_id, time.time() + 10)
        return m.Refused("unsupported")

    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        await announce(gw.listen, DATA_NODE, 3, HASH)
        await announce(gw.listen, Identity.from_seed(bytes([97]) * 32), 3, HASH)
        await announce(gw.listen, IMPOSTOR, 9, "sha256:" + "cd" * 32)
        with Endpoint(SCHED) as sched_ep, Endpoint(WORKER) as worker, Endpoint(STRANGER) as bad:
            scheduler = Scheduler(sched_ep, job(), gateways=[gw.listen], address=LOOPBACK)
            outcome: list[object] = []

            async def run(*, task_status: trio.TaskStatus[str]) -> None:
                outcome.append(await scheduler.run(task_status=task_status))

            worker_address = await nursery.start(worker.serve, LOOPBACK, worker_answers)
            with worker.subscribe(dial=[gw.publish]) as sub:
                sched = await nursery.start(run)
                with trio.fail_after(20):
                    ad = (await sub.receive()).message
                    assert isinstance(ad, m.Advertisement)
                    offer = m.WorkerOffer(
                        "lease-1",
                        ad.request_id,
                        90.0,
                        ad.resources,
                        time.time() + 1,
                        worker_address,
                    )
                    assert (await worker.request(sched, offer)).message == m.OfferAck("lease-1")
                    while not jobs:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                    (job_id,) = jobs
                    await worker.request(sched, m.JobStatus(job_id, "running"))
                    ask = m.DataSliceRequest("fox", job_id)
                    stranger = (await bad.request(sched, ask)).message
                    assert stranger == m.DataSliceAnswer("fox", "error", reason="unknown_job")
                    handed = []
                    for _ in range(3):
                        answer = (await worker.request(sched, ask)).message
                        assert isinstance(answer, m.DataSliceAnswer)
                        assert answer.outcome == "found", answer
                        assert answer.manifest_hash == HASH
                        assert answer.address == DATA_ADDRESS
                        grant = open_record(answer.grant)
                        assert isinstance(grant, Opened)
                        assert grant.sender == SCHED.peer_id
                        assert grant.message == m.SliceGrant(
                            "fox", answer.index, HASH, str(WORKER.peer_id), grant.message.expires
                        )
                        assert str(IMPOSTOR.peer_id) not in {answer.provider, *answer.alternates}
                        handed.append(answer.index)
                        done = m.SliceDoneReport(job_id, "fox", answer.index)
                        assert (await worker.request(sched, done)).message == m.Ack()
                    assert sorted(handed) == [0, 1, 2]
                    with pytest.raises(NetError, match="slice_already_done"):
                        await worker.request(sched, m.SliceDoneReport(job_id, "fox", 0))
                    last = (await worker.request(sched, ask)).message
                    assert last == m.DataSliceAnswer("fox", "error", reason="epochs_done")
                    await worker.request(sched, m.JobStatus(job_id, "finished", 0))
                    while not outcome:  # noqa: ASYNC110
                        await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    assert outcome[0].ok  # type: ignore[attr-defined]
