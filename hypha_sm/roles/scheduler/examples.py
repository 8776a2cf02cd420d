"""Scripted scheduler runs recorded as the example logs in ``specs/logs/scheduler/``.

The tests replay them and fail while the committed logs differ from what the scenarios record
now. Regenerate them with ``python -m hypha_sm.roles.scheduler.examples`` after a deliberate
behaviour change.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypha_sm.core.engine import Engine
from hypha_sm.core.resources import Amounts
from hypha_sm.core.trace import Now
from hypha_sm.log.store import Recorder
from hypha_sm.roles.scheduler.core import effects as fx
from hypha_sm.roles.scheduler.core import events as ev
from hypha_sm.roles.scheduler.core.plan import Plan
from hypha_sm.roles.scheduler.core.role import SCHEDULER
from hypha_sm.roles.scheduler.core.state import SchedulerState
from hypha_sm.runtime import examples
from hypha_sm.runtime.loop import Stepper

SEED = bytes.fromhex("ffeeddccbbaa99887766554433221100")
WALL0 = 1_764_000_000.0
WORKER_A = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
WORKER_B = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
WORKER_C = "12D3KooWKwtqFavCQzBUfwTxZ6sRpEyzmFXSY6PVVcVjyQgkAzzv"
ASK = Amounts(gpu=0.0, cpu=1.0, memory=1.0, storage=0.0)
OFFERED = Amounts(gpu=0.0, cpu=2.0, memory=4.0, storage=10.0)
PLAN = Plan(workers=2, resources=ASK, bid=100.0, offer_wait=0.1, advertise_timeout=5.0)


class Script:
    """Feeds inputs at given times through the loop's stepper and answers effects."""

    def __init__(self, engine: Engine, machines_hash: str, plan: Plan = PLAN) -> None:
        self.sink = io.BytesIO()
        recorder = Recorder(self.sink, SCHEDULER, machines_hash, plan, SEED)
        self.stepper: Stepper[SchedulerState] = Stepper(SCHEDULER, engine, plan, SEED, recorder)
        self.t = 0.0
        self.token = 0

    @property
    def state(self) -> SchedulerState:
        return self.stepper.state

    def at(self, t: float, event: ev.Event) -> list[Any]:
        self.t = t
        return list(self.stepper.feed(event, Now(t, WALL0 + t)).effects)

    def reply_to(self) -> int:
        self.token += 1
        return self.token

    def request_id(self) -> str:
        return str(self.state.records["allocation"]["job"].request_id)

    def offer(self, t: float, peer: str, lease: str, price: float) -> list[Any]:
        return self.at(
            t,
            ev.OfferReceived(
                self.reply_to(),
                peer,
                self.request_id(),
                lease,
                f"tcp://{lease}:7200",
                price,
                OFFERED,
            ),
        )

    def job(self, lease: str) -> str:
        return next(j for j, lid in self.state.jobs.items() if lid == lease)

    def status(
        self, t: float, peer: str, lease: str, status: str, code: int | None = None
    ) -> None:
        self.at(t, ev.StatusReceived(self.reply_to(), peer, self.job(lease), status, code))  # type: ignore[arg-type]


def _placed_two(s: Script) -> None:
    s.at(0.0, ev.Begin())
    s.at(0.01, ev.GatewaysLocated(("tcp://127.0.0.1:7301",)))
    s.at(0.02, ev.Published(s.request_id()))
    s.offer(0.05, WORKER_A, "lease-a", 90.0)
    s.offer(0.06, WORKER_C, "lease-c", 140.0)  # dearer than the bid: refused at once
    s.offer(0.07, WORKER_B, "lease-b", 80.0)
    s.at(0.2, ev.Tick())  # offer_wait after the first: accept the cheapest (b)
    s.at(0.25, ev.Tick())  # b has not answered within the hedge: try a as well
    s.at(0.26, ev.LeaseAccepted("lease-a", WALL0 + 0.26 + 5.0))
    s.at(0.27, ev.LeaseAccepted("lease-b", WALL0 + 0.27 + 5.0))
    s.at(0.3, ev.Dispatched("lease-b"))
    s.at(0.31, ev.Dispatched("lease-a"))


