"""The node loop over the in-memory transport: a scheduler's whole conversation with a worker."""

from __future__ import annotations

import io
import time

import trio
import trio.testing

from hypha_sm.log.replay import replay
from hypha_sm.machines_io import load_engine
from hypha_sm.net.memory import MemoryEndpoint, MemoryNetwork
from hypha_sm.roles.worker.core.effects import StartJob
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.roles.worker.executor import StartFailed
from hypha_sm.roles.worker.node import WorkerNode
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import Identity
from tests.helpers import policy, recording
from tests.netkit import running_gateway, wait_connected, wait_healthy

SCHED = Identity.from_seed(bytes([21]) * 32)
GATEWAY = Identity.from_seed(bytes([24]) * 32)
WORKER_ID = Identity.from_seed(bytes([22]) * 32)
TRAIN = m.Executor(cls="train", name="diloco-transformer")
GW = ("gw:7000", "gw:7001", "gw:7002")


class FakeExecutor:
    """Starts jobs at once; a job exits when the test says so, or -15 when stopped."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.started: list[StartJob] = []
        self.stopped: list[str] = []
        self._exit: dict[str, tuple[trio.Event, list[int]]] = {}

    async def start(self, job: StartJob) -> None:
        if self.fail:
            raise StartFailed("no such command")
        self.started.append(job)
        self._exit[job.job_id] = (trio.Event(), [])

    def finish(self, job_id: str, code: int) -> None:
        done, slot = self._exit[job_id]
        slot.append(code)
        done.set()

    async def wait(self, job_id: str) -> int:
        done, slot = self._exit[job_id]
        await done.wait()
        return slot[0]

    async def stop(self, job_id: str, *, force: bool) -> None:
        self.stopped.append(job_id)
        if not self._exit[job_id][0].is_set():
            self.finish(job_id, -15)


class Scheduler:
    """Publishes an advertisement, takes offers and job statuses."""

    def __init__(self, network: MemoryNetwork) -> None:
        self.endpoint = MemoryEndpoint(network, SCHED)
        self.offers: list[m.WorkerOffer] = []
        self.statuses: list[m.JobStatus] = []
        self.offer_seen = trio.Event()
        self.status_seen = trio.Event()

    async def handle(self, opened: Opened) -> m.Message:
        message = opened.message
        if isinstance(message, m.WorkerOffer):
            self.offers.append(message)
            self.offer_seen.set()
            return m.OfferAck(message.lease_id)
        if isinstance(message, m.JobStatus):
            self.statuses.append(message)
            self.status_seen.set()
            return m.StatusAck(message.job_id)
        return m.Refused("unsupported")


def advert(n: int = 1) -> m.Advertisement:
    return m.Advertisement(
        f"req-{n}",
        str(SCHED.peer_id),
        "sched:7100",
        m.Resources(cpu=2, memory=4),
        (TRAIN,),
        120.0,
        time.time() + 5,
    )


def memory_node(
    network: MemoryNetwork, executor: FakeExecutor | None = None, sink: io.BytesIO | None = None
) -> WorkerNode:
    """A worker on the in-memory network at ``worker:7200``, recording to ``sink``."""
    engine, machines_hash = load_engine(WORKER)
    recorder = recording(
        sink or io.BytesIO(), engine, machines_hash, policy("flexible"), bytes(16)
    )
    return WorkerNode(
        recorder,
        MemoryEndpoint(network, WORKER_ID),
        executor or FakeExecutor(),
        address="worker:7200",
    )


async def test_a_job_runs_from_advertisement_to_release_over_the_network() -> None:
    """advertise → offer → renew (accept) → dispatch → start → exit → status → release."""
    network = MemoryNetwork()
    sink = io.BytesIO()
    executor = FakeExecutor()
    node = memory_node(network, executor, sink)
    sched = Scheduler(network)
    async with running_gateway(MemoryEndpoint(network, GATEWAY), *GW) as gw:
        with sched.endpoint.publisher(dial=[gw.ingest]) as pub:
            async with trio.open_nursery() as nursery:
                await nursery.start(sched.endpoint.serve, "sched:7100", sched.handle)
                worker_address = await nursery.start(node.run, [gw.listen])
                with trio.fail_after(10):
                    await wait_connected(pub)
                    await wait_healthy(sched.endpoint, worker_address)
                    await pub.publish(advert())
                    await sched.offer_seen.wait()
                    offer = sched.offers[0]
                    assert offer.price == 120.0
                    renewed = await sched.endpoint.request(
                        worker_address, m.RenewLease(offer.lease_id)
                    )
                    assert isinstance(renewed.message, m.LeaseRenewed)
                    dispatched = await sched.endpoint.request(
                        worker_address, m.DispatchJob("job-1", offer.lease_id, TRAIN, "{}")
                    )
                    assert isinstance(dispatched.message, m.JobDispatched)
                    assert executor.started[0].executor.name == "diloco-transformer"
                    await sched.status_seen.wait()  # the running report
                    sched.status_seen = trio.Event()
                    executor.finish("job-1", 0)
                    while not any(s.status == "finished" for s in sched.statuses):
                        await sched.status_seen.wait()
                        sched.status_seen = trio.Event()
                    # The lease ended with its job: a renewal now fails, saying so.
                    late = await sched.endpoint.request(
                        worker_address, m.RenewLease(offer.lease_id)
                    )
                    assert late.message == m.RenewFailed(offer.lease_id, "job_ended")
                    await node.shutdown()
                nursery.cancel_scope.cancel()  # the scheduler's server; the node stops by itself
    assert [s.status for s in sched.statuses] == ["running", "finished"]
    assert node.stepper.state.reserved == (0, 0, 0, 0)
    # fsync = batch: one sync per loop wake-up that produced effects, none for the others.
    assert node.stepper.recorder.syncs == node.stats.wakeups_with_effects > 0
    assert node.stepper.recorder.syncs < node.stats.steps
    # The event log the node wrote replays to the same effects.
    report = replay(sink.getvalue().splitlines(keepends=True), *load_engine(WORKER), role=WORKER)
    assert report.ok, report.divergence


async def test_a_stranger_cannot_renew_and_a_failed_start_is_answered() -> None:
    """Only the owner renews; an executor that cannot start makes the dispatch fail with a reason."""
    network = MemoryNetwork()
    node = memory_node(network, FakeExecutor(fail=True))
    sched = Scheduler(network)
    stranger = MemoryEndpoint(network, Identity.from_seed(bytes([23]) * 32))
    async with running_gateway(MemoryEndpoint(network, GATEWAY), *GW) as gw:
        with sched.endpoint.publisher(dial=[gw.ingest]) as pub:
            async with trio.open_nursery() as nursery:
                await nursery.start(sched.endpoint.serve, "sched:7100", sched.handle)
                worker_address = await nursery.start(node.run, [gw.listen])
                with trio.fail_after(10):
                    await wait_connected(pub)
                    await wait_healthy(sched.endpoint, worker_address)
                    await pub.publish(advert())
                    await sched.offer_seen.wait()
                    lease = sched.offers[0].lease_id
                    refused = await stranger.request(worker_address, m.RenewLease(lease))
                    assert refused.message == m.RenewFailed(lease, "not_owner")
                    await sched.endpoint.request(worker_address, m.RenewLease(lease))
                    failed = await sched.endpoint.request(
                        worker_address, m.DispatchJob("job-1", lease, TRAIN, "{}")
                    )
                    assert failed.message == m.DispatchFailed(
                        "job-1", "start_failed", "no such command"
                    )
                    health = await stranger.request(worker_address, m.Health())
                    assert health.message == m.HealthReply(True)
                    await node.shutdown()
                nursery.cancel_scope.cancel()


async def test_a_refused_dispatch_leaves_no_scheduler_behind_for_its_job() -> None:
    """Only a dispatch the core accepted decides where a job's progress goes: refused ones
    (here: unknown leases) leave nothing in memory."""
    network = MemoryNetwork()
    node = memory_node(network)
    stranger = MemoryEndpoint(network, Identity.from_seed(bytes([23]) * 32))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(node.run, [])
        with trio.fail_after(5):
            for n in range(20):
                answer = await stranger.request(
                    address, m.DispatchJob(f"job-{n}", f"lease-{n}", TRAIN, "{}")
                )
                assert answer.message == m.DispatchFailed(f"job-{n}", "unknown_lease")
        assert node._job_schedulers == {}
        assert node._dispatching == {}
        await node.shutdown()


async def test_a_gateway_naming_an_unusable_address_does_not_stop_the_node() -> None:
    """gateway_info is remote input: a bad publish address is retried, never a crash."""
    network = MemoryNetwork()
    node = memory_node(network)
    gateway = MemoryEndpoint(network, GATEWAY)
    asked = 0

    async def odd_gateway(opened: Opened) -> m.Message:
        nonlocal asked
        asked += 1
        return m.GatewayInfoReply("gw:7001", "tcp://0.0.0.0:99999")

    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve, "gw:7000", odd_gateway)
        address = await nursery.start(node.run, ["gw:7000"])
        with trio.fail_after(5):
            while asked < 2:  # noqa: ASYNC110 - it keeps asking, with backoff
                await trio.sleep(0.05)
            health = await gateway.request(address, m.Health())
        assert health.message == m.HealthReply(False)
        await node.shutdown()
        nursery.cancel_scope.cancel()


async def test_a_jobs_reports_reach_the_scheduler_in_the_order_the_core_decided_them() -> None:
    """A job that exits at once: its "running" and "finished" leave in one loop wake-up, but
    "finished" is sent only after "running" was answered, however slowly."""
    network = MemoryNetwork()
    executor = FakeExecutor()
    node = memory_node(network, executor)
    sched = Scheduler(network)
    plain_handle = sched.handle

    async def slow_on_running(opened: Opened) -> m.Message:
        if isinstance(opened.message, m.JobStatus) and opened.message.status == "running":
            await trio.sleep(0.3)
        return await plain_handle(opened)

    async with running_gateway(MemoryEndpoint(network, GATEWAY), *GW) as gw:
        with sched.endpoint.publisher(dial=[gw.ingest]) as pub:
            async with trio.open_nursery() as nursery:
                await nursery.start(sched.endpoint.serve, "sched:7100", slow_on_running)
                worker_address = await nursery.start(node.run, [gw.listen])
                with trio.fail_after(10):
                    await wait_connected(pub)
                    await wait_healthy(sched.endpoint, worker_address)
                    await pub.publish(advert())
                    await sched.offer_seen.wait()
                    lease = sched.offers[0].lease_id
                    await sched.endpoint.request(worker_address, m.RenewLease(lease))
                    executor.start = _exiting_at_once(executor)  # type: ignore[method-assign]
                    await sched.endpoint.request(
                        worker_address, m.DispatchJob("job-1", lease, TRAIN, "{}")
                    )
                    while len(sched.statuses) < 2:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    assert [s.status for s in sched.statuses] == ["running", "finished"]


def _exiting_at_once(executor: FakeExecutor):  # type: ignore[no-untyped-def]
    plain_start = executor.start

    async def start(job: StartJob) -> None:
        await plain_start(job)
        executor.finish(job.job_id, 0)

    return start
