"""The data node's shell: verified datasets on disk, the pure core on the shared loop, the network.

At start every dataset directory is checked (``datasets.prepare.verify``: the manifest and
every slice's size and SHA-256); one that does not match is refused by name and not served.
The core (``roles/data/core``) decides which fetches to serve; this module opens the grant a
fetch carries (its signature: the core gets who sealed it and what it says), announces the
records at the gateways, and sends each granted slice over the bulk channel, naming the
manifest's SHA-256: the worker's bulk server verifies the bytes against it, so a slice that
changed on disk after the start check is never delivered as good.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from hypha_sm.config.data import DataNodeSettings
from hypha_sm.datasets.manifest import MANIFEST_FILE, DatasetError, Manifest, manifest_hash
from hypha_sm.datasets.prepare import verify
from hypha_sm.net.bulk import BulkError, send_file
from hypha_sm.net.discovery import Gateways
from hypha_sm.net.tls import TlsFiles
from hypha_sm.net.transport import NetError, Transport
from hypha_sm.roles.data.core import effects as fx
from hypha_sm.roles.data.core import events as ev
from hypha_sm.roles.data.core.plan import DataPlan, Served
from hypha_sm.roles.data.core.role import DATA
from hypha_sm.roles.data.core.state import DataState
from hypha_sm.runtime.loop import Inbox, Stepper, recorded_stepper, run_loop
from hypha_sm.runtime.replies import Replies, start_later
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened, open_record
from hypha_sm.wire.identity import IdentityError, PeerId

log = logging.getLogger(__name__)
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass(frozen=True)
class Dataset:
    """A dataset checked at start: where it is, its manifest and the manifest's hash."""

    directory: Path
    manifest: Manifest
    manifest_hash: str


def load_datasets(directories: list[Path]) -> dict[str, Dataset]:
    """Check every directory; the datasets that hold, by name. DatasetError if none does.

    A directory that does not hold (or repeats a name) is logged by name and skipped.
    """
    found: dict[str, Dataset] = {}
    for directory in directories:
        try:
            manifest, data = verify(directory)
        except DatasetError as exc:
            log.error("not serving %s: %s", directory, exc)
            continue
        if manifest.name in found:
            log.error(
                "not serving %s: dataset %r is already served from %s",
                directory,
                manifest.name,
                found[manifest.name].directory,
            )
            continue
        found[manifest.name] = Dataset(directory, manifest, manifest_hash(data))
        log.info("serving %s from %s: %d slices", manifest.name, directory, len(manifest.slices))
    if not found:
        raise DatasetError("no dataset to serve: every configured directory failed its check")
    return found


def plan_of(settings: DataNodeSettings, datasets: dict[str, Dataset]) -> DataPlan:
    """The core's plan for these settings and checked datasets."""
    return DataPlan(
        datasets=tuple(
            Served(name, len(d.manifest.slices), d.manifest_hash)
            for name, d in sorted(datasets.items())
        ),
        grant_from=tuple(settings.grant_from),
        max_concurrent=settings.max_concurrent,
        send_timeout=settings.send_timeout,
        announce_every=settings.announce_every,
        record_lifetime=settings.record_lifetime,
    )


