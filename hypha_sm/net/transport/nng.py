"""The NNG transport: ``Endpoint`` (request/response with concurrent contexts, and pub/sub)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pynng
import trio

from hypha_sm.net.tls import TlsMaterial, is_tls
from hypha_sm.net.transport.base import (
    DRAIN_BATCH,
    HARD_LIMIT_FACTOR,
    NNG_ERRORS,
    Handler,
    NetConfig,
    NetStats,
    Publisher,
    Subscription,
    Transport,
)
from hypha_sm.net.transport.failures import NetError
from hypha_sm.wire.envelope import Opener
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import TOPIC_WORKER

log = logging.getLogger("hypha_sm.net")


# -- NNG ---------------------------------------------------------------------------------------


class Endpoint(Transport):
    """The NNG transport: tcp://, ipc:// and tls+tcp:// (mutual TLS from ``config.tls``).

    Use it as a context manager (or call ``close``) so the pooled Req0 sockets are closed;
    ``serve``, publishers and subscriptions close their own sockets.
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
        super().__init__(identity, config, wall=wall, entropy=entropy, opener=opener)
        tls = self.config.tls
        self._tls = TlsMaterial.load(tls) if tls is not None else None
        self._requesters: dict[str, pynng.Req0] = {}
        # Our NNG listeners and dialers (with their TLS configs): their error statistics are
        # read into the counters.
        self._watched: dict[int, _Watched] = {}
        self._token: trio.lowlevel.TrioToken | None = None

    # -- sockets -------------------------------------------------------------------------------

    def _socket(
        self, kind: Callable[..., pynng.Socket], limit: int, **options: Any
    ) -> pynng.Socket:
        sock = kind(recv_max_size=HARD_LIMIT_FACTOR * limit, **options)
        with contextlib.suppress(RuntimeError):
            self._token = trio.lowlevel.current_trio_token()
        sock.add_post_pipe_remove_cb(self._on_pipe_removed)
        return sock

    def _attach(self, sock: pynng.Socket, address: str, *, listen: bool) -> str:
        """Listen on or dial (in the background) ``address``; returns the bound URL."""
        tls: pynng.TLSConfig | None = None
        if is_tls(address):
            if self._tls is None:
                raise NetError("bad_address", address, detail="tls+tcp:// needs NetConfig.tls")
            tls = self._tls.server_config() if listen else self._tls.client_config(address)
        lib, ffi = pynng.lib, pynng.ffi
        url = address.encode()
        try:
            # Created, configured, then started: TLS is set per listener/dialer, so one socket
            # may listen and dial with different settings (and dial several server names).
            if listen:
                handle = ffi.new("nng_listener *")
                pynng.check_err(lib.nng_listener_create(handle, sock.socket, url))
                ep: Any = pynng.Listener(handle, sock)
            else:
                handle = ffi.new("nng_dialer *")
                pynng.check_err(lib.nng_dialer_create(handle, sock.socket, url))
                ep = pynng.Dialer(handle, sock)
            try:
                if tls is not None:
                    ep.tls_config = tls
                if listen:
                    pynng.check_err(lib.nng_listener_start(handle[0], 0))
                else:
                    pynng.check_err(lib.nng_dialer_start(handle[0], lib.NNG_FLAG_NONBLOCK))
            except BaseException:
                if listen:
                    lib.nng_listener_close(handle[0])
                else:
                    lib.nng_dialer_close(handle[0])
                raise
        except pynng.NNGException as exc:
            raise NetError("bad_address", address, detail=str(exc)) from None
        self._watched[id(ep)] = _Watched(ep, listen, address, sock, tls)
        bound: str = ep.url if listen else address
        return bound

    def _retire(self, sock: pynng.Socket) -> None:
        """Fold in the socket's last error counts, then close it."""
        self._poll_transport_errors()
        sock.close()
        for key in [k for k, w in self._watched.items() if w.sock is sock]:
            del self._watched[key]

    def _on_pipe_removed(self, pipe: pynng.Pipe) -> None:
        # Called on an NNG thread: hop to trio to read the statistics.
        token = self._token
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._poll_transport_errors)

    def _poll_transport_errors(self) -> None:
        """Count NNG's new TLS, protocol and connection errors, and log them."""
        if not self._watched:
            return
        lib, ffi = pynng.lib, pynng.ffi
        root = ffi.new("nng_stat **")
        if lib.nng_stats_get(root) != 0:
            return
        try:
            for w in self._watched.values():
                if w.listen:
                    node = lib.nng_stat_find_listener(root[0], w.ep.listener)
                else:
                    node = lib.nng_stat_find_dialer(root[0], w.ep.dialer)
                if node == ffi.NULL:
                    continue
                for nng_name, reason in NNG_ERRORS:
                    stat = lib.nng_stat_find(node, nng_name.encode())
                    if stat == ffi.NULL:
                        continue
                    value = int(lib.nng_stat_value(stat))
                    new = value - w.seen[nng_name]
                    if new <= 0:
                        continue
                    w.seen[nng_name] = value
                    if reason == "connection_errors":
                        self._counts.connection_errors += new
                    else:
                        self._counts.rejected[reason] += new
                    log.debug(
                        "%s %s: NNG counted %d more %s",
                        "listener" if w.listen else "dialer",
                        w.address,
                        new,
                        reason,
                    )
        finally:
            lib.nng_stats_free(root[0])

    def stats(self) -> NetStats:
        """A snapshot of the counters (NNG's own error counts read now)."""
        self._poll_transport_errors()
        return super().stats()

    # -- request/response ----------------------------------------------------------------------

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer requests on ``address`` with ``config.contexts`` Rep0 contexts."""
        sock = self._socket(pynng.Rep0, self.config.recv_max_size)
        contexts: list[pynng.Context] = []
        try:
            bound = self._attach(sock, address, listen=True)
            contexts = [sock.new_context() for _ in range(self.config.contexts)]
            async with trio.open_nursery() as nursery:
                for ctx in contexts:
                    nursery.start_soon(self._serve_context, ctx, handler)
                task_status.started(bound)
        finally:
            for ctx in contexts:
                with contextlib.suppress(pynng.NNGException):
                    ctx.close()
            self._retire(sock)

    async def _serve_context(self, ctx: pynng.Context, handler: Handler) -> None:
        while True:
            try:
                msg = await ctx.arecv_msg()
            except pynng.Closed:
                return
            except pynng.NNGException as exc:  # not seen in practice; never spin on it
                log.warning("receive failed on a server context: %s", exc)
                await trio.sleep(0.01)
                continue
            answer = await self._answer(msg.bytes, handler, functools.partial(_remote, msg))
            if answer is None:
                continue  # the next receive on this context drops the request
            try:
                await ctx.asend(answer)
            except pynng.Closed:
                return
            except pynng.NNGException as exc:
                log.debug("answer not sent to %s: %s", _remote(msg), exc)

    def _requester(self, address: str) -> pynng.Req0:
        sock = self._requesters.get(address)
        if sock is None:
            # No resends: a resent envelope would be refused as a replay; the caller's timeout
            # is the only retry policy.
            sock = self._socket(pynng.Req0, self.config.recv_max_size, resend_time=-1)
            try:
                self._attach(sock, address, listen=False)
            except BaseException:
                sock.close()
                raise
            self._requesters[address] = sock
        return sock

    async def _exchange(self, address: str, envelope: bytes, timeout: float) -> bytes:  # noqa: ASYNC109
        if self._closed:
            raise NetError("closed", address)
        sock = self._requester(address)
        try:
            ctx = sock.new_context()
        except pynng.NNGException as exc:
            raise NetError("closed", address, detail=str(exc)) from None
        had_pipe = bool(sock.pipes)
        try:
            with trio.move_on_after(timeout):
                await ctx.asend(envelope)
                answer: bytes = await ctx.arecv()
                return answer
            if sock.pipes:
                reason = "timeout"
            elif had_pipe:  # the connection it went out on closed (e.g. the peer's size limit)
                reason = "connection_lost"
            else:
                reason = "unreachable"
            raise NetError(reason, address, detail=f"no answer in {timeout:g} s")
        except pynng.Closed:
            raise NetError("closed", address) from None
        except pynng.NNGException as exc:
            raise NetError("connection_lost", address, detail=str(exc)) from None
        finally:
            with contextlib.suppress(pynng.NNGException):
                ctx.close()

    # -- pub/sub -------------------------------------------------------------------------------

    def publisher(self, *, listen: Sequence[str] = (), dial: Sequence[str] = ()) -> Publisher:
        """A Pub0 socket; the bound addresses are in ``.addresses``."""
        sock = self._socket(
            pynng.Pub0,
            self.config.publication_max_size,
            send_buffer_size=self.config.pubsub_buffer,
        )
        bound = self._attach_all(sock, listen, dial)
        return _NngPublisher(self, sock, bound)

    def subscribe(self, *, dial: Sequence[str] = (), listen: Sequence[str] = ()) -> Subscription:
        """A Sub0 socket subscribed to ``TOPIC_WORKER``; bound addresses in ``.addresses``."""
        sock = self._socket(
            pynng.Sub0,
            self.config.publication_max_size,
            recv_buffer_size=self.config.pubsub_buffer,
        )
        sub = _NngSubscription(self, sock)
        sock.add_post_pipe_remove_cb(sub._on_pipe_removed)
        try:
            sock.subscribe(TOPIC_WORKER)
        except BaseException:
            self._retire(sock)
            raise
        sub.bound = self._attach_all(sock, listen, dial)
        return sub

    def _attach_all(
        self, sock: pynng.Socket, listen: Iterable[str], dial: Iterable[str]
    ) -> tuple[str, ...]:
        """Listen and dial; on failure the socket is closed."""
        try:
            bound = tuple(self._attach(sock, a, listen=True) for a in listen)
            for a in dial:
                self._attach(sock, a, listen=False)
        except BaseException:
            self._retire(sock)
            raise
        return bound

    # -- life cycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled Req0 sockets; requests in flight fail with ``closed``."""
        super().close()
        requesters, self._requesters = self._requesters, {}
        for sock in requesters.values():
            self._retire(sock)


