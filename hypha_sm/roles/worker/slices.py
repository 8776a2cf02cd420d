"""Data slices for a job: ask its scheduler which slice, pull it from a data node, say when done.

What the bridge's slice fetch does (``{"type": "scheduler", "peer": S, "dataset": D}`` as in
the original, or ``{"type": "slice", "dataset": D}``, which asks the job's own scheduler):

1. Ask the scheduler (``data_slice_request`` naming the job). ``not_found`` means "ask again
   after ``retry_after``" (no slice is free yet); ``error`` ends the fetch with the reason.
2. Pull the slice from the data node the answer names, presenting the scheduler's grant
   (``slice_fetch``): the data node pushes it over the bulk channel to this node's bulk server,
   which verifies size and SHA-256 and only then moves it, whole, to ``artifacts/<index>``.
   If that data node fails, the alternates are tried in turn.
3. The slices a job fetched before are reported done (``slice_done``) when it asks for the
   next one, and the last one when the job finishes: a job asks for a slice once it used the
   previous one, as the original's training loop does.
4. Prefetch: once a slice is handed over, the next ones (``prefetch``, default 1) are fetched
   in the background, so the job's next fetch usually finds its slice already here. The
   original has no prefetch: every fetch waited for a scheduler round trip and the transfer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import trio

from hypha_sm.datasets.manifest import DatasetError, Manifest
from hypha_sm.datasets.manifest import decode as decode_manifest
from hypha_sm.net.bulk import new_transfer_id
from hypha_sm.net.discovery import Gateways
from hypha_sm.net.transport import NetError, Transport
from hypha_sm.roles.worker.bridge import BridgeError, FetchedFile
from hypha_sm.roles.worker.peers import PeerFiles
from hypha_sm.wire import messages as m
from hypha_sm.wire.identity import IdentityError, PeerId

log = logging.getLogger(__name__)

#: How long one slice may take to arrive from a data node.
PULL_TIMEOUT = 300.0
#: How many times "no slice free yet" is waited out before the fetch gives up.
MAX_WAITS = 600
#: Manifests kept (one per dataset version the node's jobs use).
MAX_MANIFESTS = 16
#: The most slices a job may keep fetched ahead (each takes disk in its work dir).
MAX_PREFETCH = 4
#: Rounds over every data node of a slice, after the first, before a fetch gives up
#: (pauses of 0.5, 1, 2, 4 and 8 s: about 15 s in all).
PULL_RETRIES = 5


@dataclass
class _Prefetch:
    """A slice fetched ahead into a hidden file of the job's artifacts dir."""

    staged: Path
    dataset: str
    ready: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    answer: m.DataSliceAnswer | None = None
    served: m.SliceServed | None = None
    error: BridgeError | None = None


@dataclass
class _JobSlices:
    """One job's slices: handed to it and not yet reported done, and fetched ahead."""

    depth: int = 1
    outstanding: list[tuple[str, str, str, int]] = field(default_factory=list)
    ahead: list[_Prefetch] = field(default_factory=list)
    #: Set when no "slice done" report is in flight (reports run beside the job).
    reported: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.reported.set()


