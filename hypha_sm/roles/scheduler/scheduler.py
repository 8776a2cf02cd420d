"""The minimal scheduler role: run one job on N workers (``hypha-sm scheduler run job.toml``).

Enough to drive real workers end to end and to be their counterpart in tests; the DiLoCo work
extends it. One run:

1. **Advertise.** Ask each gateway where to publish, then publish a signed advertisement (the
   job's executor, resources and bid). Offers arrive at our request address; each is a
   temporary lease that lapses 500 ms after it was made, so we collect for ``offer_wait``
   (< 0.5 s) after the first one and choose.
2. **Choose and accept.** Offers are ranked by price (lowest first; at most ``max_price``,
   by default the bid), then by arrival; one lease per worker. The first renewal accepts a lease. If too few were accepted,
   advertise again (a new request id) until ``advertise_timeout``.
3. **Renew** every accepted lease every ``renew_interval`` while its job runs.
4. **Dispatch** the job to every worker with a JSON spec naming all the workers, so jobs can
   send files to each other through their bridges.
5. **Follow.** Job statuses and progress come to our request address; progress is logged and
   answered. When every job has ended (or ``timeout`` passed) renewals stop: a worker releases
   a lease when its job ends, and a lease nobody renews expires and stops its job.

Every request is checked against who sent it: offers must answer one of our advertisements,
and statuses and progress must come from the worker the job was dispatched to.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import trio

from hypha_sm.config.scheduler import JobSettings, SchedulerSettings
from hypha_sm.core.resources import convert, covers
from hypha_sm.net.discovery import Gateways
from hypha_sm.net.keys import load_key_file
from hypha_sm.net.transport import Endpoint, NetConfig, NetError, Publisher, Transport
from hypha_sm.runtime.bootstrap import tls_files
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import PeerId

log = logging.getLogger(__name__)

#: How long an advertisement is valid for the workers that receive it.
AD_LIFETIME = 5.0
#: Offers kept per advertisement round (anyone who saw the advertisement can offer).
MAX_OFFERS = 256
#: How long accepting one offer may take: a temporary lease lapses 0.5 s after it was made.
ACCEPT_TIMEOUT = 0.4
#: How long the cheapest untried offer waits for the ones before it to answer.
HEDGE = 0.05
FINAL = frozenset({"finished", "failed", "cancelled", "lost"})
#: Progress reports kept per placement, and metrics shown per log line.
KEEP_PROGRESS = 64
SHOWN_METRICS = 12

Phase = Literal["accepted", "dispatched", "running", "finished", "failed", "cancelled", "lost"]


@dataclass
class Placement:
    """One worker's part of the job: its lease, its job id and how it stands."""

    worker: str
    address: str
    lease_id: str
    price: float
    job_id: str = ""
    phase: Phase = "accepted"
    exit_code: int | None = None
    reason: str = ""
    expires: float = 0.0
    #: The latest progress reports (older ones are dropped: a worker may report for days).
    progress: collections.deque[m.ProgressKind] = field(
        default_factory=lambda: collections.deque(maxlen=KEEP_PROGRESS)
    )
    reports: int = 0
    ended: trio.Event = field(default_factory=trio.Event)


@dataclass
class Outcome:
    """What happened to the job on each worker; ``ok`` if every part finished with exit 0."""

    placements: list[Placement]
    reason: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.placements) and all(
            p.phase == "finished" and p.exit_code == 0 for p in self.placements
        )


class SchedulerError(Exception):
    """The job could not be placed (not enough offers in time, no gateway reachable)."""