@dataclass(slots=True)
class _Watched:
    ep: Any  # pynng.Listener | pynng.Dialer
    listen: bool
    address: str
    sock: pynng.Socket
    tls: pynng.TLSConfig | None  # held while NNG uses it
    seen: Counter[str] = field(default_factory=Counter)


def _remote(msg: pynng.Message) -> str:
    """The remote address of the pipe a message came on, for logs."""
    try:
        return str(msg.pipe.remote_address)
    except Exception:  # the pipe may be gone; this is only for a log line
        return "?"


class _NngPublisher(Publisher):
    def __init__(self, transport: Endpoint, sock: pynng.Pub0, bound: tuple[str, ...]) -> None:
        super().__init__(transport)
        self._endpoint = transport
        self._sock = sock
        self._bound = bound

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._bound

    @property
    def connections(self) -> int:
        return len(self._sock.pipes)

    async def _send_frame(self, frame: bytes) -> None:
        try:
            await self._sock.asend(frame)
        except pynng.Closed:
            raise NetError("closed", ",".join(self._bound) or "publisher") from None

    def close(self) -> None:
        self._closed = True
        self._endpoint._retire(self._sock)


def _frame_of(msg: pynng.Message) -> tuple[bytes, int]:
    pipe = msg.pipe
    return msg.bytes, pipe.id if pipe is not None else -1


