"""What every transport is: errors, settings, counters, and the interfaces (see the package doc)."""

from __future__ import annotations

import abc
import logging
import math
import os
import time
import types
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self

import trio

from hypha_sm.net import relay
from hypha_sm.net import session as sn
from hypha_sm.net.tls import TlsFiles
from hypha_sm.net.transport.failures import (
    PUBSUB_PROTOCOL,
    REQUEST_PROTOCOL,
    NetError,
)
from hypha_sm.net.transport.sessions import Sessions
from hypha_sm.wire.envelope import (
    MSG_ID_BYTES,
    Opened,
    Opener,
    Rejection,
    Signed,
    seal,
)
from hypha_sm.wire.identity import Identity, PeerId
from hypha_sm.wire.messages import Message, Refused, SessionOpen

log = logging.getLogger("hypha_sm.net")

#: Rejection reasons read from NNG's own statistics (the others come from the ``Opener``).
TRANSPORT_REASONS = ("tls_auth", "protocol")

#: Rejection reasons for which the sender's signature was checked and valid.
_AUTHENTICATED = frozenset(
    {"sender_mismatch", "stale", "replayed", "unknown_message", "malformed_payload"}
)

#: NNG listener/dialer error statistics we read, and what we count them as.
NNG_ERRORS = (
    ("auth", "tls_auth"),  # TLS handshake failed (certificate not trusted, wrong name)
    ("reject", "protocol"),  # the peer speaks another SP protocol (e.g. Pub0 dialling Rep0)
    ("proto", "protocol"),  # the SP header exchange failed
    ("other", "connection_errors"),  # a frame over the hard limit, or the peer hung up
)

#: NNG's own frame limit is this many times the envelope limit (see "Size limits").
HARD_LIMIT_FACTOR = 2

#: Frames a subscription takes from NNG's queue per wake-up (see ``_NngSubscription``).
DRAIN_BATCH = 64
#: A backlog of this many publications has its signatures checked in a worker thread.
VERIFY_IN_THREAD = 8

Handler = Callable[[Opened], Awaitable[Message]]
"""Answers one verified request; the transport seals and sends what it returns."""


@dataclass(frozen=True, slots=True)
class NetConfig:
    """Transport settings.

    Attributes:
        recv_max_size: largest request or answer envelope accepted, in bytes.
        publication_max_size: largest pub/sub envelope accepted, in bytes; small, because a
            subscription may queue ``pubsub_buffer`` of them.
        max_skew: largest clock difference accepted on an envelope's timestamp, in seconds.
        contexts: requests a server handles at once.
        request_timeout: default time to wait for an answer, in seconds.
        pubsub_buffer: frames queued per pub/sub connection before NNG drops (max 8192).
        tls: PEM files for ``tls+tcp://`` addresses (mutual TLS); None for tcp/ipc only.
        sessions: send the requests of ``net.session.SESSION_KINDS`` through sessions (one
            signed handshake, then sealed frames); a server always answers both forms.
        session_lifetime: seconds a session this node serves lasts (then its client re-keys).
        session_messages: requests one session this node serves accepts (then re-keying).
    """

    recv_max_size: int = 1 << 20
    publication_max_size: int = 64 << 10
    max_skew: float = 30.0
    contexts: int = 16
    request_timeout: float = 10.0
    pubsub_buffer: int = 1024
    tls: TlsFiles | None = None
    sessions: bool = True
    session_lifetime: float = sn.LIFETIME
    session_messages: int = sn.MAX_MESSAGES

    def __post_init__(self) -> None:
        if self.recv_max_size <= 0 or self.publication_max_size <= 0:
            raise ValueError("size limits must be positive")
        if self.contexts < 1:
            raise ValueError("a server needs at least one context")
        if self.request_timeout <= 0 or self.max_skew <= 0:
            raise ValueError("timeouts and skew must be positive")
        if not 1 <= self.pubsub_buffer <= 8192:
            raise ValueError("pubsub_buffer must be between 1 and 8192")
        if not 0 < self.session_lifetime < math.inf or self.session_messages < 1:
            raise ValueError("a session needs a positive lifetime and message budget")


