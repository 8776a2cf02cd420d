"""Files between jobs on different nodes: what the bridge's send and receive routes do.

**Sending** (``send``): find the peer's request address in the gateways' directory (its own
signed record), ask it over request/response whether it takes the file (a signed
``transfer_offer``; the answer names its bulk address), then stream the bytes with
``hypha_sm.net.bulk.send_file``, which returns only once the receiver verified size and
SHA-256. The file is offered as ``<our peer id>.<file name>``, so the receiver sees who sent
it in the name (as the original did) and two senders never collide.

**Receiving**: one ``BulkServer`` per node writes verified files into a staging dir; each is
then placed (its own copy per job) in the directory of every job whose receive stream (the
bridge's ``/resources/receive``) takes files from that sender, replacing an older file of the
same name (each round overwrites, as in the original), and announced on that stream. An offer
is refused unless its name starts with the sender's own peer id (so nobody can pose as another
peer in a file name) and some job is receiving from that sender.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from hypha_sm.net.bulk import (
    BulkError,
    BulkServer,
    GrowingFile,
    PeerAuthError,
    ReceivedFile,
    file_digest,
    new_transfer_id,
    send_file,
)
from hypha_sm.net.discovery import Gateways, dialable
from hypha_sm.net.streams import Address
from hypha_sm.net.tls import TlsFiles
from hypha_sm.net.transport import NetError, Transport
from hypha_sm.roles.worker import bridge
from hypha_sm.roles.worker.users import give
from hypha_sm.wire.identity import Identity, IdentityError, PeerId
from hypha_sm.wire.messages import TransferAnswer, TransferOffer

log = logging.getLogger(__name__)

#: The ``protocols`` attribute of bulk bytes in the bandwidth metrics.
BULK_PROTOCOL = "hypha/bulk"
#: Events buffered per receive stream before new ones are dropped (the file stays in the dir).
RECEIVE_BUFFER = 64
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(eq=False)
class _Receiver:
    directory: Path
    events: trio.MemorySendChannel[bridge.ReceivedFile]
    peers: frozenset[str]  # whose files this job takes; empty: anyone's

    def takes(self, sender: str) -> bool:
        return not self.peers or sender in self.peers


def bulk_address_for(listen: str) -> str:
    """A bulk address beside a request address: same scheme and host, a free port."""
    if listen.startswith("ipc://"):
        return f"{listen}.bulk"
    scheme, _, rest = listen.partition("://")
    host = rest.rsplit(":", 1)[0]
    return f"{scheme}://{host}:0"


class PeerFiles:
    """The node's side of pushing files to peers and receiving theirs."""

    def __init__(
        self,
        identity: Identity,
        transport: Transport,
        gateways: Gateways,
        staging: Path,
        *,
        tls: TlsFiles | None = None,
        max_size: int = 64 << 30,
        on_bytes: Callable[[str, Literal["inbound", "outbound"], int], None] | None = None,
    ) -> None:
        self.identity = identity
        self.transport = transport
        self.gateways = gateways
        self.tls = tls
        self._on_bytes = on_bytes
        self._receivers: list[_Receiver] = []
        #: Slices this node asked for: (sender, transfer id) -> (target path, arrived).
        self._expected: dict[tuple[str, str], tuple[Path, trio.Event, str]] = {}
        self.server = BulkServer(
            staging,
            identity=identity,
            authorize=self._authorize,
            tls=tls,
            max_size=max_size,
            on_result=self._failed,
            place=self._deliver,
        )

    async def serve(
        self, address: str, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive transfers on ``address`` until cancelled (stale staging files removed)."""
        staging = self.server.directory
        staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in staging.iterdir():
            leftover.unlink(missing_ok=True)
        await self.server.serve(address, task_status=task_status)

    # -- receiving -----------------------------------------------------------------------------

    def consider(self, sender: PeerId, offer: TransferOffer) -> TransferAnswer:
        """The answer to a peer's ``transfer_offer`` request (the node's hook)."""
        return self.server.consider(sender, offer)

    def expect(self, sender: str, transfer_id: str, target: Path, sha256: str = "") -> trio.Event:
        """Take transfer ``transfer_id`` from ``sender`` (a file we asked for) into ``target``.

        With ``sha256`` the sender must offer exactly those bytes (the bulk server then checks
        them), whatever it claims. The event is set once the file was placed (or it never
        fires and the caller's own timeout ends the wait); ``forget`` removes the expectation.
        """
        arrived = trio.Event()
        self._expected[(sender, transfer_id)] = (target, arrived, sha256)
        return arrived

    def forget(self, sender: str, transfer_id: str) -> None:
        """Stop expecting a transfer (it arrived, or the fetch gave up)."""
        self._expected.pop((sender, transfer_id), None)

    def _authorize(self, sender: PeerId, offer: TransferOffer) -> str | None:
        peer = str(sender)
        expected = self._expected.get((peer, offer.transfer_id))
        if expected is not None:
            if offer.purpose not in ("slice", "manifest"):
                return "an expected transfer must be a slice or a manifest"
            if expected[2] and offer.sha256 != expected[2]:
                return "sha256 differs from the manifest's"
            return None
        if not offer.name.startswith(f"{peer}."):
            return "the file name must start with the sender's peer id and a dot"
        if not any(r.takes(peer) for r in self._receivers):
            return "no job on this node is receiving from this peer"
        return None

    def _failed(self, outcome: ReceivedFile | BulkError) -> None:
        # A stranger's refused connection (bad magic, a bad or foreign envelope) is counted by
        # the bulk server and logged at debug level: anyone can open connections, and each must
        # not cost a warning line. A failure of an authenticated transfer is worth one.
        if isinstance(outcome, PeerAuthError):
            log.debug("incoming connection refused: %s", outcome)
        elif isinstance(outcome, BulkError):
            log.warning("incoming transfer failed: %s", outcome)

    def _deliver(self, received: ReceivedFile) -> str | None:
        """Give a verified file to every job receiving from its sender; why not, if none took it.

        Runs before the sender is told the file arrived, so "delivered" means placed.
        """
        staged = received.path
        sender = str(received.sender)
        if self._on_bytes is not None:
            self._on_bytes(BULK_PROTOCOL, "inbound", received.offer.size)
        expected = self._expected.pop((sender, received.offer.transfer_id), None)
        if expected is not None:
            return self._place_expected(staged, expected[0], expected[1])
        placed = 0
        try:
            size = staged.stat().st_size
            takers = [r for r in self._receivers if r.takes(sender)]
            for n, receiver in enumerate(takers):
                target = receiver.directory / received.offer.name
                temporary = receiver.directory / f".{received.offer.transfer_id}.in"
                try:
                    if n == 0:
                        os.link(staged, temporary)
                    else:  # each job its own copy: no job can change what another reads
                        shutil.copyfile(staged, temporary)
                    give(temporary, receiver.directory)  # the receiving job's user
                    os.replace(temporary, target)
                except OSError as exc:
                    temporary.unlink(missing_ok=True)
                    log.warning("cannot place %s in %s: %s", staged.name, receiver.directory, exc)
                    continue
                offer = received.offer
                event = bridge.ReceivedFile(target, size, sender, offer.sha256, received.blake3)
                try:
                    receiver.events.send_nowait(event)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    log.warning("receive stream full or gone: %s not announced", target)
                placed += 1
        except OSError as exc:
            return f"io-error: {exc}"
        finally:
            staged.unlink(missing_ok=True)
        return None if placed else "no job took the file (its receiver left)"

    def _place_expected(self, staged: Path, target: Path, arrived: trio.Event) -> str | None:
        """Move a verified slice to its target whole (a reader never sees half a file)."""
        temporary = target.with_name(f".{target.name}.in")
        try:
            os.replace(staged, temporary)
            give(temporary, target.parent)  # the job's user
            os.replace(temporary, target)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            temporary.unlink(missing_ok=True)
            return f"io-error: {exc}"
        arrived.set()
        return None

    async def receive(
        self, directory: Path, peers: frozenset[str] = frozenset()
    ) -> AsyncIterator[bridge.ReceivedFile]:
        """The files ``peers`` (anyone if empty) push, placed in ``directory`` (the bridge's hook)."""
        send, events = trio.open_memory_channel[bridge.ReceivedFile](RECEIVE_BUFFER)
        receiver = _Receiver(directory, send, peers)
        self._receivers.append(receiver)
        try:
            async with events:
                async for event in events:
                    yield event
        finally:
            self._receivers.remove(receiver)
            send.close()

    # -- sending -------------------------------------------------------------------------------

    async def send(
        self,
        path: Path,
        peers: Sequence[str],
        purpose: str,
        *,
        name: str | None = None,
        blake3: str | None = None,
        growing: GrowingFile | None = None,
    ) -> Mapping[str, str]:
        """Push ``path`` to each peer; per peer ``"delivered"`` or why not (the bridge's hook).

        ``name`` is the file's own name when ``path`` is a descriptor path (``/proc/self/fd``);
        ``blake3`` the file's digest if the caller has it (else it is computed here, unless
        the file is ``growing``: sent as it is written, its digest in the trailer).
        """
        digest = "" if growing is not None else blake3 or await file_digest(path, "blake3")
        shown = name or path.name
        name = _NAME_CHARS.sub("_", f"{self.identity.peer_id}.{shown}")[:255]
        results: dict[str, str] = {}

        async def one(peer: str) -> None:
            results[peer] = await self._send_one(path, peer, name, digest, purpose, shown, growing)

        # Side by side: a parameter server's update reaches every worker in the time of one.
        async with trio.open_nursery() as nursery:
            for peer in dict.fromkeys(peers):
                nursery.start_soon(one, peer)
        return {peer: results[peer] for peer in dict.fromkeys(peers)}

    async def _send_one(
        self,
        path: Path,
        peer: str,
        name: str,
        blake3: str,
        purpose: str,
        shown: str,
        growing: GrowingFile | None,
    ) -> str:
        try:
            peer_id = PeerId.parse(peer)
        except IdentityError:
            return "invalid_peer"
        addresses = await self.gateways.lookup_peer(peer)
        if not addresses:
            return "unknown_peer: no gateway has its record"
        # The bridge checked the file exists; a stat does not block long.
        size = growing.size if growing is not None else os.stat(path).st_size
        offer = TransferOffer(
            new_transfer_id(),
            name,
            size,
            purpose=purpose,
            blake3=blake3,
            trailer="blake3" if growing is not None else "",
        )
        outcome = "unreachable"
        for address in addresses:
            try:
                answer = await self.transport.request(address, offer, expect=peer_id, timeout=5.0)
            except NetError as exc:
                outcome = f"unreachable: {exc.reason}"
                continue
            reply = answer.message
            if not isinstance(reply, TransferAnswer) or reply.transfer_id != offer.transfer_id:
                return "unexpected_answer"
            if not reply.accepted:
                return f"refused: {reply.reason}"
            try:
                await send_file(
                    path,
                    to=dialable(reply.address, address),
                    identity=self.identity,
                    peer=peer_id,
                    tls=self.tls,
                    name=name,
                    purpose=purpose,
                    blake3=blake3 or None,
                    transfer_id=offer.transfer_id,
                    growing=growing,
                )
            except BulkError as exc:
                log.warning("sending %s to %s failed: %s", shown, peer, exc)
                return f"failed: {exc}"
            except OSError as exc:
                return f"failed: {exc.strerror}"
            log.info("sent %s (%d bytes) to %s", shown, offer.size, peer)
            if self._on_bytes is not None:
                self._on_bytes(BULK_PROTOCOL, "outbound", offer.size)
            return "delivered"
        return outcome