def job_runs(s: Script) -> None:
    """Two workers placed, renewed, report progress and finish; a stranger is refused."""
    _placed_two(s)
    s.status(0.4, WORKER_B, "lease-b", "running")
    s.status(0.41, WORKER_A, "lease-a", "running")
    s.at(
        0.5,
        ev.ProgressReceived(
            s.reply_to(), WORKER_B, s.job("lease-b"), "round-metrics", "round 1: loss=3.2"
        ),
    )
    s.at(
        0.6,
        ev.ProgressReceived(
            s.reply_to(), WORKER_B, s.job("lease-b"), "update-received", "update received"
        ),
    )
    s.status(0.7, WORKER_C, "lease-a", "finished", 0)  # not the worker the job went to
    s.at(1.27, ev.Tick())  # renew_interval: both renew
    s.at(1.28, ev.Renewed("lease-a", WALL0 + 1.28 + 5.0))
    s.at(1.29, ev.Renewed("lease-b", WALL0 + 1.29 + 5.0))
    s.status(1.5, WORKER_B, "lease-b", "finished", 0)
    s.status(1.6, WORKER_A, "lease-a", "finished", 0)


def lease_lost(s: Script) -> None:
    """Renewals of one lease fail until its expiry: it is lost there; the other finishes."""
    _placed_two(s)
    t = 1.26
    while t < 5.3:
        for effect in s.at(t, ev.Tick()):
            if isinstance(effect, fx.RenewLease):
                if effect.lease_id == "lease-a":
                    s.at(t + 0.01, ev.RenewFailed("lease-a", "timeout"))
                else:
                    s.at(t + 0.01, ev.Renewed("lease-b", WALL0 + t + 5.0))
        t = round(t + 0.5, 2)
    s.status(5.4, WORKER_B, "lease-b", "finished", 0)


def gives_up(s: Script) -> None:
    """Two wanted, one offers: advertised again, then given up with the reason; let go."""
    s.at(0.0, ev.Begin())
    s.at(0.01, ev.GatewaysUnreachable("tcp://127.0.0.1:7301: timeout"))
    s.at(0.51, ev.Tick())
    s.at(0.52, ev.GatewaysLocated(("tcp://127.0.0.1:7301",)))
    s.at(0.53, ev.PublishFailed(s.request_id(), "no gateway connection"))
    s.at(1.03, ev.Tick())
    s.at(1.04, ev.Published(s.request_id()))
    s.offer(1.1, WORKER_A, "lease-a", 90.0)
    s.at(1.2, ev.Tick())
    s.at(1.21, ev.LeaseAccepted("lease-a", WALL0 + 1.21 + 5.0))
    t = 1.3
    while s.state.finished is None:
        for effect in s.at(t, ev.Tick()):
            if isinstance(effect, fx.Publish):
                s.at(t + 0.01, ev.Published(effect.request_id))
            elif isinstance(effect, fx.RenewLease):
                s.at(t + 0.01, ev.Renewed("lease-a", WALL0 + t + 5.0))
        t = round(t + 0.5, 2)


SCENARIOS: dict[str, Callable[[Script], None]] = {
    "job-runs": job_runs,
    "lease-lost": lease_lost,
    "gives-up": gives_up,
}


def render(engine: Engine, machines_hash: str) -> dict[str, bytes]:
    """Every example log's bytes, by file name."""
    return examples.render(SCENARIOS, Script, engine, machines_hash)


def main(argv: list[str] | None = None) -> int:
    """Write the example logs to specs/logs/scheduler/ (or the directory given)."""
    args = sys.argv[1:] if argv is None else argv
    return examples.write(
        SCHEDULER, render, Path(args[0]) if args else examples.LOGS / "scheduler"
    )


if __name__ == "__main__":
    raise SystemExit(main())