@dataclass(frozen=True, slots=True)
class NetStats:
    """What a transport has counted since it started.

    Attributes:
        accepted: envelopes verified and handed on (requests, answers, publications).
        rejected: envelopes or connections refused, by reason (``wire.envelope.REASONS``,
            ``TRANSPORT_REASONS``); duplicates on subscriptions are not in here.
        duplicates: publications already seen (the same message through another gateway).
        dropped: publications lost on the way to us (gaps in a connection's sequence).
        handler_errors: requests whose handler raised.
        failed_requests: our own requests that raised ``NetError``, by reason.
        connection_errors: connections NNG closed with an error: a frame over the hard size
            limit, or the peer hung up (NNG does not tell them apart).
        bytes_in: bytes received, by protocol (``hypha/request``: requests we answered and
            answers we got; ``hypha/pubsub``: publication frames).
        bytes_out: bytes sent, by protocol (a publication counts once, however many
            subscribers it reaches).
        verified_in_thread: publications whose signature was checked in a worker thread
            (part of a backlog; see ``Subscription.receive_envelope``).
    """

    accepted: int
    rejected: Mapping[str, int]
    duplicates: int
    dropped: int
    handler_errors: int
    failed_requests: Mapping[str, int]
    connection_errors: int
    bytes_in: Mapping[str, int] = field(default_factory=dict)
    bytes_out: Mapping[str, int] = field(default_factory=dict)
    verified_in_thread: int = 0


@dataclass(slots=True)
class _Counters:
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    dropped: int = 0
    handler_errors: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    connection_errors: int = 0
    bytes_in: Counter[str] = field(default_factory=Counter)
    bytes_out: Counter[str] = field(default_factory=Counter)
    verified_in_thread: int = 0


def _frozen(counts: Counter[str]) -> Mapping[str, int]:
    return types.MappingProxyType(dict(counts))


