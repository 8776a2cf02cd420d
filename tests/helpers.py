"""Shared builders for tests: a worker with a known policy, events with sensible defaults."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

from hypha_sm.core.engine import Engine
from hypha_sm.core.resources import Amounts
from hypha_sm.log.store import Recorder, RotatingLog
from hypha_sm.machines_io import load_engine, load_specs
from hypha_sm.roles.worker.core.events import (
    AdvertisementReceived,
    DispatchRequested,
    Event,
    Now,
    RenewRequested,
    Tick,
)
from hypha_sm.roles.worker.core.policy import ExecutorRef, ExecutorSpec, Offer, Policy, Timings
from hypha_sm.roles.worker.core.reducer import Step, build_engine, initial_state, step
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.roles.worker.core.state import WorkerState
from hypha_sm.runtime.loop import Stepper

SEED = bytes(range(16))
WALL0 = 1_700_000_000.0
SCHED = "12D3KooWScheduler"
OTHER = "12D3KooWStranger"
TRAIN = ExecutorRef(cls="train", name="diloco-transformer")
AGGREGATE = ExecutorRef(cls="aggregate", name="parameter-server")
CAPACITY = Amounts(gpu=24, cpu=16, memory=64, storage=500)


@cache
def engine() -> Engine:
    return load_engine(WORKER)[0]


@cache
def library_engine() -> Engine:
    """The same machines, fired through `transitions.Machine.trigger` (the reference path)."""
    return build_engine(load_specs(), via_library=True)


def policy(
    strategy: str = "flexible",
    price: float = 100.0,
    floor: float = 100.0,
    capacity: Amounts = CAPACITY,
    **kw: object,
) -> Policy:
    return Policy(
        capacity=capacity,
        executors=(
            ExecutorSpec(cls="train", name="diloco-transformer", runtime="process"),
            ExecutorSpec(cls="aggregate", name="parameter-server", runtime="parameter-server"),
        ),
        offer=Offer(price=price, floor=floor, strategy=strategy),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def at(t: float) -> Now:
    """Monotonic t seconds after start, with the wall clock WALL0 + t."""
    return Now(t, WALL0 + t)


class Worker:
    """A state plus a clock, with the inputs and outputs recorded."""

    def __init__(
        self, pol: Policy | None = None, seed: bytes = SEED, eng: Engine | None = None
    ) -> None:
        self.policy = pol or policy()
        self.state: WorkerState = initial_state(eng or engine(), self.policy, seed)
        self.t = 0.0
        self.inputs: list[tuple[Now, Event]] = []
        self.outputs: list[Step] = []

    def feed(self, event: Event, t: float | None = None) -> Step:
        if t is not None:
            self.t = t
        now = at(self.t)
        self.inputs.append((now, event))
        out = step(self.state, event, now)
        self.outputs.append(out)
        return out

    def tick(self, t: float) -> Step:
        return self.feed(Tick(), t)

    def advance(self, dt: float) -> Step:
        return self.tick(self.t + dt)

    @property
    def timings(self) -> Timings:
        return self.policy.timings


def ad(
    request_id: str = "req-1",
    *,
    gpu: float = 0.0,
    cpu: float = 1.0,
    memory: float = 1.0,
    storage: float = 0.0,
    bid: float = 100.0,
    executors: Iterable[ExecutorRef] = (TRAIN,),
    scheduler: str = SCHED,
    expires_in: float = 5.0,
    t: float = 0.0,
    offer_lifetime: float = 0.0,
) -> AdvertisementReceived:
    return AdvertisementReceived(
        request_id=request_id,
        scheduler=scheduler,
        reply_address="tcp://127.0.0.1:7000",
        resources=Amounts(gpu=gpu, cpu=cpu, memory=memory, storage=storage),
        executors=tuple(executors),
        bid=bid,
        expires_wall=WALL0 + t + expires_in,
        offer_lifetime=offer_lifetime,
    )


def renew(lease_id: str, peer: str = SCHED, reply_to: int = 1) -> RenewRequested:
    return RenewRequested(lease_id=lease_id, peer=peer, reply_to=reply_to)


def dispatch(
    lease_id: str,
    job_id: str = "job-1",
    peer: str = SCHED,
    executor: ExecutorRef = TRAIN,
    reply_to: int = 2,
) -> DispatchRequested:
    return DispatchRequested(
        job_id=job_id,
        lease_id=lease_id,
        peer=peer,
        executor=executor,
        spec="{}",
        reply_to=reply_to,
    )


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie awaiting its reaper counts as gone)."""
    import psutil  # type: ignore[import-untyped]

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def remove_leftover_cgroups(work_dir: Path) -> None:
    """What a restart of a node on ``work_dir`` would do: a test that killed its node cleans up
    the job cgroups that node left (empty after the parent-death signal)."""
    from hypha_sm.roles.worker.limits import find_cgroup_parent
    from hypha_sm.roles.worker.sweep import cgroup_scope, kill_cgroup, leftover_cgroups

    for cgroup in leftover_cgroups(find_cgroup_parent(), cgroup_scope(work_dir)):
        kill_cgroup(cgroup)


def recording(
    sink: BinaryIO | RotatingLog,
    engine: Engine,
    machines_hash: str,
    policy: Policy,
    seed: bytes,
    **options: Any,
) -> Stepper[WorkerState]:
    """A worker core stepped by the runtime's ``Stepper`` and recorded to ``sink``."""
    recorder = Recorder(sink, WORKER, machines_hash, policy, seed, **options)
    return Stepper(WORKER, engine, policy, seed, recorder)


def recording_rotating(
    directory: Path,
    engine: Engine,
    machines_hash: str,
    policy: Policy,
    seed: bytes,
    **options: Any,
) -> Stepper[WorkerState]:
    """A worker core recorded to a size-rotated log in ``directory``."""
    recorder = Recorder.open_rotating(directory, WORKER, machines_hash, policy, seed, **options)
    return Stepper(WORKER, engine, policy, seed, recorder)
