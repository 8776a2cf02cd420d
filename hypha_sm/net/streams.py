"""Byte streams for bulk data: ``tcp://``, ``ipc://`` and ``tls+tcp://`` (mutual TLS) under trio.

NNG carries messages; bulk bytes (pseudo-gradients, updates, dataset slices, model artifacts)
travel over plain trio streams opened here, using the same address syntax as NNG so one
address book serves both (see ``docs/network-bulk.md`` for why: NNG moved bulk bytes at 25-47 %
of a bare TCP socket and buffers whole messages).

TLS is the standard library's ``ssl`` on trio's ``SSLStream``: TLS 1.3 only, both sides present
a certificate and both verify the other against the trust bundle (``CERT_REQUIRED``), and the
client also checks the server's name (the address host unless ``server_name`` says otherwise).
A certificate from any other CA is refused during the handshake.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass
from typing import Literal

import trio

from hypha_sm.net.errors import NetworkError
from hypha_sm.net.tls import TlsError, TlsFiles

Scheme = Literal["tcp", "ipc", "tls+tcp"]
SCHEMES: tuple[Scheme, ...] = ("tcp", "ipc", "tls+tcp")


class AddressError(NetworkError, ValueError):
    """An address this module cannot use; the message says which part is wrong."""


#: TLS is required by the address but not configured, or a PEM file cannot be loaded.
TlsSetupError = TlsError


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed stream address: ``tcp://host:port``, ``tls+tcp://host:port`` or ``ipc:///path``."""

    scheme: Scheme
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def tls(self) -> bool:
        """Whether the stream is wrapped in TLS."""
        return self.scheme == "tls+tcp"

    def __str__(self) -> str:
        if self.scheme == "ipc":
            return f"ipc://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse an NNG-style stream address; raise ``AddressError`` saying what is wrong."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise AddressError(f"{text!r}: expected tcp://, tls+tcp:// or ipc://")
    if scheme == "ipc":
        if not rest:
            raise AddressError(f"{text!r}: ipc:// needs a socket path")
        return Address("ipc", path=rest)
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]:")
        if not bracket:
            raise AddressError(f"{text!r}: expected [ipv6]:port")
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise AddressError(f"{text!r}: expected host:port")
    if not host:
        raise AddressError(f"{text!r}: missing host")
    try:
        port = int(port_text)
    except ValueError:
        raise AddressError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise AddressError(f"{text!r}: port {port} out of range")
    return Address("tcp" if scheme == "tcp" else "tls+tcp", host=host, port=port)


def _require_tls(address: Address, tls: TlsFiles | None) -> TlsFiles:
    if tls is None:
        raise TlsSetupError(f"{address} needs a TLS configuration (cert, key, trust)")
    return tls


async def open_stream(address: str | Address, tls: TlsFiles | None = None) -> trio.abc.Stream:
    """Connect to ``address``; for ``tls+tcp://`` the TLS handshake is done before returning.

    Raises ``OSError`` if the peer cannot be reached and ``trio.BrokenResourceError`` (caused by
    an ``ssl.SSLError``) if the TLS handshake fails, e.g. the server's certificate is not
    vouched for by our trust bundle.
    """
    addr = parse_address(address) if isinstance(address, str) else address
    if addr.scheme == "ipc":
        return await trio.open_unix_socket(addr.path)
    ctx = _require_tls(addr, tls).ssl_client_context() if addr.tls else None
    stream = await trio.open_tcp_stream(addr.host, addr.port)
    if ctx is None:
        return stream
    assert tls is not None
    name = tls.server_name or addr.host
    ssl_stream = trio.SSLStream(stream, ctx, server_hostname=name if ctx.check_hostname else None)
    try:
        await ssl_stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return ssl_stream


async def _unix_socket(path: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            await sock.bind(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not stat.S_ISSOCK(os.stat(path).st_mode):
                raise
            # A socket file is there: remove it only if nobody is listening on it (stale).
            probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with probe:
                try:
                    await probe.connect(path)
                except ConnectionRefusedError:
                    pass
                else:
                    raise OSError(
                        errno.EADDRINUSE, f"{path} is in use by a live listener"
                    ) from exc
            os.unlink(path)
            await sock.bind(path)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_listener(
    address: str | Address, tls: TlsFiles | None = None
) -> tuple[trio.abc.Listener[trio.abc.Stream], Address]:
    """Listen on ``address``; returns the listener and the bound address (port 0 → real port).

    For ``tls+tcp://`` accepted streams are ``trio.SSLStream``s whose handshake runs on first
    use and requires a client certificate signed by the trust bundle.
    """
    addr = parse_address(address) if isinstance(address, str) else address
    if addr.scheme == "ipc":
        sock = await _unix_socket(addr.path)
        return trio.SocketListener(sock), addr
    ctx = _require_tls(addr, tls).ssl_server_context() if addr.tls else None
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind((addr.host, addr.port))
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    bound = Address(addr.scheme, host=addr.host, port=sock.getsockname()[1])
    listener: trio.abc.Listener[trio.abc.Stream] = trio.SocketListener(sock)
    if ctx is not None:
        listener = trio.SSLListener(listener, ctx)
    return listener, bound
