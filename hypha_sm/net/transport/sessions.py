"""A transport's sessions (specs/protocol.md §5.1): the server's table, the client's sessions.

``Transport`` owns one ``Sessions`` and hands itself in: the sealing, keys and bookkeeping
live in ``hypha_sm.net.session`` (pure); this is where they meet the transport's exchange,
counters and signed envelopes.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from hypha_sm.net import session as sn
from hypha_sm.net.transport.failures import REQUEST_PROTOCOL, NetError
from hypha_sm.wire.envelope import (
    MSG_ID_BYTES,
    Opened,
    Rejection,
    decode_payload,
    encode_payload,
    seal,
)
from hypha_sm.wire.identity import PeerId
from hypha_sm.wire.messages import Message, Refused, SessionAccept, SessionOpen

if TYPE_CHECKING:
    from hypha_sm.net.transport.base import Handler, Transport

log = logging.getLogger("hypha_sm.net")


class Sessions:
    """The sessions one transport serves and the ones it holds with its peers."""

    def __init__(self) -> None:
        self.table = sn.SessionTable()
        self.clients: OrderedDict[tuple[str, bytes], sn.ClientSession] = OrderedDict()
        self.handshaking: dict[tuple[str, bytes], trio.Lock] = {}
        #: Peers that answered a ``SessionOpen`` with ``unknown_message``, until when (wall).
        self.sessionless: dict[tuple[str, bytes], float] = {}

    # -- the server's side ----------------------------------------------------------------------

    def accept(self, t: Transport, data: bytes, opened: Opened) -> bytes:
        """The signed ``SessionAccept`` for a verified ``SessionOpen``; the session is kept."""
        hello = opened.message
        assert isinstance(hello, SessionOpen)
        if hello.peer != str(t.peer_id):  # opened with someone else: a relayed handshake
            t._reject(Rejection("wrong_peer", hello.peer), "session", opened.sender)
            return t.seal(Refused("wrong_peer"))
        private = sn.new_private_key(t._entropy(sn.KEY_BYTES))
        session = t._entropy(sn.SESSION_ID_BYTES)
        lifetime, budget = t.config.session_lifetime, t.config.session_messages
        accept = t.seal(
            SessionAccept(
                sn.public_bytes(private),
                session,
                opened.msg_id,
                str(opened.sender),
                lifetime,
                budget,
            )
        )
        try:
            keys = sn.derive_keys(private, hello.ephemeral, data, accept)
        except sn.SessionError as exc:
            t._reject(Rejection("bad_ephemeral_key", str(exc)), "session", opened.sender)
            return t.seal(Refused("bad_ephemeral_key"))
        self.table.add(opened.sender, session, keys, t._wall() + lifetime, budget)
        return accept

    async def answer(
        self, t: Transport, data: bytes, handler: Handler, peer: Callable[[], object]
    ) -> bytes | None:
        """The sealed answer to a sealed request, a "no such session" notice, or None."""
        now = t._wall()
        opened = self.table.open(data, now)
        if isinstance(opened, tuple):
            rejection, frame = opened
            t._reject(rejection, "sealed request", peer())
            if frame is not None and rejection.reason in ("unknown_session", "exhausted"):
                return sn.unknown_session(frame.session, frame.seq)
            return None
        entry, seq = opened.session, opened.seq
        message = decode_payload(opened.payload)
        if isinstance(message, Rejection):
            t._reject(message, "sealed request", entry.client)
            return entry.seal_answer(seq, encode_payload(Refused(message.reason)))
        if type(message) not in sn.SESSION_KINDS:  # e.g. a dispatch, which must stay signed
            reason = Rejection("not_in_session", type(message).__name__)
            t._reject(reason, "sealed request", entry.client)
            return entry.seal_answer(seq, encode_payload(Refused("not_in_session")))
        t._counts.accepted += 1
        msg_id = entry.session[:8] + seq.to_bytes(8, "big")
        request = Opened(entry.client, message, msg_id, int(now * 1000))
        try:
            payload = encode_payload(await handler(request))
        except Exception:
            t._counts.handler_errors += 1
            log.exception("handler failed on %s from %s", type(message).__name__, entry.client)
            payload = encode_payload(Refused("internal_error"))
        if len(payload) > t.config.recv_max_size - 64:
            t._counts.handler_errors += 1
            log.error(
                "answer to %s is %d bytes, over recv_max_size",
                type(message).__name__,
                len(payload),
            )
            payload = encode_payload(Refused("internal_error"))
        return entry.seal_answer(seq, payload)

    # -- the client's side ----------------------------------------------------------------------

    async def request(
        self, t: Transport, address: str, message: Message, expect: PeerId, wait: float
    ) -> Opened:
        """``request`` through a session with ``expect`` (opened or re-opened as needed)."""
        deadline = trio.current_time() + wait
        payload = encode_payload(message)
        for attempt in (1, 2):
            session = await self._client_session(t, address, expect, deadline)
            if session is None:  # the peer does not speak sessions: the signed form
                left = max(deadline - trio.current_time(), 0.001)
                return await t.request_envelope(
                    address, t.seal(message), expect=expect, timeout=left
                )
            seq, frame = session.seal(payload)
            if len(frame) > t.config.recv_max_size:
                raise t._failed(NetError("too_large", address, detail=f"{len(frame)} bytes"))
            try:
                data = await t._exchange(
                    address, frame, max(deadline - trio.current_time(), 0.001)
                )
            except NetError as exc:
                raise t._failed(exc) from None
            counts = t._counts
            counts.bytes_out[REQUEST_PROTOCOL] += len(frame)
            counts.bytes_in[REQUEST_PROTOCOL] += len(data)
            sealed = session.open_answer(data, seq)
            if isinstance(sealed, Rejection) and sealed.reason == "unknown_session":
                # The peer restarted or forgot the session: open a new one, once.
                self.clients.pop((address, expect.raw), None)
                if attempt == 1:
                    continue
            answer = sealed if isinstance(sealed, Rejection) else decode_payload(sealed)
            if isinstance(answer, Rejection):
                t._reject(answer, "sealed answer", address)
                raise t._failed(
                    NetError("rejected", address, cause=answer.reason, detail=answer.detail)
                )
            counts.accepted += 1
            if isinstance(answer, Refused):
                raise t._failed(NetError("refused", address, cause=answer.reason))
            msg_id = session.session[:8] + seq.to_bytes(8, "big")
            return Opened(expect, answer, msg_id, int(t._wall() * 1000))
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _client_session(
        self, t: Transport, address: str, expect: PeerId, deadline: float
    ) -> sn.ClientSession | None:
        """A usable session with ``expect`` at ``address``; None if the peer has none to give.

        Raises:
            NetError: the handshake failed (unreachable, timeout, a bad answer).
        """
        key = (address, expect.raw)
        session = self.clients.get(key)
        if session is not None and session.usable(t._wall()):
            return session
        if self.sessionless.get(key, -math.inf) > t._wall():
            return None
        lock = self.handshaking.get(key)
        if lock is None:
            if len(self.handshaking) >= sn.CAPACITY:  # forget the idle ones
                for k in [k for k, v in self.handshaking.items() if not v.locked()]:
                    del self.handshaking[k]
            lock = self.handshaking[key] = trio.Lock()
        async with lock:  # one handshake per peer at a time; the others use its session
            session = self.clients.get(key)
            if session is not None and session.usable(t._wall()):
                return session
            return await self._handshake(t, address, expect, deadline)

    async def _handshake(
        self, t: Transport, address: str, expect: PeerId, deadline: float
    ) -> sn.ClientSession | None:
        key = (address, expect.raw)
        private = sn.new_private_key(t._entropy(sn.KEY_BYTES))
        hello_id = t._entropy(MSG_ID_BYTES)
        hello = seal(
            t.identity,
            SessionOpen(sn.public_bytes(private), str(expect)),
            t._wall(),
            hello_id,
        )
        left = max(deadline - trio.current_time(), 0.001)
        try:
            answer = await t.request_envelope(address, hello, expect=expect, timeout=left)
        except NetError as exc:
            if exc.reason == "refused" and exc.cause == "unknown_message":
                if len(self.sessionless) >= sn.CAPACITY:
                    del self.sessionless[next(iter(self.sessionless))]
                self.sessionless[key] = t._wall() + sn.LIFETIME  # an older peer
                return None
            raise
        accept = answer.message
        problem = ""
        if not isinstance(accept, SessionAccept):
            problem = f"a {type(accept).__name__} answered the handshake"
        elif accept.opened != hello_id or accept.peer != str(t.peer_id):
            problem = "the accept answers another handshake"
        elif not (0 < accept.lifetime < math.inf and accept.max_messages > 0):
            problem = "lifetime or message budget out of range"
        if problem or not isinstance(accept, SessionAccept):
            t._reject(Rejection("bad_session", problem), "session", address)
            raise t._failed(NetError("rejected", address, cause="bad_session", detail=problem))
        try:
            keys = sn.derive_keys(private, accept.ephemeral, hello, answer.envelope)
        except sn.SessionError as exc:
            t._reject(Rejection("bad_session", str(exc)), "session", address)
            raise t._failed(
                NetError("rejected", address, cause="bad_session", detail=str(exc))
            ) from None
        # Re-key a little before the server forgets the session (clocks differ, requests wait).
        lifetime = min(accept.lifetime, sn.LIFETIME)
        session = sn.ClientSession.from_keys(
            accept.session,
            keys,
            t._wall() + 0.9 * lifetime,
            min(accept.max_messages, sn.MAX_MESSAGES),
        )
        self.clients[key] = session
        self.clients.move_to_end(key)
        while len(self.clients) > sn.CAPACITY:
            self.clients.popitem(last=False)
        return session
