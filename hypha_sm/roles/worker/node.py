"""The worker node: the pure core, run by the shared runtime loop, joined to the network and the executors.

The loop (``hypha_sm.runtime.loop``) owns the core's state and steps it; this module turns what
arrives (verified requests, advertisements, the reports of effects) into the core's events and
carries out its effects. Requests wait for the reply effect that carries their token. Nothing
here looks at a machine's phase.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from hypha_sm.core.resources import Amounts, convert
from hypha_sm.core.trace import Now
from hypha_sm.net.discovery import Gateways
from hypha_sm.net.transport import NetError, Subscription, Transport
from hypha_sm.roles.worker.core.effects import (
    Effect,
    NodeStopped,
    Notice,
    ReplyDispatched,
    ReplyDispatchFailed,
    ReplyRenewed,
    ReplyRenewFailed,
    SendJobStatus,
    SendOffer,
    StartJob,
    StopJob,
)
from hypha_sm.roles.worker.core.events import (
    AdvertisementReceived,
    DispatchRequested,
    Event,
    JobExited,
    JobStarted,
    JobStartFailed,
    OfferDelivered,
    OfferFailed,
    RenewRequested,
    ShutdownRequested,
    StatusDelivered,
    StatusFailed,
    Tick,
)
from hypha_sm.roles.worker.core.policy import ExecutorRef
from hypha_sm.roles.worker.core.state import WorkerState
from hypha_sm.roles.worker.executor import Executor, StartFailed
from hypha_sm.roles.worker.market import MarketLog
from hypha_sm.roles.worker.telemetry import Telemetry
from hypha_sm.runtime.loop import Inbox, LoopStats, Stepper, run_loop
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import PeerId

log = logging.getLogger(__name__)


TransferOffers = Callable[[PeerId, m.TransferOffer], m.TransferAnswer]
"""``consider(sender, offer)``: the node's answer to a peer that wants to push it a file."""

#: How long this node's peer record at a gateway is valid; it is renewed at a third of this.
RECORD_LIFETIME = 300.0
#: How often a subscription's connection to its gateway is looked at (NNG has no event).
RECONNECT_POLL = 0.25
#: Most schedulers whose reply address the node remembers (the least recently offered to go).
MAX_SCHEDULERS = 4096


#: Most inputs stepped per loop wake-up (one log sync covers them all).
@dataclass
class NodeStats(LoopStats):
    """What the loop counted, and advertisements refused before the core."""

    refused_ads: int = 0
    effects: dict[str, int] = field(default_factory=dict)