class Scheduler:
    """Runs one job on ``job.workers`` workers found through ``gateways``."""

    def __init__(
        self,
        transport: Transport,
        job: JobSettings,
        *,
        gateways: list[str],
        address: str,
        public_address: str | None = None,
        wall: Callable[[], float] = time.time,
        on_progress: Callable[[Placement, m.ProgressKind], None] | None = None,
    ) -> None:
        self.transport = transport
        self.job = job
        self.gateways = Gateways(transport, gateways, wall=wall)
        self.address = address
        self.public_address = public_address
        self._wall = wall
        self._on_progress = on_progress
        self._requests: set[str] = set()  # our advertisements' request ids
        self._offers: list[tuple[m.WorkerOffer, str]] = []  # offer, sender
        self._offer_arrived = trio.Event()
        self._by_job: dict[str, Placement] = {}
        self.placements: list[Placement] = []

    # -- requests to us ------------------------------------------------------------------------

    async def _answer(self, opened: Opened) -> m.Message:
        message = opened.message
        sender = str(opened.sender)
        if isinstance(message, m.WorkerOffer):
            if message.request_id not in self._requests:
                return m.Refused("unknown_request")
            if len(self._offers) >= MAX_OFFERS or any(s == sender for _, s in self._offers):
                return m.Refused("offer_not_taken")  # one per worker; bounded memory
            self._offers.append((message, sender))
            self._offer_arrived.set()
            return m.OfferAck(message.lease_id)
        if isinstance(message, m.JobStatus):
            placement = self._placement_of(message.job_id, sender)
            if placement is None:
                return m.Refused("unknown_job")
            self._take_status(placement, message)
            return m.StatusAck(message.job_id)
        if isinstance(message, m.Progress):
            placement = self._placement_of(message.job_id, sender)
            if placement is None:
                return m.Refused("unknown_job")
            placement.progress.append(message.progress)
            placement.reports += 1
            log.info("%s %s", _short(placement.worker), describe_progress(message.progress))
            if self._on_progress is not None:
                self._on_progress(placement, message.progress)
            if isinstance(message.progress, m.UpdateReceived):
                return m.ProgressReply("continue")
            return m.ProgressReply("ok")
        if isinstance(message, m.Health):
            return m.HealthReply(True)
        return m.Refused("unsupported")

    def _placement_of(self, job_id: str, sender: str) -> Placement | None:
        placement = self._by_job.get(job_id)
        return placement if placement is not None and placement.worker == sender else None

    def _take_status(self, placement: Placement, status: m.JobStatus) -> None:
        if placement.phase in FINAL:
            return
        placement.phase = status.status
        placement.exit_code = status.exit_code
        placement.reason = status.reason
        code = "" if status.exit_code is None else f" (exit {status.exit_code})"
        why = f": {status.reason}" if status.reason else ""
        log.info(
            "%s job %s %s%s%s", _short(placement.worker), status.job_id, status.status, code, why
        )
        if status.status in FINAL:
            placement.ended.set()

    # -- the run -------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> Outcome:
        """Place, dispatch and follow the job; return once every part ended or timed out.

        If the job cannot be placed (no gateway, too few offers in time) the outcome says why.
        """
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(self.transport.serve, self.address, self._answer)
            self.public_address = self.public_address or bound
            task_status.started(bound)
            try:
                ingests = await self._locate_gateways()
                with self.transport.publisher(dial=ingests) as publisher:
                    await self._acquire(publisher)
            except SchedulerError as exc:
                # Leases already accepted are not renewed again: they lapse on the workers.
                log.error("%s", exc)
                nursery.cancel_scope.cancel()
                return Outcome(self.placements, str(exc))
            for placement in self.placements:
                nursery.start_soon(self._keep_renewed, placement)
            await self._dispatch_all()
            with trio.move_on_after(self.job.timeout) as waited:
                for placement in self.placements:
                    await placement.ended.wait()
            nursery.cancel_scope.cancel()
        reason = "" if not waited.cancelled_caught else f"timed out after {self.job.timeout} s"
        if reason:
            log.warning("job %s; its leases are no longer renewed", reason)
        return Outcome(self.placements, reason)

    async def _locate_gateways(self) -> list[str]:
        with trio.move_on_after(self.job.advertise_timeout):
            while True:
                ingests = []
                for address in self.gateways.addresses:
                    try:
                        ingests.append((await self.gateways.locate(address)).ingest)
                    except NetError as exc:
                        log.warning("gateway %s: %s", address, exc)
                if ingests:
                    return ingests
                await trio.sleep(0.5)
        raise SchedulerError("no gateway answered")

    async def _acquire(self, publisher: Publisher) -> None:
        """Advertise until ``job.workers`` leases are accepted, or fail after the timeout."""
        deadline = trio.current_time() + self.job.advertise_timeout
        while len(self.placements) < self.job.workers:
            if trio.current_time() >= deadline:
                raise SchedulerError(
                    f"only {len(self.placements)} of {self.job.workers} workers accepted "
                    f"within {self.job.advertise_timeout} s"
                )
            while not publisher.connections and trio.current_time() < deadline:  # noqa: ASYNC110
                await trio.sleep(0.02)  # NNG has no connect event
            if not publisher.connections:
                continue  # the deadline check above reports it
            request_id = str(uuid.uuid4())
            self._requests.add(request_id)
            self._offers.clear()
            self._offer_arrived = trio.Event()
            await publisher.publish(self._advertisement(request_id))
            with trio.move_on_after(min(1.0, max(0.0, deadline - trio.current_time()))):
                await self._offer_arrived.wait()
            if not self._offers:
                continue
            await trio.sleep(self.job.offer_wait)
            await self._accept_best(list(self._offers))
            self._requests.discard(request_id)

    def _advertisement(self, request_id: str) -> m.Advertisement:
        executor = self.job.executor
        return m.Advertisement(
            request_id,
            str(self.transport.peer_id),
            self.public_address or self.address,
            convert(self.job.resources, m.Resources),
            (m.Executor(cls=executor.cls, name=executor.name),),
            self.job.bid,
            self._wall() + AD_LIFETIME,
        )

    async def _accept_best(self, offers: list[tuple[m.WorkerOffer, str]]) -> None:
        """Accept the cheapest offers until enough workers are placed.

        Offers are tried cheapest first; when one has not answered within ``HEDGE`` the next
        is tried as well, so an offer naming an address that never answers cannot make the
        real offers lapse behind it (a temporary lease lasts 0.5 s). If that leaves more
        leases than needed, the dearest are not renewed and lapse on their workers.
        """
        taken = {p.worker for p in self.placements}
        # Cheapest first; equal prices in arrival order (sorted is stable).
        ranked = sorted(
            (o for o in offers if o[1] not in taken and self._acceptable(o[0], o[1])),
            key=lambda o: o[0].price,
        )
        needed = self.job.workers - len(self.placements)
        accepted: list[Placement] = []
        async with trio.open_nursery() as nursery:
            for offer, sender in ranked:
                if len(accepted) >= needed:
                    break
                answered = trio.Event()
                nursery.start_soon(self._accept, offer, sender, accepted, answered)
                with trio.move_on_after(HEDGE):
                    await answered.wait()
        accepted.sort(key=lambda p: p.price)
        for extra in accepted[needed:]:
            log.info("%s: lease %s not needed; it lapses", _short(extra.worker), extra.lease_id)
        self.placements.extend(accepted[:needed])

    def _acceptable(self, offer: m.WorkerOffer, sender: str) -> bool:
        """A price we can pay (finite, not negative, at most ours) for at least what we asked."""
        limit = self.job.max_price or self.job.bid
        price = offer.price
        asked, got = self.job.resources, offer.resources
        why = ""
        if not (math.isfinite(price) and 0.0 <= price <= limit):
            why = f"price {price!r} outside 0..{limit:g}"
        elif not covers(got, asked):
            why = f"offers {got} for {asked}"
        if why:
            log.info("%s: offer %s refused: %s", _short(sender), offer.lease_id, why)
            return False
        return True

    async def _accept(
        self, offer: m.WorkerOffer, sender: str, accepted: list[Placement], answered: trio.Event
    ) -> None:
        try:
            answer = await self.transport.request(
                offer.worker_address,
                m.RenewLease(offer.lease_id),
                expect=PeerId.parse(sender),
                timeout=ACCEPT_TIMEOUT,
            )
        except NetError as exc:
            log.info("%s: could not accept lease %s: %s", _short(sender), offer.lease_id, exc)
            return
        finally:
            answered.set()
        if not isinstance(answer.message, m.LeaseRenewed):
            log.info("%s: lease %s refused: %s", _short(sender), offer.lease_id, answer.message)
            return
        accepted.append(
            Placement(
                sender,
                offer.worker_address,
                offer.lease_id,
                offer.price,
                expires=answer.message.expires,
            )
        )
        log.info("%s: lease %s accepted at price %s", _short(sender), offer.lease_id, offer.price)

    async def _keep_renewed(self, placement: Placement) -> None:
        while placement.phase not in FINAL:
            await trio.sleep(self.job.renew_interval)
            if placement.phase in FINAL:
                return
            try:
                answer = await self.transport.request(
                    placement.address,
                    m.RenewLease(placement.lease_id),
                    expect=PeerId.parse(placement.worker),
                    timeout=2.0,
                )
            except NetError as exc:
                log.warning("%s: renewal failed: %s", _short(placement.worker), exc)
                if self._wall() > placement.expires:
                    self._end(placement, "lost", f"lease expired unrenewed ({exc.reason})")
                continue
            if isinstance(answer.message, m.LeaseRenewed):
                placement.expires = answer.message.expires
            elif placement.phase not in FINAL:
                reason = getattr(answer.message, "reason", type(answer.message).__name__)
                self._end(placement, "lost", f"renewal refused: {reason}")

    def _end(self, placement: Placement, phase: Literal["failed", "lost"], reason: str) -> None:
        """The part ends on our side (a failed dispatch, a lost lease) unless it already ended."""
        if placement.phase in FINAL:
            return
        placement.phase = phase
        placement.reason = reason
        log.warning(
            "%s: lease %s %s: %s", _short(placement.worker), placement.lease_id, phase, reason
        )
        placement.ended.set()

    async def _dispatch_all(self) -> None:
        workers = [p.worker for p in self.placements]
        for index, placement in enumerate(self.placements):
            placement.job_id = str(uuid.uuid4())
            self._by_job[placement.job_id] = placement
            spec = {
                "job_id": placement.job_id,
                "index": index,
                "workers": workers,
                "peers": [w for w in workers if w != placement.worker],
                "scheduler": str(self.transport.peer_id),
                "config": self.job.spec,
            }
            executor = m.Executor(cls=self.job.executor.cls, name=self.job.executor.name)
            try:
                answer = await self.transport.request(
                    placement.address,
                    m.DispatchJob(
                        placement.job_id, placement.lease_id, executor, json.dumps(spec)
                    ),
                    expect=PeerId.parse(placement.worker),
                    timeout=30.0,
                )
            except NetError as exc:
                self._end(placement, "failed", f"dispatch failed: {exc}")
                continue
            if isinstance(answer.message, m.JobDispatched):
                if placement.phase == "accepted":
                    placement.phase = "dispatched"
                log.info("%s: job %s dispatched", _short(placement.worker), placement.job_id)
            elif isinstance(answer.message, m.DispatchFailed):
                detail = f" ({answer.message.detail})" if answer.message.detail else ""
                self._end(
                    placement, "failed", f"dispatch refused: {answer.message.reason}{detail}"
                )
            else:
                self._end(
                    placement, "failed", f"dispatch answered {type(answer.message).__name__}"
                )


