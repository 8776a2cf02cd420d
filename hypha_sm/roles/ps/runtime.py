"""The parameter server's shell: files in, the outer step off the loop, the update out.

It runs inside the worker (``runtime = "parameter-server"``) as one trio task per job, on the
same loop as every role (``runtime.loop``): the core (``roles/ps/core``) decides, this does.
Files arrive through the node's bulk receiver (only from the job's workers; each verified by
size and digest before it is placed); each is moved to a name of its own at once, so a second
file from the same worker cannot overwrite the first, and its header is read here and handed
to the core. Averaging and the outer step run in a thread, one tensor at a time, and the
update goes out to the workers as it is written (a ``GrowingFile``: its digest follows the
bytes), so a round costs about the longer of the step and the transfer, not their sum. Every
failure becomes an event; temporary files are removed as rounds end and the work dir with the
job.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import trio

from hypha_sm.core.errors import HyphaSMError
from hypha_sm.core.trace import Now
from hypha_sm.net.bulk import GrowingFile
from hypha_sm.roles.ps.core import model as ps
from hypha_sm.roles.ps.core.role import PS
from hypha_sm.runtime.loop import Inbox, open_run_log, recorded_stepper, run_loop
from hypha_sm.wire.bounds import json_problem
from hypha_sm.wire.messages import Progress, ProgressReply, UpdateApplied

log = logging.getLogger(__name__)

#: ``<peer>.<round>_local_gradients.pt`` (the original executor's name) or ``…<round>_…``.
_ROUND_IN_NAME = re.compile(r"^[^.]+\.(\d{1,9})_")

Receive = Callable[[Path, frozenset[str]], AsyncIterator[Any]]
Send = Callable[..., Awaitable[Mapping[str, str]]]
SendProgress = Callable[[Progress], Awaitable[ProgressReply]]


class JobSpecError(HyphaSMError):
    """The job's spec is not a parameter-server job this node can run; ``str()`` says why."""


def plan_from_spec(spec: Mapping[str, Any]) -> ps.PSPlan:
    """The PS plan from an original-shaped JobSpec (``executor.config``), with our extensions.

    ``updates`` (who sends pseudo-gradients) is the original's ``Receive`` reference; the
    optimizer its ``{"learning-rate", "momentum"}``. Extensions: ``quorum``, ``round_timeout``,
    ``weighting`` and ``compat_pairwise``.
    """
    executor = spec.get("executor")
    config = executor.get("config") if isinstance(executor, dict) else None
    if not isinstance(config, dict):
        raise JobSpecError('the spec has no "executor.config"')
    updates = config.get("updates")
    workers = updates.get("peers") if isinstance(updates, dict) else None
    if not isinstance(workers, list) or not all(isinstance(w, str) and w for w in workers):
        raise JobSpecError('"updates.peers" must list the training workers')
    optimizer = config.get("optimizer") or {}
    if not isinstance(optimizer, dict):
        raise JobSpecError('"optimizer" must be an object')
    try:
        plan = ps.PSPlan(
            workers=tuple(workers),
            learning_rate=float(optimizer.get("learning-rate", 0.7)),
            momentum=float(optimizer.get("momentum", 0.9)),
            quorum=int(config.get("quorum", 0)),
            round_timeout=float(config.get("round_timeout", 300.0)),
            weighting=config.get("weighting", "samples"),
            compat_pairwise=bool(config.get("compat_pairwise", False)),
        )
    except (TypeError, ValueError) as exc:
        raise JobSpecError(f"bad parameter-server config: {exc}") from None
    if plan.weighting not in ("samples", "equal"):
        raise JobSpecError('"weighting" must be "samples" or "equal"')
    problem = ps.plan_problem(plan)
    if problem:
        raise JobSpecError(problem)
    return plan


def describe_file(path: Path, name: str) -> tuple[int, str, int, str]:
    """(round in the name, layout signature, samples, problem) of a received file."""
    from hypha_sm.diloco.tensors import LayoutError, read_layout

    match = _ROUND_IN_NAME.match(name)
    rnd = int(match.group(1)) if match else 0
    try:
        layout = read_layout(path)
    except (LayoutError, OSError) as exc:
        return rnd, "", 0, str(exc)[:200]
    raw = layout.metadata.get("samples", "0")
    samples = int(raw) if raw.isdigit() and len(raw) < 12 else 0
    return rnd, layout.signature, samples, ""