class WorkerNode:
    """One worker: the core (stepped and recorded by ``stepper``), a transport, and an executor."""

    def __init__(
        self,
        stepper: Stepper[WorkerState],
        transport: Transport,
        executor: Executor,
        *,
        address: str,
        public_address: str | None = None,
        wall: Callable[[], float] = time.time,
        inbox_size: int = 4096,
        transfer_offers: TransferOffers | None = None,
        gateways: Gateways | None = None,
        telemetry: Telemetry | None = None,
        on_log_trouble: Callable[[], None] | None = None,
    ) -> None:
        self.stepper = stepper
        #: Called after a loop wake-up in which the event log failed to write.
        self.on_log_trouble = on_log_trouble
        self.transport = transport
        self.executor = executor
        self.address = address
        #: The address offers tell schedulers to use (default: the address actually bound).
        self.public_address = public_address
        self.stats = NodeStats()
        self._wall = wall
        # Requests a peer waits on (renew, dispatch) go first (``Inbox``).
        self._inbox = Inbox(inbox_size, Tick)
        self._tokens = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[m.Message]]] = {}
        # Scheduler peer id -> its reply address, learnt when we offer it a lease (never from
        # an advertisement we decline: a stranger's ads must cost no memory), bounded.
        self._schedulers: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._job_schedulers: dict[str, str] = {}  # job id -> the peer that dispatched it
        self._dispatching: dict[int, tuple[str, str]] = {}  # reply token -> (job id, peer)
        # A job's reports go out one at a time, in the order the core decided them: a job that
        # exits at once must not have its "finished" overtake its "running".
        self._status_queues: dict[str, collections.deque[SendJobStatus]] = {}
        self._stopped = trio.Event()
        self._subscriptions: list[Subscription] = []
        self._reconnected: dict[str, trio.Event] = {}  # gateway -> set when connected again
        self._transfer_offers = transfer_offers
        self.gateways = gateways or Gateways(transport, [], wall=wall)
        self.telemetry = telemetry or Telemetry()
        #: The node's market decisions in its log (the core's counters, read between steps).
        self.market = MarketLog(stepper.state.counters)

    # -- inputs ----------------------------------------------------------------------------

    async def _answer(self, opened: Opened) -> m.Message:
        """Handle one verified request: feed it to the core and wait for the reply effect."""
        message = opened.message
        if isinstance(message, m.Health):
            return m.HealthReply(self.healthy)
        if isinstance(message, m.TransferOffer):
            if self._transfer_offers is None:
                return m.Refused("unsupported")
            return self._transfer_offers(opened.sender, message)
        token = next(self._tokens)
        peer = str(opened.sender)
        event: Event
        if isinstance(message, m.RenewLease):
            event = RenewRequested(message.lease_id, peer, token)
        elif isinstance(message, m.DispatchJob):
            ref = ExecutorRef(cls=message.executor.cls, name=message.executor.name)
            self._dispatching[token] = (message.job_id, peer)
            event = DispatchRequested(
                message.job_id, message.lease_id, peer, ref, message.spec, token
            )
        else:
            return m.Refused("unsupported")
        done = trio.Event()
        slot: list[m.Message] = []
        self._waiting[token] = (done, slot)
        try:
            self._inbox.push_request(event)
            await done.wait()
        finally:
            self._waiting.pop(token, None)
            self._dispatching.pop(token, None)
        return slot[0]

    @property
    def healthy(self) -> bool:
        """Listening, not stopping, and connected to at least one gateway."""
        return not self._stopped.is_set() and any(s.connections for s in self._subscriptions)

    def scheduler_of(self, job_id: str) -> tuple[str, str] | None:
        """The peer that dispatched ``job_id`` and its reply address, if known."""
        scheduler = self._job_schedulers.get(job_id, "")
        address = self._schedulers.get(scheduler)
        return None if address is None else (scheduler, address)

    async def send_progress(self, progress: m.Progress) -> m.ProgressReply:
        """Forward a job's progress to the scheduler that dispatched it; its reply.

        Raises NetError if the scheduler is unknown, unreachable or answers something else.
        """
        scheduler = self._job_schedulers.get(progress.job_id, "")
        address = self._schedulers.get(scheduler)
        if address is None:
            raise NetError("unreachable", "", detail=f"no scheduler known for {progress.job_id}")
        answer = await self.transport.request(
            address, progress, expect=PeerId.parse(scheduler), timeout=30.0
        )
        if not isinstance(answer.message, m.ProgressReply):
            raise NetError("unexpected_answer", address, detail=type(answer.message).__name__)
        return answer.message

    async def _follow_gateway(self, address: str) -> None:
        """Locate one gateway (retrying), keep this node registered there, take its ads."""
        delay = 0.25
        registered = False
        while True:
            try:
                located = await self.gateways.locate(address)
                log.info("gateway %s: subscribing at %s", address, located.publish)
                if not registered:
                    self._nursery.start_soon(self._keep_registered, address)
                    registered = True
                await self._take_advertisements(located.publish, address)
            except NetError as exc:  # unreachable, or it named an address we cannot dial
                log.warning("gateway %s: %s; retrying in %.1f s", address, exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _keep_registered(self, gateway: str) -> None:
        """Keep a fresh signed peer record with our request address at ``gateway``.

        Renewed at a third of its lifetime, and at once when the subscription to the gateway
        connects again: a gateway that restarted has forgotten every record.
        """
        while True:
            reconnected = self._reconnected.setdefault(gateway, trio.Event())
            try:
                await self.gateways.register(
                    gateway, [self.public_address or self.address], RECORD_LIFETIME
                )
            except NetError as exc:
                log.warning("registering at gateway %s failed: %s", gateway, exc)
                await trio.sleep(2.0)
                continue
            with trio.move_on_after(RECORD_LIFETIME / 3):
                await reconnected.wait()
            self._reconnected[gateway] = trio.Event()

    async def _take_advertisements(self, publish: str, gateway: str) -> None:
        with self.transport.subscribe(dial=[publish]) as sub:
            self._subscriptions.append(sub)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_connection, sub, gateway)
                    await self._take_from(sub)
                    nursery.cancel_scope.cancel()
            finally:
                self._subscriptions.remove(sub)

    async def _watch_connection(self, sub: Subscription, gateway: str) -> None:
        """Tell ``_keep_registered`` when the subscription connects again after a loss."""
        connected = ever = sub.connections > 0
        while True:
            await trio.sleep(RECONNECT_POLL)
            now = sub.connections > 0
            if now and not connected:
                # Register again on every connection, the first included: a gateway that
                # restarted before this poll saw the first one has forgotten our record.
                self._reconnected.setdefault(gateway, trio.Event()).set()
                how = "connected again; registering again" if ever else "connected"
                log.info("gateway %s: %s", gateway, how)
                ever = True
            connected = now

    async def _take_from(self, sub: Subscription) -> None:
        async for opened in sub:
            ad = opened.message
            if not isinstance(ad, m.Advertisement) or ad.scheduler != str(opened.sender):
                self.stats.refused_ads += 1
                continue
            await self._inbox.send(
                AdvertisementReceived(
                    ad.request_id,
                    ad.scheduler,
                    ad.reply_address,
                    convert(ad.resources, Amounts),
                    tuple(ExecutorRef(cls=e.cls, name=e.name) for e in ad.executors),
                    ad.bid,
                    ad.expires,
                    ad.offer_lifetime,
                )
            )

    # -- the loop ----------------------------------------------------------------------------

    async def run(
        self, gateways: list[str], *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve, follow the gateways and step the core until the core says the node stopped.

        ``gateways`` are the gateways' request addresses; each is asked where to subscribe.
        """
        self.gateways.addresses = list(gateways)
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(self.transport.serve, self.address, self._answer)
            self.public_address = self.public_address or bound
            self._nursery = nursery
            for gateway in gateways:
                nursery.start_soon(self._follow_gateway, gateway)
            task_status.started(bound)
            await self._loop()
            nursery.cancel_scope.cancel()

    async def shutdown(self) -> None:
        """Ask the core to wind everything down (as SIGTERM does)."""
        await self.submit(ShutdownRequested())

    async def submit(self, event: Event) -> None:
        """Queue an input from the node's own side (a signal, the disk monitor)."""
        await self._inbox.send(event)

    async def _loop(self) -> None:
        await run_loop(
            self.stepper,
            self._inbox,
            self._perform,
            stopped=self._stopped,
            stats=self.stats,
            on_step=self._on_step,
            on_log_trouble=self.on_log_trouble,
            wall=self._wall,
        )

    def _on_step(self, event: Any, result: Any, now: Now) -> None:
        self.telemetry.on_step(event, result, now)
        self.market.on_step(event, result, now)

    # -- effects -----------------------------------------------------------------------------

    def _perform(self, effect: Effect) -> None:
        name = type(effect).__name__
        self.stats.effects[name] = self.stats.effects.get(name, 0) + 1
        match effect:
            case SendOffer():
                self._remember_scheduler(effect.scheduler, effect.reply_address)
                self._later(self._send_offer(effect))
            case ReplyRenewed():
                self._reply(effect.reply_to, m.LeaseRenewed(effect.lease_id, effect.expires_wall))
            case ReplyRenewFailed():
                self._reply(effect.reply_to, m.RenewFailed(effect.lease_id, effect.reason))
            case ReplyDispatched():
                # Only a dispatch the core accepted names the job's scheduler (progress goes there).
                dispatched = self._dispatching.get(effect.reply_to)
                if dispatched is not None:
                    self._job_schedulers[dispatched[0]] = dispatched[1]
                self._reply(
                    effect.reply_to,
                    m.JobDispatched(effect.job_id, effect.lease_id, effect.expires_wall),
                )
            case ReplyDispatchFailed():
                self._reply(
                    effect.reply_to,
                    m.DispatchFailed(
                        effect.job_id, m.clip(effect.reason), m.clip(effect.detail, m.MAX_DETAIL)
                    ),
                )
            case StartJob():
                self._later(self._run_job(effect))
            case StopJob():
                self._later(self.executor.stop(effect.job_id, force=effect.force))
            case SendJobStatus():
                self._queue_status(effect)
            case Notice():
                log.warning("%s", effect.detail, extra={"notice": effect.kind})
            case NodeStopped():
                self.market.stopped()
                log.info("node stopped (%s)", effect.reason)
                self._stopped.set()

    def _remember_scheduler(self, scheduler: str, address: str) -> None:
        self._schedulers[scheduler] = address
        self._schedulers.move_to_end(scheduler)
        while len(self._schedulers) > MAX_SCHEDULERS:
            self._schedulers.popitem(last=False)

    def _later(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        self._nursery.start_soon(run)

    def _reply(self, token: int, message: m.Message) -> None:
        waiting = self._waiting.get(token)
        if waiting is None:
            return  # the requester gave up (timeout); the core's decision stands
        done, slot = waiting
        slot.append(message)
        done.set()

    async def _send_offer(self, offer: SendOffer) -> None:
        message = m.WorkerOffer(
            offer.lease_id,
            offer.request_id,
            offer.price,
            convert(offer.resources, m.Resources),
            offer.expires_wall,
            self.public_address or self.address,
        )
        try:
            await self.transport.request(offer.reply_address, message, timeout=2.0)
        except NetError as exc:
            await self._inbox.send(OfferFailed(offer.lease_id, exc.reason))
        else:
            await self._inbox.send(OfferDelivered(offer.lease_id))

    async def _run_job(self, job: StartJob) -> None:
        try:
            await self.executor.start(job)
        except StartFailed as exc:
            # The scheduler hears it in the dispatch answer; the operator, here.
            self.telemetry.job_logger(log, job.job_id).warning(
                "job %s: could not start: %s", job.job_id, exc
            )
            await self._inbox.send(JobStartFailed(job.job_id, str(exc)))
            return
        except Exception as exc:  # an effect that fails reports back; it never kills the loop
            self.telemetry.job_logger(log, job.job_id).exception(
                "job %s: executor failed to start it", job.job_id
            )
            await self._inbox.send(JobStartFailed(job.job_id, f"executor error: {exc!r}"))
            return
        await self._inbox.send(JobStarted(job.job_id))
        code = await self.executor.wait(job.job_id)
        await self._inbox.send(JobExited(job.job_id, code))

    def _queue_status(self, status: SendJobStatus) -> None:
        queue = self._status_queues.get(status.job_id)
        if queue is not None:
            queue.append(status)
            return
        self._status_queues[status.job_id] = collections.deque([status])
        self._later(self._send_statuses(status.job_id))

    async def _send_statuses(self, job_id: str) -> None:
        queue = self._status_queues[job_id]
        try:
            while queue:
                await self._send_status(queue[0])
                queue.popleft()
        finally:
            del self._status_queues[job_id]

    async def _send_status(self, status: SendJobStatus) -> None:
        address = self._schedulers.get(status.scheduler)
        if address is not None:
            self._schedulers.move_to_end(status.scheduler)
        if address is None:
            await self._inbox.send(StatusFailed(status.job_id, status.status, "unknown_scheduler"))
            return
        message = m.JobStatus(
            status.job_id, status.status, status.exit_code, m.clip(status.reason, m.MAX_DETAIL)
        )
        try:
            await self.transport.request(
                address, message, expect=PeerId.parse(status.scheduler), timeout=5.0
            )
        except NetError as exc:
            await self._inbox.send(StatusFailed(status.job_id, status.status, exc.reason))
        else:
            await self._inbox.send(StatusDelivered(status.job_id, status.status))
        if status.status != "running":
            self._job_schedulers.pop(status.job_id, None)
