"""The parameter server sends each round's update while the outer step writes it.

``ParameterServerJob`` over its real machine, real files and the real outer step; the node's
file transfer is replaced by a recipient that follows the ``GrowingFile`` as a bulk sender
would (reading only reported bytes) and checks the digest at the end. What goes over sockets
is covered in ``test_net_bulk_trailer.py`` and, end to end, by the devnet's training tests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import blake3
import pytest
import trio

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from hypha_sm.diloco import outer  # noqa: E402
from hypha_sm.net.bulk import GrowingFile  # noqa: E402
from hypha_sm.roles.ps.core.model import PSPlan  # noqa: E402
from hypha_sm.roles.ps.runtime import ParameterServerJob  # noqa: E402
from hypha_sm.roles.worker.bridge import ReceivedFile  # noqa: E402
from hypha_sm.wire.messages import Progress, ProgressReply  # noqa: E402

WORKERS = ("w-one", "w-two")


class Recipients:
    """Both workers' side of ``send``: what each call brought, and how it arrived."""

    def __init__(self, predates_trailers: bool = False) -> None:
        self.predates_trailers = predates_trailers
        self.calls: list[tuple[str, str]] = []  # (how, name)
        self.updates: list[bytes] = []
        self.failures: list[str] = []

    async def send(
        self,
        path: Path,
        peers: list[str],
        purpose: str,
        *,
        name: str,
        blake3: str | None = None,
        growing: GrowingFile | None = None,
    ) -> dict[str, str]:
        assert purpose == "update"
        if growing is None:
            self.calls.append(("whole", name))
            data = await trio.Path(path).read_bytes()
            assert blake3 == _blake3(data)
            self.updates.append(data)
            return dict.fromkeys(peers, "delivered")
        self.calls.append(("growing", name))
        if self.predates_trailers:
            return dict.fromkeys(peers, "refused: bad-offer: the offer names no digest")
        try:
            data = await self._follow(growing)
        except OSError as exc:
            self.failures.append(str(exc))
            return dict.fromkeys(peers, f"failed: {exc}")
        self.updates.append(data)
        return dict.fromkeys(peers, "delivered")

    async def _follow(self, growing: GrowingFile) -> bytes:
        data = bytearray()
        fd = os.open(growing.path, os.O_RDONLY)
        try:
            while len(data) < growing.size:
                ready = await growing.readable(len(data))
                assert ready > len(data), "the file ended before its size"
                data += os.pread(fd, ready - len(data), len(data))
        finally:
            os.close(fd)
        assert await growing.digest() == _blake3(bytes(data))
        # What was followed is the finished file.
        assert await trio.Path(growing.path).read_bytes() == data
        return bytes(data)


def _blake3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


async def run_job(tmp: Path, recipients: Recipients, rounds: int = 2) -> ParameterServerJob:
    """Two workers send ``rounds`` rounds of pseudo-gradients; the scheduler says done after."""
    arrivals: list[tuple[int, ReceivedFile]] = []
    for rnd in range(1, rounds + 1):
        for n, worker in enumerate(WORKERS):
            path = tmp / f"{worker}.{rnd}_local_gradients.pt"
            g = torch.Generator().manual_seed(rnd * 10 + n)
            save_file({f"t{i}": torch.randn(4000, generator=g) for i in range(8)}, str(path))
            arrivals.append((rnd, ReceivedFile(path, path.stat().st_size, worker, "")))
    reported = [trio.Event() for _ in range(rounds)]

    async def receive(directory: Path, peers: frozenset[str]) -> AsyncIterator[ReceivedFile]:
        for rnd, item in arrivals:
            if rnd > 1:  # a round's files once the one before was reported
                await reported[rnd - 2].wait()
            target = directory / item.path.name
            os.replace(item.path, target)
            yield ReceivedFile(target, item.size, item.from_peer, "")
        await trio.sleep_forever()

    async def send_progress(progress: Progress) -> ProgressReply:
        done = sum(e.is_set() for e in reported)
        reported[done].set()
        return ProgressReply("done" if done + 1 == rounds else "continue")

    send: Any = recipients.send
    job = ParameterServerJob(
        "job-1",
        PSPlan(workers=WORKERS),
        tmp / "ps",
        receive=receive,
        send=send,
        send_progress=send_progress,
    )
    (tmp / "ps").mkdir()
    with trio.fail_after(60):
        await job.run()
    return job


async def test_each_update_goes_out_while_it_is_written_and_arrives_as_written(
    tmp_path: Path,
) -> None:
    """One transfer per round, begun before the step ends; the bytes followed are the final
    update's, and the round is published without a second transfer."""
    recipients = Recipients()
    job = await run_job(tmp_path, recipients)
    assert job.outcome == (True, "")
    assert recipients.calls == [
        ("growing", "1_update.safetensors"),
        ("growing", "2_update.safetensors"),
    ]
    assert len(recipients.updates) == 2


async def test_a_worker_that_predates_trailers_gets_the_complete_update(tmp_path: Path) -> None:
    """A refusal of the trailer offer (``bad-offer``, an older node) is followed by the
    finished file with its digest, and the round goes on as before."""
    recipients = Recipients(predates_trailers=True)
    job = await run_job(tmp_path, recipients)
    assert job.outcome == (True, "")
    assert [how for how, _ in recipients.calls] == ["growing", "whole", "growing", "whole"]
    assert len(recipients.updates) == 2


async def test_a_step_that_fails_midway_aborts_the_transfer_and_fails_the_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step dies after the header is out: the follower is told, nothing is published, and
    the job fails with the step's reason."""

    def broken_step(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outer, "_step", broken_step)
    recipients = Recipients()
    job = await run_job(tmp_path, recipients, rounds=1)
    assert job.outcome[0] is False
    assert "aggregate_failed" in job.outcome[1]
    assert "No space left on device" in job.outcome[1]
    assert recipients.updates == []
    assert len(recipients.failures) == 1
    assert "No space left on device" in recipients.failures[0]