class _NngSubscription(Subscription):
    def __init__(self, transport: Endpoint, sock: pynng.Sub0) -> None:
        super().__init__(transport)
        self._endpoint = transport
        self._sock = sock
        self.bound: tuple[str, ...] = ()
        self._queued: deque[tuple[bytes, int]] = deque()

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.bound

    @property
    def connections(self) -> int:
        return len(self._sock.pipes)

    def _on_pipe_removed(self, pipe: pynng.Pipe) -> None:
        self._forget_source(pipe.id)  # on an NNG thread; a single dict.pop is atomic

    async def _receive_frame(self) -> tuple[bytes, int]:
        # One async receive (a hop through NNG's thread pool, ~70 µs) waits for a frame; the
        # frames NNG has already queued behind it are then taken without waiting (a plain
        # non-blocking call, no fd polling), up to DRAIN_BATCH, for ``_take_queued``. Under
        # load this halves the cost per frame, which keeps a lagging subscriber from dropping.
        try:
            msg = await self._sock.arecv_msg()
            for _ in range(DRAIN_BATCH - 1):
                try:
                    self._queued.append(_frame_of(self._sock.recv_msg(block=False)))
                except pynng.TryAgain:
                    break
        except pynng.Closed:
            raise NetError("closed", ",".join(self.bound) or "subscription") from None
        return _frame_of(msg)

    def _take_queued(self) -> list[tuple[bytes, int]]:
        frames = list(self._queued)
        self._queued.clear()
        return frames

    def close(self) -> None:
        self._endpoint._retire(self._sock)