class DataNode:
    """Serves ``datasets`` to the workers schedulers grant slices to."""

    def __init__(
        self,
        transport: Transport,
        datasets: dict[str, Dataset],
        plan: DataPlan,
        *,
        gateways: list[str],
        address: str,
        public_address: str | None = None,
        tls: TlsFiles | None = None,
        event_log: BinaryIO | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.datasets = datasets
        self.gateways = Gateways(transport, gateways, wall=wall)
        self.address = address
        self.public_address = public_address
        self.tls = tls
        self._wall = wall
        self.stepper: Stepper[DataState] = recorded_stepper(DATA, plan, event_log)
        self._inbox = Inbox(4096, ev.Tick)
        #: Set once a shutdown drained every fetch.
        self.stopped = trio.Event()
        self._replies = Replies()
        self._nursery: trio.Nursery | None = None

    @property
    def state(self) -> DataState:
        """The core's state (read it between steps only)."""
        return self.stepper.state

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until a shutdown has drained every fetch."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            bound = await nursery.start(self.transport.serve, self.address, self._answer)
            self.public_address = self.public_address or bound
            task_status.started(bound)
            try:
                await run_loop(
                    self.stepper,
                    self._inbox,
                    self._perform,
                    stopped=self.stopped,
                    wall=self._wall,
                )
            finally:
                nursery.cancel_scope.cancel()

    async def shutdown(self) -> None:
        """Take no new fetches; stop once the ones in flight ended."""
        await self._inbox.send(ev.ShutdownRequested())

    # -- requests ------------------------------------------------------------------------------

    async def _answer(self, opened: Opened) -> m.Message:
        message = opened.message
        if isinstance(message, m.Health):
            return m.HealthReply(not self.stopped.is_set())
        if not isinstance(message, m.SliceFetch):
            return m.Refused("unsupported")
        token, _ = self._replies.open()
        self._inbox.push_request(_fetch_event(token, str(opened.sender), message))
        return await self._replies.wait(token)

    # -- effects -------------------------------------------------------------------------------

    def _later(self, work: Awaitable[None]) -> None:
        assert self._nursery is not None
        start_later(self._nursery, work)

    def _perform(self, effect: fx.Effect) -> None:
        match effect:
            case fx.Announce(expires_wall=expires):
                self._later(self._announce(expires))
            case fx.SendSlice():
                self._later(self._send(effect))
            case fx.SendManifest():
                self._later(self._send_manifest(effect))
            case fx.ReplyFetch(reply_to=token, transfer_id=tid, reason=reason):
                served = m.SliceServed(tid, effect.size, effect.sha256)
                self._replies.answer(token, m.Refused(reason) if reason else served)
            case fx.Notice(level=level, text=text):
                log.log(_LEVELS[level], "%s", text)
            case fx.NodeStopped():
                self.stopped.set()

    async def _announce(self, expires: float) -> None:
        """This node's peer record and a record per dataset at every gateway."""
        stored = 0
        problems = []
        lifetime = max(1.0, expires - self._wall())
        for gateway in self.gateways.addresses:
            try:
                await self.gateways.register(
                    gateway, [self.public_address or self.address], lifetime
                )
                for name, dataset in sorted(self.datasets.items()):
                    record = m.DatasetRecord(
                        name,
                        str(self.transport.peer_id),
                        expires,
                        len(dataset.manifest.slices),
                        dataset.manifest_hash,
                    )
                    answer = await self.transport.request(
                        gateway, record, timeout=self.gateways.timeout
                    )
                    if not isinstance(answer.message, m.Ack):
                        raise NetError(
                            "unexpected_answer", gateway, detail=type(answer.message).__name__
                        )
                stored += 1
            except NetError as exc:
                problems.append(f"{gateway}: {exc.reason}")
        if stored:
            await self._inbox.send(ev.Announced())
        else:
            await self._inbox.send(ev.AnnounceFailed("; ".join(problems)[:200] or "no gateways"))

    async def _send(self, effect: fx.SendSlice) -> None:
        dataset = self.datasets[effect.dataset]  # the core serves only these
        piece = dataset.manifest.slices[effect.index]
        await self._push(
            effect.key,
            effect.peer,
            effect.bulk_address,
            effect.transfer_id,
            dataset.directory / piece.file,
            f"{effect.dataset}-{effect.index:05d}.safetensors",
            "slice",
            piece.sha256,  # the manifest's: the receiver checks the bytes against it
        )

    async def _send_manifest(self, effect: fx.SendManifest) -> None:
        dataset = self.datasets[effect.dataset]
        await self._push(
            effect.key,
            effect.peer,
            effect.bulk_address,
            effect.transfer_id,
            dataset.directory / MANIFEST_FILE,
            f"{effect.dataset}.manifest.json",
            "manifest",
            dataset.manifest_hash.removeprefix("sha256:"),  # what the node announced
        )

    async def _push(
        self,
        key: str,
        peer: str,
        bulk_address: str,
        transfer_id: str,
        path: Path,
        name: str,
        purpose: str,
        sha256: str,
    ) -> None:
        """Send one file to a peer's bulk server and report how it went to the core."""
        try:
            result = await send_file(
                path,
                to=bulk_address,
                identity=self.transport.identity,
                peer=PeerId.parse(peer),
                tls=self.tls,
                name=name,
                purpose=purpose,
                sha256=sha256,
                transfer_id=transfer_id,
            )
        except (BulkError, OSError, IdentityError) as exc:
            log.warning("%s to …%s failed: %s", name, peer[-6:], exc)
            await self._inbox.send(ev.SendFailed(key, str(exc)[:200]))
            return
        await self._inbox.send(ev.SliceSent(key, result.size, result.sha256))


def _fetch_event(token: int, peer: str, fetch: m.SliceFetch) -> ev.FetchRequested:
    """The fetch as the core sees it: the grant's signer ("" if it does not verify) and terms."""
    opened = open_record(fetch.grant)
    grant = opened.message if isinstance(opened, Opened) else None
    if not isinstance(grant, m.SliceGrant):
        return ev.FetchRequested(
            token, peer, fetch.transfer_id, fetch.bulk_address, "", manifest=fetch.manifest
        )
    return ev.FetchRequested(
        token,
        peer,
        fetch.transfer_id,
        fetch.bulk_address,
        str(opened.sender),  # type: ignore[union-attr]
        grant.dataset,
        grant.index,
        grant.manifest_hash,
        grant.worker,
        grant.expires,
        fetch.manifest,
    )
