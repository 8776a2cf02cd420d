"""Files between jobs on different nodes: who may push what into which job's directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from hypha_sm.net.bulk import TransferRefused, send_file
from hypha_sm.net.discovery import Gateways
from hypha_sm.net.transport import Endpoint
from hypha_sm.roles.worker.bridge import ReceivedFile
from hypha_sm.roles.worker.peers import PeerFiles
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import Identity
from tests.netkit import running_gateway

pytestmark = pytest.mark.net

GATEWAY = Identity.from_seed(bytes([81]) * 32)
A, B, C = (Identity.from_seed(bytes([n]) * 32) for n in (82, 83, 84))


@asynccontextmanager
async def three_nodes(tmp_path: Path) -> AsyncIterator[tuple[PeerFiles, PeerFiles, PeerFiles]]:
    """A receives (its request address registered at a real gateway); B and C send."""
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        with Endpoint(A) as ta, Endpoint(B) as tb, Endpoint(C) as tc:
            files = [
                PeerFiles(ident, t, Gateways(t, [gw.listen]), tmp_path / f"staging-{n}")
                for n, (ident, t) in enumerate(((A, ta), (B, tb), (C, tc)))
            ]

            async def answer(opened: Opened) -> m.Message:
                assert isinstance(opened.message, m.TransferOffer)
                return files[0].consider(opened.sender, opened.message)

            address = await nursery.start(ta.serve, "tcp://127.0.0.1:0", answer)
            await nursery.start(files[0].serve, "tcp://127.0.0.1:0")
            await Gateways(ta, [gw.listen]).register(gw.listen, [address], 60)
            yield files[0], files[1], files[2]
            nursery.cancel_scope.cancel()


async def test_only_the_peers_a_job_receives_from_can_push_it_files(tmp_path: Path) -> None:
    """A job receiving from B gets B's file, named by B's id; C is refused; nothing of C's is
    written anywhere."""
    (tmp_path / "update.bin").write_bytes(b"weights" * 100)
    inbox = tmp_path / "job-inbox"
    inbox.mkdir()
    got: list[ReceivedFile] = []
    async with three_nodes(tmp_path) as (a, b, c), trio.open_nursery() as nursery:

        async def listen() -> None:
            async for event in a.receive(inbox, frozenset({str(B.peer_id)})):
                got.append(event)  # noqa: PERF401 - as they arrive, not at the end

        nursery.start_soon(listen)
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(10):
            from_c = await c.send(tmp_path / "update.bin", [str(A.peer_id)], "update")
            from_b = await b.send(tmp_path / "update.bin", [str(A.peer_id)], "update")
            while not got:  # noqa: ASYNC110 - the listener appends
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert from_c[str(A.peer_id)].startswith("refused: unauthorized: no job")
    assert from_b == {str(A.peer_id): "delivered"}
    (event,) = got
    assert event.from_peer == str(B.peer_id)
    assert event.path == inbox / f"{B.peer_id}.update.bin"
    assert sorted(p.name for p in inbox.iterdir()) == [f"{B.peer_id}.update.bin"]


async def test_a_peer_cannot_pose_as_another_in_the_file_name(tmp_path: Path) -> None:
    """B offers a file named as if C had sent it: refused before any byte is written."""
    (tmp_path / "x.bin").write_bytes(b"x" * 10)
    async with three_nodes(tmp_path) as (a, _b, _c), trio.open_nursery() as nursery:

        async def listen() -> None:
            async for _ in a.receive(tmp_path, frozenset()):
                raise AssertionError("nothing may arrive")

        nursery.start_soon(listen)
        await trio.testing.wait_all_tasks_blocked()
        assert a.server.address is not None
        with trio.fail_after(10), pytest.raises(TransferRefused, match="sender's peer id"):
            await send_file(
                tmp_path / "x.bin",
                to=a.server.address,
                identity=B,
                peer=A.peer_id,
                name=f"{C.peer_id}.x.bin",
            )
        nursery.cancel_scope.cancel()
    assert not (tmp_path / f"{C.peer_id}.x.bin").exists()


async def test_delivered_means_placed_and_a_file_nobody_takes_is_refused(
    tmp_path: Path,
) -> None:
    """The sender hears "delivered" only once the file is in a job's directory; if the job's
    receiver left while the bytes were on their way, it hears not-placed and nothing stays."""
    (tmp_path / "u.bin").write_bytes(b"u" * 1000)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    async with three_nodes(tmp_path) as (a, b, _c):
        # The offer is let through as if a job were receiving; none is when the file is placed.
        a.server.authorize = lambda sender, offer: None
        with trio.fail_after(10):
            outcome = await b.send(tmp_path / "u.bin", [str(A.peer_id)], "update")
    assert outcome[str(A.peer_id)].startswith("failed: ")
    assert "not-placed: no job took the file" in outcome[str(A.peer_id)]
    assert list(a.server.directory.iterdir()) == []