class Transport(abc.ABC):
    """One node's presence on the network: what ``Endpoint`` and ``MemoryEndpoint`` share.

    Args:
        identity: the node's key; everything sent is sealed with it.
        config: transport settings.
        wall: the wall clock (POSIX seconds) used to stamp and check envelopes.
        entropy: source of the 16-byte message ids.
        opener: the verifier for everything received (shared replay guard); by default one
            with ``config.max_skew`` and ``config.recv_max_size``.
    """

    def __init__(
        self,
        identity: Identity,
        config: NetConfig | None = None,
        *,
        wall: Callable[[], float] = time.time,
        entropy: Callable[[int], bytes] = os.urandom,
        opener: Opener | None = None,
    ) -> None:
        self.identity = identity
        self.config = config if config is not None else NetConfig()
        self._wall = wall
        self._entropy = entropy
        self._opener = opener or Opener(
            max_skew=self.config.max_skew, max_size=self.config.recv_max_size
        )
        self._counts = _Counters()
        self._closed = False
        self._sessions = Sessions()

    @property
    def peer_id(self) -> PeerId:
        """This node's peer id."""
        return self.identity.peer_id

    # -- sealing and opening -------------------------------------------------------------------

    def seal(self, message: Message) -> bytes:
        """``message`` as an envelope signed by this node, stamped now, with a fresh id."""
        return seal(self.identity, message, self._wall(), self._entropy(MSG_ID_BYTES))

    def _reject(self, rejection: Rejection, where: str, peer: object = None) -> None:
        self._counts.rejected[rejection.reason] += 1
        log.debug(
            "%s: rejected (%s) %s%s",
            where,
            rejection.reason,
            rejection.detail,
            f" from {peer}" if peer is not None else "",
        )

    async def _answer(
        self, data: bytes, handler: Handler, peer: Callable[[], object]
    ) -> bytes | None:
        """The sealed answer to one request, or None when it deserves no answer."""
        answer = await self._answer_bytes(data, handler, peer)
        counts = self._counts
        counts.bytes_in[REQUEST_PROTOCOL] += len(data)
        if answer is not None:
            counts.bytes_out[REQUEST_PROTOCOL] += len(answer)
        return answer

    async def _answer_bytes(
        self, data: bytes, handler: Handler, peer: Callable[[], object]
    ) -> bytes | None:
        if sn.is_frame(data):
            return await self._sessions.answer(self, data, handler, peer)
        result = self._opener.open(data, self._wall())
        if isinstance(result, Rejection):
            self._reject(result, "request", peer())
            if result.reason not in _AUTHENTICATED:
                return None
            return self.seal(Refused(result.reason))
        self._counts.accepted += 1
        if isinstance(result.message, SessionOpen):
            return self._sessions.accept(self, data, result)
        name = type(result.message).__name__
        try:
            answer = self.seal(await handler(result))
        except Exception:
            self._counts.handler_errors += 1
            log.exception("handler failed on %s from %s", name, result.sender)
            return self.seal(Refused("internal_error"))
        if len(answer) > self.config.recv_max_size:
            self._counts.handler_errors += 1
            log.error("answer to %s is %d bytes, over recv_max_size", name, len(answer))
            return self.seal(Refused("internal_error"))
        return answer

    # -- request/response ----------------------------------------------------------------------

    @abc.abstractmethod
    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer requests on ``address`` until cancelled.

        ``task_status.started`` gets the address actually bound (the port NNG chose for
        ``tcp://127.0.0.1:0``). Raises ``NetError("bad_address")`` if it cannot listen.
        """

    async def request(
        self,
        address: str,
        message: Message,
        *,
        expect: PeerId | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - it becomes NetError('timeout')
    ) -> Opened:
        """Send ``message`` sealed to ``address`` and return the verified answer.

        Args:
            address: where the peer serves.
            message: the request.
            expect: the peer id the answer must be signed by (``rejected``/``sender_mismatch``
                otherwise).
            timeout: seconds to wait; ``config.request_timeout`` by default.

        Requests of ``net.session.SESSION_KINDS`` to an ``expect``ed peer go through a
        session with it (``config.sessions``); everything else is a signed envelope.

        Raises:
            NetError: for every failure, with a reason from ``NET_ERRORS``; a ``Refused``
                answer raises ``refused`` with the peer's reason as ``cause``.
        """
        if expect is not None and self.config.sessions and type(message) in sn.SESSION_KINDS:
            if self._closed:
                raise self._failed(NetError("closed", address))
            wait = self.config.request_timeout if timeout is None else timeout
            return await self._sessions.request(self, address, message, expect, wait)
        return await self.request_envelope(
            address, self.seal(message), expect=expect, timeout=timeout
        )

    async def request_envelope(
        self,
        address: str,
        envelope: bytes,
        *,
        expect: PeerId | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - it becomes NetError('timeout')
    ) -> Opened:
        """Like ``request``, for bytes that are already an envelope (sent as they are)."""
        if self._closed:
            raise self._failed(NetError("closed", address))
        if len(envelope) > self.config.recv_max_size:
            raise self._failed(
                NetError(
                    "too_large", address, detail=f"{len(envelope)} > {self.config.recv_max_size}"
                )
            )
        wait = self.config.request_timeout if timeout is None else timeout
        try:
            data = await self._exchange(address, envelope, wait)
        except NetError as exc:
            raise self._failed(exc) from None
        self._counts.bytes_out[REQUEST_PROTOCOL] += len(envelope)
        self._counts.bytes_in[REQUEST_PROTOCOL] += len(data)
        result = self._opener.open(data, self._wall(), expect)
        if isinstance(result, Rejection):
            self._reject(result, "answer", address)
            raise self._failed(
                NetError("rejected", address, cause=result.reason, detail=result.detail)
            )
        self._counts.accepted += 1
        if isinstance(result.message, Refused):
            raise self._failed(NetError("refused", address, cause=result.message.reason))
        return result

    def _failed(self, error: NetError) -> NetError:
        self._counts.failed[error.reason] += 1
        log.debug("request failed: %s", error)
        return error

    @abc.abstractmethod
    async def _exchange(self, address: str, envelope: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
        """Send one request and return the raw answer; raise ``NetError`` otherwise."""

    # -- pub/sub -------------------------------------------------------------------------------

    @abc.abstractmethod
    def publisher(self, *, listen: Sequence[str] = (), dial: Sequence[str] = ()) -> Publisher:
        """A publisher on ``TOPIC_WORKER`` that listens on and/or dials these addresses."""

    @abc.abstractmethod
    def subscribe(self, *, dial: Sequence[str] = (), listen: Sequence[str] = ()) -> Subscription:
        """A subscription to ``TOPIC_WORKER`` from every publisher at these addresses."""

    # -- life cycle ----------------------------------------------------------------------------

    def stats(self) -> NetStats:
        """A snapshot of the counters."""
        c = self._counts
        return NetStats(
            accepted=c.accepted,
            rejected=_frozen(c.rejected),
            duplicates=c.duplicates,
            dropped=c.dropped,
            handler_errors=c.handler_errors,
            failed_requests=_frozen(c.failed),
            connection_errors=c.connection_errors,
            bytes_in=_frozen(c.bytes_in),
            bytes_out=_frozen(c.bytes_out),
            verified_in_thread=c.verified_in_thread,
        )

    def close(self) -> None:
        """Close the client sockets; requests in flight fail with ``closed``."""
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Publisher(abc.ABC):
    """Sends envelopes to every connected subscriber, numbered (lossy; never waits for them)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._seq = 0
        self._closed = False

    @property
    @abc.abstractmethod
    def addresses(self) -> tuple[str, ...]:
        """The addresses this publisher listens on, as bound."""

    @property
    @abc.abstractmethod
    def connections(self) -> int:
        """How many subscribers (or gateways) are connected now."""

    async def publish(self, message: Message) -> bytes:
        """Seal ``message`` and send it; returns the envelope (for logs or later relays)."""
        envelope = self._transport.seal(message)
        await self.relay(envelope)
        return envelope

    async def relay(self, envelope: bytes) -> None:
        """Send an envelope as it is (a gateway forwards what its subscription verified).

        Raises:
            NetError: ``too_large`` over ``publication_max_size``; ``closed`` once closed.
        """
        where = ",".join(self.addresses) or "publisher"
        if self._closed:
            raise NetError("closed", where)
        limit = self._transport.config.publication_max_size
        if len(envelope) > limit:
            raise NetError("too_large", where, detail=f"{len(envelope)} > {limit}")
        self._seq += 1
        frame = relay.frame(self._seq, envelope)
        await self._send_frame(frame)
        self._transport._counts.bytes_out[PUBSUB_PROTOCOL] += len(frame)

    @abc.abstractmethod
    async def _send_frame(self, frame: bytes) -> None: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Stop publishing and close the socket."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Subscription(abc.ABC):
    """Verified publications on ``TOPIC_WORKER``, each at most once; async-iterable.

    Frames that fail verification are counted and skipped; a duplicate (the same sender and
    message id, e.g. through a second gateway) is counted in ``duplicates`` and skipped.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._gaps: dict[int, relay.GapCounter] = {}
        #: Envelopes taken from the socket, with their signature check if it was done already.
        self._pending: deque[tuple[bytes, int, Signed | Rejection | None]] = deque()

    @property
    @abc.abstractmethod
    def addresses(self) -> tuple[str, ...]:
        """The addresses this subscription listens on, as bound."""

    @property
    @abc.abstractmethod
    def connections(self) -> int:
        """How many publishers are connected now."""

    async def receive(self) -> Opened:
        """The next verified publication. Raises ``NetError("closed")`` once closed."""
        opened, _ = await self.receive_envelope()
        return opened

    async def receive_envelope(self) -> tuple[Opened, bytes]:
        """The next verified publication and its envelope as signed by its author.

        When a backlog has formed (``VERIFY_IN_THREAD`` frames or more already here), their
        signatures are checked together in a worker thread: the Ed25519 check releases the
        GIL, so the event loop keeps serving requests (renewals) meanwhile, on another core
        if there is one. Fewer frames are checked one at a time on the loop, as they are taken.
        """
        t = self._transport
        counts = t._counts
        while True:
            if not self._pending:
                await self._fill()
                continue
            envelope, source, signed = self._pending.popleft()
            if signed is None:
                await trio.lowlevel.checkpoint()  # a frame at a time: let the others run
                signed = t._opener.check_signature(envelope)
            result = t._opener.admit(envelope, signed, t._wall())
            if isinstance(result, Opened):
                counts.accepted += 1
                return result, envelope
            if result.reason == "replayed":
                counts.duplicates += 1
                log.debug("publication: duplicate %s", result.detail)
            else:
                t._reject(result, "publication", source)

    async def _fill(self) -> None:
        """Wait for frames; unframe and size-check them; check a backlog's signatures at once."""
        t = self._transport
        counts = t._counts
        limit = t.config.publication_max_size
        frames = [await self._receive_frame(), *self._take_queued()]
        envelopes: list[tuple[bytes, int]] = []
        for frame, source in frames:
            counts.bytes_in[PUBSUB_PROTOCOL] += len(frame)
            envelope = self._unframe(frame, source)
            if envelope is None:
                continue
            if len(envelope) > limit:
                t._reject(
                    Rejection("oversized", f"{len(envelope)} bytes > {limit}"),
                    "publication",
                    source,
                )
                continue
            envelopes.append((envelope, source))
        if len(envelopes) < VERIFY_IN_THREAD:
            self._pending.extend((e, s, None) for e, s in envelopes)
            return
        opener = t._opener
        checked = await trio.to_thread.run_sync(
            lambda: [opener.check_signature(e) for e, _ in envelopes]
        )
        counts.verified_in_thread += len(envelopes)
        self._pending.extend((e, s, c) for (e, s), c in zip(envelopes, checked, strict=True))

    def _take_queued(self) -> list[tuple[bytes, int]]:
        """Frames already here, taken without waiting (none by default)."""
        return []

    def _unframe(self, frame: bytes, source: int) -> bytes | None:
        """The envelope inside a relay frame; counts numbering gaps as drops."""
        framed = relay.unframe(frame)
        if framed is None:
            self._transport._reject(
                Rejection("malformed", "not a relay frame"), "publication", source
            )
            return None
        seq, envelope = framed
        gaps = self._gaps.get(source)
        if gaps is None:
            gaps = self._gaps[source] = relay.GapCounter()
        lost = gaps.see(seq)
        if lost:
            self._transport._counts.dropped += lost
            log.debug("publication: %d lost on connection %s before number %d", lost, source, seq)
        return envelope

    def _forget_source(self, source: int) -> None:
        self._gaps.pop(source, None)

    @abc.abstractmethod
    async def _receive_frame(self) -> tuple[bytes, int]:
        """The next frame and the connection it came on; ``NetError("closed")`` once closed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop receiving and close the socket."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Opened:
        try:
            return await self.receive()
        except NetError as exc:
            if exc.reason == "closed":
                raise StopAsyncIteration from None
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