def update_name(rnd: int) -> str:
    """The name a round's update has on the workers (the original's ``<round>_update…``)."""
    return f"{rnd}_update.safetensors"


@dataclass
class _Streamed:
    """A round's update, sent to the live workers while it is written; their outcomes once known."""

    round: int
    growing: GrowingFile
    outcomes: dict[str, str] = field(default_factory=dict)
    done: trio.Event = field(default_factory=trio.Event)


class ParameterServerJob:
    """One DiLoCo job's parameter server, from start to the scheduler's ``Done``."""

    def __init__(
        self,
        job_id: str,
        plan: ps.PSPlan,
        work_dir: Path,
        *,
        receive: Receive,
        send: Send,
        send_progress: SendProgress,
        event_log: BinaryIO | None = None,
    ) -> None:
        self.job_id = job_id
        self.plan = plan
        self.work_dir = work_dir
        self._receive = receive
        self._send = send
        self._send_progress = send_progress
        #: The rounds' event log (``hypha-sm replay`` reads it), if one is given.
        self.stepper = recorded_stepper(PS, plan, event_log)
        self._inbox = Inbox(256, ps.Tick)
        self._stopped = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._taken = 0
        self._streamed: _Streamed | None = None
        self.outcome: tuple[bool, str] = (False, "not run")

    async def run(self) -> int:
        """Run every round; 0 once the scheduler says done, 1 on failure (the reason is logged)."""
        incoming = self.work_dir / "incoming"
        incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
        # torch takes a second or more to import: before the first round, not inside it.
        await trio.to_thread.run_sync(importlib.import_module, "hypha_sm.diloco.outer")
        (self.work_dir / "rounds").mkdir(mode=0o700, exist_ok=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._collect, incoming)
                try:
                    await run_loop(self.stepper, self._inbox, self._perform, stopped=self._stopped)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if self.stepper.state.finished is None:  # cancelled: the core says stopped
                self.stepper.feed(ps.Stop(), _now())
        finished = self.stepper.state.finished or (False, "stopped")
        self.stepper.close()
        self.outcome = finished
        return 0 if finished[0] else 1

    async def _collect(self, incoming: Path) -> None:
        """Each file the job's workers push: moved to a name of its own, described, handed in."""
        peers = frozenset(self.plan.workers)
        async for item in self._receive(incoming, peers):
            self._taken += 1
            own = self.work_dir / "rounds" / f"in-{self._taken}"
            try:
                os.replace(item.path, own)
            except OSError as exc:
                log.warning("ps %s: cannot take %s: %s", self.job_id, item.path, exc)
                continue
            rnd, signature, samples, problem = await trio.to_thread.run_sync(
                describe_file, own, Path(item.path).name
            )
            await self._inbox.send(
                ps.FileArrived(
                    item.from_peer, str(own), item.size, rnd, signature, samples, problem
                )
            )

    def _later(self, work: Callable[[], Awaitable[None]]) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(work)

    def _perform(self, effect: ps.Effect) -> None:
        match effect:
            case ps.DropFile(path=path, peer=peer, reason=reason):
                Path(path).unlink(missing_ok=True)
                log.info("ps %s: dropped a file from %s: %s", self.job_id, peer[:12], reason)
            case ps.RemoveFiles(paths=paths):
                for path in paths:
                    Path(path).unlink(missing_ok=True)
            case ps.Aggregate():
                self._later(lambda: self._aggregate(effect))
            case ps.Publish():
                self._later(lambda: self._publish(effect))
            case ps.ReportUpdated(round=rnd):
                self._later(lambda: self._report(rnd))
            case ps.Notice(level=level, text=text):
                log.log(
                    logging.ERROR
                    if level == "error"
                    else logging.WARNING
                    if level == "warning"
                    else logging.INFO,
                    "ps %s: %s",
                    self.job_id,
                    text,
                )
            case ps.Finished():
                self._stopped.set()

    async def _aggregate(self, effect: ps.Aggregate) -> None:
        from hypha_sm.diloco.outer import Contribution, OuterStep, aggregate

        update = self.work_dir / "update.safetensors"  # written over each round
        contributions = [
            Contribution(Path(p), w) for p, w in zip(effect.files, effect.weights, strict=True)
        ]
        step = OuterStep(self.plan.learning_rate, self.plan.momentum)
        growing = await self._stream(effect, update)
        token = trio.lowlevel.current_trio_token()
        try:
            digest = await trio.to_thread.run_sync(
                lambda: aggregate(
                    contributions,
                    momentum_path=self.work_dir / "momentum.safetensors",
                    update_path=update,
                    step=step,
                    first_round=effect.first,
                    pairwise=self.plan.compat_pairwise,
                    on_written=growing.reporter(token) if growing is not None else None,
                )
            )
        except Exception as exc:  # torch and I/O errors alike: the round fails with the reason
            reason = f"{type(exc).__name__}: {exc}"
            if growing is not None:
                growing.fail(reason)
            await self._inbox.send(ps.AggregateFailed(effect.round, reason))
            return
        if growing is not None:
            growing.finish(digest)
        size = update.stat().st_size
        await self._inbox.send(ps.Aggregated(effect.round, str(update), size, digest))

    async def _stream(self, effect: ps.Aggregate, update: Path) -> GrowingFile | None:
        """Start sending the update to ``effect.send_to`` as it will be written.

        None: no one to send to, or the inputs' layout cannot be read (the step will say why).
        """
        from hypha_sm.diloco.outer import update_size
        from hypha_sm.diloco.tensors import LayoutError

        if not effect.send_to:
            return None
        try:
            size = await trio.to_thread.run_sync(update_size, Path(effect.files[0]))
            # The senders open it before the step writes a byte.
            await trio.Path(update).touch(mode=0o600)
        except (LayoutError, OSError):
            return None
        streamed = _Streamed(effect.round, GrowingFile(update, size))
        self._streamed = streamed

        async def send() -> None:
            peers = list(effect.send_to)
            outcomes = await self._send_update(
                update, peers, update_name(effect.round), growing=streamed.growing
            )
            streamed.outcomes.update(outcomes)
            streamed.done.set()

        self._later(send)
        return streamed.growing

    async def _send_update(
        self, path: Path, peers: list[str], name: str, **how: Any
    ) -> Mapping[str, str]:
        try:
            return await self._send(path, peers, "update", name=name, **how)
        except Exception as exc:
            return dict.fromkeys(peers, f"failed: {type(exc).__name__}: {exc}")

    async def _publish(self, effect: ps.Publish) -> None:
        """Each peer's outcome, from the transfer begun while the update was written.

        A peer that was not in it, or refused it as a node that predates trailers, gets the
        complete file.
        """
        outcomes: dict[str, str] = {}
        streamed, self._streamed = self._streamed, None
        if streamed is not None and streamed.round == effect.round:
            await streamed.done.wait()
            outcomes.update(streamed.outcomes)
        rest = [
            peer
            for peer in effect.peers
            if peer not in outcomes or outcomes[peer].startswith("refused: bad-offer")
        ]
        if rest:
            outcomes.update(
                await self._send_update(
                    Path(effect.path), rest, update_name(effect.round), blake3=effect.blake3
                )
            )
        await self._inbox.send(
            ps.Published(effect.round, {peer: outcomes[peer] for peer in effect.peers})
        )

    async def _report(self, rnd: int) -> None:
        try:
            reply = await self._send_progress(Progress(self.job_id, UpdateApplied()))
        except Exception as exc:
            await self._inbox.send(ps.ReportFailed(rnd, f"{type(exc).__name__}: {exc}"))
            return
        if reply.reply == "error":
            await self._inbox.send(ps.ReportFailed(rnd, "the scheduler answered error"))
            return
        await self._inbox.send(ps.Reported(rnd, reply.reply == "done"))


def _now() -> Now:
    return Now(trio.current_time(), time.time())


def load_spec(raw: str) -> ps.PSPlan:
    """The plan from the dispatched spec's JSON text."""
    if json_problem(raw.encode("utf-8", "surrogatepass")) is not None:
        raise JobSpecError("the spec is nested too deep")
    try:
        spec = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise JobSpecError(f"the spec is not JSON: {str(exc)[:100]}") from None
    if not isinstance(spec, dict):
        raise JobSpecError("the spec is not an object")
    return plan_from_spec(spec)


#: Parameter-server event logs kept in a node's ``<work_dir>/ps-events`` (the newest).
KEEP_LOGS = 20


def open_ps_log(directory: Path) -> BinaryIO:
    """A new event log for one parameter-server job; the oldest beyond ``KEEP_LOGS`` go."""
    sink = open_run_log(directory, PS)
    old = sorted(directory.glob("ps-*.jsonl"), key=lambda p: p.stat().st_mtime)[:-KEEP_LOGS]
    for path in old:
        path.unlink(missing_ok=True)
    return sink