def describe_progress(progress: m.ProgressKind) -> str:
    """One human line for a progress report."""
    match progress:
        case m.RoundMetrics(round=n, metrics=metrics):
            names = sorted(metrics)
            shown = " ".join(f"{k}={metrics[k]:.4g}" for k in names[:SHOWN_METRICS])
            more = f" (+{len(names) - SHOWN_METRICS} more)" if len(names) > SHOWN_METRICS else ""
            return f"round {n}: {shown}{more}"
        case m.BatchStatus(batch_size=size):
            return f"step done (batch {size})"
        case m.UpdateStarted():
            return "sending its update"
        case m.UpdateApplied():
            return "update applied"
        case m.UpdateReceived():
            return "update received"


def _short(peer: str) -> str:
    return f"worker …{peer[-6:]}"


async def run_scheduler(
    settings: SchedulerSettings, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> Outcome:
    """Run the job described by ``settings`` on the real network; its outcome."""
    identity = load_key_file(settings.node_key)
    with Endpoint(identity, NetConfig(tls=tls_files(settings))) as transport:
        scheduler = Scheduler(
            transport,
            settings.job,
            gateways=settings.gateway_addresses,
            address=settings.listen_address,
            public_address=settings.external_address,
        )
        log.info("scheduler %s: %d worker(s) wanted", identity.peer_id, settings.job.workers)
        return await scheduler.run(task_status=task_status)
