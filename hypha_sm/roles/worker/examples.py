"""Scripted scenarios recorded as the example logs in ``specs/logs/``.

They are the logs the README's main command replays and the tests replay. Regenerate them with
``python -m hypha_sm.roles.worker.examples`` after a deliberate behaviour change; a test fails while the
committed logs differ from what the scenarios produce now.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

from hypha_sm.core.engine import Engine
from hypha_sm.core.resources import Amounts
from hypha_sm.log.store import Recorder
from hypha_sm.roles.worker.core.events import (
    AdvertisementReceived,
    DispatchRequested,
    Event,
    JobExited,
    JobStarted,
    Now,
    OfferDelivered,
    RenewRequested,
    ShutdownRequested,
    StatusDelivered,
    Tick,
)
from hypha_sm.roles.worker.core.policy import ExecutorRef, ExecutorSpec, Offer, Policy
from hypha_sm.roles.worker.core.role import WORKER
from hypha_sm.runtime import examples
from hypha_sm.runtime.loop import Stepper

SEED = bytes.fromhex("00112233445566778899aabbccddeeff")
WALL0 = 1_764_000_000.0
SCHEDULER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
STRANGER = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
TRAIN = ExecutorRef(cls="train", name="diloco-transformer")
POLICY = Policy(
    capacity=Amounts(gpu=24, cpu=16, memory=64, storage=500),
    executors=(
        ExecutorSpec(cls="train", name="diloco-transformer", runtime="process"),
        ExecutorSpec(cls="aggregate", name="parameter-server", runtime="parameter-server"),
    ),
    offer=Offer(price=150.0, floor=120.0, strategy="flexible"),
)


class Script:
    """Feeds inputs at given times through a recorder, and finds ids in the effects."""

    def __init__(self, engine: Engine, machines_hash: str, policy: Policy = POLICY) -> None:
        self.sink = io.BytesIO()
        recorder = Recorder(self.sink, WORKER, machines_hash, policy, SEED)
        self.stepper = Stepper(WORKER, engine, policy, SEED, recorder)

    def at(self, t: float, event: Event) -> list[object]:
        return list(self.stepper.feed(event, Now(t, WALL0 + t)).effects)

    def lease_of(self, effects: list[object]) -> str:
        for effect in effects:
            lease_id = getattr(effect, "lease_id", None)
            if isinstance(lease_id, str):
                return lease_id
        raise AssertionError("no lease id in effects")


def _ad(
    request_id: str, t: float, *, bid: float = 160.0, gpu: float = 8.0, **kw: object
) -> AdvertisementReceived:
    fields: dict[str, object] = {
        "request_id": request_id,
        "scheduler": SCHEDULER,
        "reply_address": "tcp://127.0.0.1:7100",
        "resources": Amounts(gpu=gpu, cpu=4, memory=16, storage=10),
        "executors": (TRAIN,),
        "bid": bid,
        "expires_wall": WALL0 + t + 5.0,
    }
    fields.update(kw)
    return AdvertisementReceived(**fields)  # type: ignore[arg-type]


def job_lifecycle(s: Script) -> None:
    """Advertisement → offer → accept → dispatch → run → exit 0 → report → release."""
    s.at(0.000, _ad("7f1c0a52-0000-4000-8000-000000000001", 0.0))
    effects = s.at(0.200, Tick())
    lease = s.lease_of(effects)
    s.at(0.210, OfferDelivered(lease))
    s.at(0.250, RenewRequested(lease, SCHEDULER, 1))
    job = "5d0e7c1a-0000-4000-8000-0000000000aa"
    s.at(0.300, DispatchRequested(job, lease, SCHEDULER, TRAIN, '{"job_id":"demo"}', 2))
    s.at(0.350, JobStarted(job))
    s.at(0.360, StatusDelivered(job, "running"))
    s.at(6.900, RenewRequested(lease, SCHEDULER, 3))
    s.at(12.500, JobExited(job, 0))
    s.at(12.520, StatusDelivered(job, "finished"))
    s.at(13.600, RenewRequested(lease, SCHEDULER, 4))  # the lease ended with its job


def lease_expiry(s: Script) -> None:
    """The scheduler stops renewing: the job is stopped, and only after it is gone is the lease released."""
    s.at(0.000, _ad("7f1c0a52-0000-4000-8000-000000000002", 0.0))
    lease = s.lease_of(s.at(0.200, Tick()))
    s.at(0.250, RenewRequested(lease, SCHEDULER, 1))
    job = "5d0e7c1a-0000-4000-8000-0000000000bb"
    s.at(0.300, DispatchRequested(job, lease, SCHEDULER, TRAIN, "{}", 2))
    s.at(0.400, JobStarted(job))
    s.at(10.250, Tick())  # expiry, exactly at the deadline: StopJob, reservation still held
    s.at(12.000, _ad("7f1c0a52-0000-4000-8000-000000000003", 12.0, gpu=20.0))
    s.at(12.200, Tick())  # 8 + 20 GPU > 24: the new request cannot be offered yet
    s.at(15.300, JobExited(job, -9))  # the tree ignored TERM and was killed
    s.at(15.310, StatusDelivered(job, "cancelled"))


def hostile_inputs(s: Script) -> None:
    """Malformed and hostile inputs are refused with reasons, and the node carries on."""
    s.at(0.000, _ad("7f1c0a52-0000-4000-8000-000000000010", 0.0, bid=float("nan")))
    s.at(0.010, _ad("7f1c0a52-0000-4000-8000-000000000011", 0.01, gpu=-5.0))
    s.at(0.020, _ad("7f1c0a52-0000-4000-8000-000000000012", 0.02, gpu=float("inf")))
    s.at(0.030, _ad("7f1c0a52-0000-4000-8000-000000000013", 0.03, bid=100.0))
    s.at(0.040, _ad("7f1c0a52-0000-4000-8000-000000000014", 0.04, expires_wall=WALL0 - 1.0))
    s.at(0.050, _ad("7f1c0a52-0000-4000-8000-000000000015", 0.05))
    s.at(0.060, _ad("7f1c0a52-0000-4000-8000-000000000015", 0.06))  # duplicate
    lease = s.lease_of(s.at(0.200, Tick()))
    s.at(0.210, RenewRequested(lease, STRANGER, 1))
    s.at(0.220, RenewRequested("00000000-0000-4000-8000-000000000000", SCHEDULER, 2))
    s.at(0.230, DispatchRequested("j-early", lease, SCHEDULER, TRAIN, "{}", 3))
    s.at(0.700, RenewRequested(lease, SCHEDULER, 4))  # too late: the offer expired at 0.7


def shutdown(s: Script) -> None:
    """Shutdown stops taking work, cancels the running job, and stops once it is gone."""
    s.at(0.000, _ad("7f1c0a52-0000-4000-8000-000000000020", 0.0))
    lease = s.lease_of(s.at(0.200, Tick()))
    s.at(0.250, RenewRequested(lease, SCHEDULER, 1))
    job = "5d0e7c1a-0000-4000-8000-0000000000cc"
    s.at(0.300, DispatchRequested(job, lease, SCHEDULER, TRAIN, "{}", 2))
    s.at(0.400, JobStarted(job))
    s.at(2.000, _ad("7f1c0a52-0000-4000-8000-000000000021", 2.0))
    s.at(2.100, ShutdownRequested())
    s.at(2.150, _ad("7f1c0a52-0000-4000-8000-000000000022", 2.15))
    s.at(3.000, JobExited(job, -15))
    s.at(3.010, StatusDelivered(job, "cancelled"))


SCENARIOS: dict[str, Callable[[Script], None]] = {
    "job-lifecycle": job_lifecycle,
    "lease-expiry": lease_expiry,
    "hostile-inputs": hostile_inputs,
    "shutdown": shutdown,
}


def render(engine: Engine, machines_hash: str) -> dict[str, bytes]:
    """Every example log's bytes, by file name."""
    return examples.render(SCENARIOS, Script, engine, machines_hash)


def main(argv: list[str] | None = None) -> int:
    """Write the example logs to specs/logs/ (or the directory given)."""
    args = sys.argv[1:] if argv is None else argv
    return examples.write(WORKER, render, Path(args[0]) if args else examples.LOGS)


if __name__ == "__main__":
    raise SystemExit(main())