class SliceFetcher:
    """Fetches slices for the jobs of one worker, ``prefetch`` ahead of each job's use.

    While a job trains on slice k, slices k+1 .. k+prefetch are already on their way (into
    hidden files of its artifacts dir); a fetch that finds its slice there answers at once.
    Slices fetched ahead that the job never asks for are not reported done: when the job's
    placement ends the scheduler takes them back, as it does a lost worker's.
    """

    def __init__(
        self,
        transport: Transport,
        gateways: Gateways,
        files: PeerFiles,
        bulk_address: Callable[[], str],
        scheduler_of: Callable[[str], tuple[str, str] | None],
        *,
        nursery: trio.Nursery | None = None,
        prefetch: int = 1,
    ) -> None:
        self.transport = transport
        self.gateways = gateways
        self.files = files
        self._bulk_address = bulk_address
        self._scheduler_of = scheduler_of
        self._nursery = nursery
        self.prefetch = prefetch if nursery is not None else 0
        self._jobs: dict[str, _JobSlices] = {}
        #: Manifests checked against a granted hash: (dataset, manifest hash) -> manifest.
        self._manifests: dict[tuple[str, str], Manifest] = {}

    async def fetch(
        self,
        job_id: str,
        dataset: str,
        artifacts: Path,
        peer: str | None,
        prefetch: int | None = None,
    ) -> list[FetchedFile]:
        """The next slice of ``dataset`` for ``job_id``, placed at ``artifacts/<index>``.

        ``prefetch`` (0 to ``MAX_PREFETCH``) sets how many slices this job keeps fetched ahead.
        """
        known = self._scheduler_of(job_id)
        if known is None:
            raise BridgeError(502, "upstream_error", "the job's scheduler is not known")
        scheduler, address = known
        if peer is not None and peer != scheduler:
            # The original lets the job name any scheduler; only the job's own hands it slices.
            raise BridgeError(400, "invalid_request", "the peer is not this job's scheduler")
        job = self._jobs.setdefault(job_id, _JobSlices(depth=self.prefetch))
        if prefetch is not None and self._nursery is not None:
            job.depth = min(max(prefetch, 0), MAX_PREFETCH)
        if self._nursery is None:
            await self._report_done(job_id, job, address)
        else:
            self._report_beside(self._nursery, job_id, job, address)
        if job.ahead and job.ahead[0].dataset != dataset:
            self._drop_ahead(job)  # the job moved to another dataset
        if job.ahead:
            ahead = job.ahead.pop(0)
            await ahead.ready.wait()
            if ahead.error is not None:
                raise ahead.error
            answer, served = ahead.answer, ahead.served
            assert answer is not None
            assert served is not None
            target = artifacts / str(answer.index)
            os.replace(ahead.staged, target)
        else:
            answer = await self._ask(job_id, dataset, scheduler, address)
            target = artifacts / str(answer.index)
            served = await self._pull(answer, target)
        job.outstanding.append((scheduler, address, dataset, answer.index))
        self._fetch_ahead(job_id, job, dataset, artifacts, scheduler, address)
        return [FetchedFile(target, served.size, served.sha256)]

    def _fetch_ahead(
        self,
        job_id: str,
        job: _JobSlices,
        dataset: str,
        artifacts: Path,
        scheduler: str,
        address: str,
    ) -> None:
        while self._nursery is not None and len(job.ahead) < job.depth:
            ahead = _Prefetch(artifacts / f".prefetch-{new_transfer_id()}", dataset)
            job.ahead.append(ahead)

            async def run(ahead: _Prefetch = ahead) -> None:
                with ahead.scope:
                    try:
                        ahead.answer = await self._ask(job_id, dataset, scheduler, address)
                        ahead.served = await self._pull(ahead.answer, ahead.staged)
                    except BridgeError as exc:
                        ahead.error = exc
                    # Anything else the job's next fetch reports, as the bridge would.
                    except Exception as exc:
                        log.warning("prefetch for %s failed: %r", job_id, exc)
                        ahead.error = BridgeError(
                            502, "upstream_error", f"{type(exc).__name__}: {exc}"
                        )
                    finally:
                        ahead.ready.set()

            self._nursery.start_soon(run)

    async def job_ended(self, job_id: str, finished: bool) -> None:
        """A finished job used the slices it was handed: report them done.

        Slices fetched ahead and never asked for are dropped (their files removed); the
        scheduler takes them back when the job's placement ends. A failed job's go back the
        same way.
        """
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        self._drop_ahead(job)
        await job.reported.wait()  # the reports already under way arrive before the exit does
        if finished and job.outstanding:
            await self._report_done(job_id, job, job.outstanding[-1][1])

    @staticmethod
    def _drop_ahead(job: _JobSlices) -> None:
        """Stop and remove the slices fetched ahead (the scheduler reclaims them later)."""
        for ahead in job.ahead:
            ahead.scope.cancel()
            ahead.staged.unlink(missing_ok=True)
        job.ahead.clear()

    def _report_beside(
        self, nursery: trio.Nursery, job_id: str, job: _JobSlices, address: str
    ) -> None:
        """Report the slices the job used without making it wait for the answers.

        Reports go one after the other (each waits for the one before), so ``job.reported``,
        the latest, is set once every report so far was answered.
        """
        if not job.outstanding:
            return
        used = _JobSlices(outstanding=job.outstanding)
        job.outstanding = []
        before, job.reported = job.reported, trio.Event()
        done = job.reported

        async def report() -> None:
            try:
                await before.wait()
                await self._report_done(job_id, used, address)
            finally:
                done.set()

        nursery.start_soon(report)

    async def _report_done(self, job_id: str, job: _JobSlices, address: str) -> None:
        while job.outstanding:
            scheduler, _, dataset, index = job.outstanding[0]
            try:
                await self.transport.request(
                    address,
                    m.SliceDoneReport(job_id, dataset, index),
                    expect=PeerId.parse(scheduler),
                    timeout=10.0,
                )
            except NetError as exc:  # refused (e.g. taken back after a timeout) or unreachable
                log.warning("slice %d of %s: done not acknowledged: %s", index, dataset, exc)
            job.outstanding.pop(0)

    async def _ask(
        self, job_id: str, dataset: str, scheduler: str, address: str
    ) -> m.DataSliceAnswer:
        for _ in range(MAX_WAITS):
            try:
                reply = await self.transport.request(
                    address,
                    m.DataSliceRequest(dataset, job_id),
                    expect=PeerId.parse(scheduler),
                    timeout=10.0,
                )
            except NetError as exc:
                raise BridgeError(502, "upstream_error", f"the scheduler: {exc}") from None
            answer = reply.message
            if not isinstance(answer, m.DataSliceAnswer):
                raise BridgeError(502, "upstream_error", "the scheduler answered something else")
            if answer.outcome == "found":
                return answer
            if answer.outcome == "error" or answer.retry_after <= 0:
                raise BridgeError(404, "not_found", f"no slice: {answer.reason}")
            await trio.sleep(answer.retry_after)
        raise BridgeError(504, "timeout", "no slice became free")

    async def _pull(self, answer: m.DataSliceAnswer, target: Path) -> m.SliceServed:
        """From the named data node, then each alternate, until one delivers it verified.

        When every one failed, it tries them all again after a pause (``PULL_RETRIES`` rounds,
        the pause doubling from half a second), so a data node that restarts mid-job costs the
        job a wait, not its run. Then it gives up, naming each failure.
        """
        pause = 0.5
        for _ in range(PULL_RETRIES):
            try:
                return await self._pull_round(answer, target)
            except BridgeError as exc:
                log.warning("%s; again in %.1f s", exc.detail, pause)
                await trio.sleep(pause)
                pause *= 2
        return await self._pull_round(answer, target)

    async def _pull_round(self, answer: m.DataSliceAnswer, target: Path) -> m.SliceServed:
        problems = []
        for provider in (answer.provider, *answer.alternates):
            address = answer.address if provider == answer.provider else ""
            if not address:
                found = await self.gateways.lookup_peer(provider)
                address = found[0] if found else ""
            if not address:
                problems.append(f"{provider[-6:]}: no address")
                continue
            try:
                expected = await self._slice_sha256(provider, address, answer, target.parent)
                return await self._pull_from(provider, address, answer, target, expected)
            except (NetError, IdentityError, trio.TooSlowError, DatasetError) as exc:
                problems.append(f"…{provider[-6:]}: {exc}")
                log.warning("slice %d from …%s failed: %s", answer.index, provider[-6:], exc)
        raise BridgeError(502, "upstream_error", f"slice {answer.index}: " + "; ".join(problems))

    async def _slice_sha256(
        self, provider: str, address: str, answer: m.DataSliceAnswer, directory: Path
    ) -> str:
        """The slice's SHA-256 from the dataset's manifest.

        The manifest is checked against the hash the scheduler granted (fetched once per
        dataset version, then kept), so a data node cannot hand a job other bytes under a hash
        of its own making.
        """
        key = (answer.dataset, answer.manifest_hash)
        manifest = self._manifests.get(key)
        if manifest is None:
            if not answer.manifest_hash.startswith("sha256:"):
                raise DatasetError("the scheduler's answer names no manifest hash")
            target = directory / f".manifest-{new_transfer_id()}"
            request = m.SliceFetch(answer.grant, "", "", manifest=True)  # filled by _receive
            try:
                await self._receive(
                    provider,
                    address,
                    target,
                    answer.manifest_hash.removeprefix("sha256:"),
                    request,
                )
                manifest = decode_manifest(target.read_bytes(), f"{answer.dataset}'s manifest")
            finally:
                target.unlink(missing_ok=True)
            if manifest.name != answer.dataset:
                raise DatasetError(f"the manifest is of {manifest.name!r}, not {answer.dataset!r}")
            while len(self._manifests) >= MAX_MANIFESTS:
                del self._manifests[next(iter(self._manifests))]
            self._manifests[key] = manifest
        if not 0 <= answer.index < len(manifest.slices):
            raise DatasetError(f"slice {answer.index} is not in the manifest")
        return manifest.slices[answer.index].sha256

    async def _pull_from(
        self,
        provider: str,
        address: str,
        answer: m.DataSliceAnswer,
        target: Path,
        sha256: str,
    ) -> m.SliceServed:
        request = m.SliceFetch(answer.grant, "", "")  # filled by _receive
        return await self._receive(provider, address, target, sha256, request)

    async def _receive(
        self,
        provider: str,
        address: str,
        target: Path,
        sha256: str,
        request: m.SliceFetch,
    ) -> m.SliceServed:
        """Ask ``provider`` to push a file we expect (exactly ``sha256``) into ``target``."""
        transfer_id = new_transfer_id()
        arrived = self.files.expect(provider, transfer_id, target, sha256)
        request = msgspec.structs.replace(
            request, transfer_id=transfer_id, bulk_address=self._bulk_address()
        )
        try:
            with trio.fail_after(PULL_TIMEOUT):
                reply = await self.transport.request(
                    address, request, expect=PeerId.parse(provider), timeout=PULL_TIMEOUT
                )
                served = reply.message
                if not isinstance(served, m.SliceServed):
                    raise NetError("unexpected_answer", address, detail=type(served).__name__)
                await arrived.wait()  # placed before the data node heard "verified"
                return served
        finally:
            self.files.forget(provider, transfer_id)
