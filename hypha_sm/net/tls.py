"""Mutual TLS for ``tls+tcp://`` addresses: PEM files in, ``pynng.TLSConfig`` objects out.

Both sides present a certificate and both require the other's to chain to a CA in ``trust``
(``AUTH_MODE_REQUIRED`` in server and client mode), so a peer with a certificate from another
CA cannot complete the handshake. A client checks the server's certificate against the host of
the address it dials (``localhost``, a DNS name or an IP address in the certificate's SAN)
unless ``TlsFiles.server_name`` says otherwise.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pynng

from hypha_sm.net.errors import NetworkError

TLS_SCHEME = "tls+tcp"


class TlsError(NetworkError, ValueError):
    """TLS material that cannot be used (a missing or unreadable PEM file)."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for mutual TLS.

    Attributes:
        cert: this node's certificate (a chain, leaf first, is fine).
        key: the private key of ``cert``.
        trust: the CA certificates a peer's certificate must chain to.
        server_name: the name a client checks in the server's certificate; by default the host
            of the dialled address.
    """

    cert: Path
    key: Path
    trust: Path
    server_name: str | None = None
    #: False: trust any certificate the bundle vouches for, whatever its name (peers are then
    #: identified by their signed envelopes; the certificate only says "member of this network").
    check_hostname: bool = True

    def ssl_server_context(self) -> ssl.SSLContext:
        """A stdlib server context (TLS 1.3) that requires and verifies the client's certificate."""
        return self._ssl_context(server=True)

    def ssl_client_context(self) -> ssl.SSLContext:
        """A stdlib client context (TLS 1.3) that presents our certificate and checks the server's."""
        return self._ssl_context(server=False)

    def _ssl_context(self, *, server: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            ctx.load_cert_chain(self.cert, self.key)
            ctx.load_verify_locations(cafile=self.trust)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(
                f"cannot load TLS files (cert {self.cert}, key {self.key}, trust {self.trust}): {exc}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
        if not server:
            ctx.check_hostname = self.check_hostname
        return ctx


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The PEM text of a ``TlsFiles``, read once when the endpoint starts."""

    cert: str
    key: str
    trust: str
    server_name: str | None = None

    @classmethod
    def load(cls, files: TlsFiles) -> TlsMaterial:
        """Read the three PEM files; raise ``TlsError`` naming the file that failed."""
        texts = []
        for path in (files.cert, files.key, files.trust):
            try:
                texts.append(Path(path).read_text(encoding="ascii"))
            except (OSError, UnicodeDecodeError) as exc:
                raise TlsError(f"cannot read PEM file {path}: {exc}") from None
        cert, key, trust = texts
        return cls(cert, key, trust, files.server_name)

    def server_config(self) -> pynng.TLSConfig:
        """Listening side: own certificate, and a client certificate is required."""
        return self._config(pynng.TLSConfig.MODE_SERVER, None)

    def client_config(self, address: str) -> pynng.TLSConfig:
        """Dialling side: own certificate, and the server's is checked for its name."""
        name = self.server_name or host_of(address)
        return self._config(pynng.TLSConfig.MODE_CLIENT, name)

    def _config(self, mode: int, server_name: str | None) -> pynng.TLSConfig:
        try:
            return pynng.TLSConfig(
                mode,
                server_name=server_name,
                ca_string=self.trust,
                own_cert_string=self.cert,
                own_key_string=self.key,
                auth_mode=pynng.TLSConfig.AUTH_MODE_REQUIRED,
            )
        except pynng.NNGException as exc:
            raise TlsError(f"unusable TLS material: {exc}") from None


def is_tls(address: str) -> bool:
    """Whether the address uses the TLS transport."""
    return address.startswith(TLS_SCHEME + "://")


def host_of(address: str) -> str:
    """The host part of an NNG URL (``tls+tcp://[::1]:7000`` gives ``::1``)."""
    host = urlsplit(address).hostname
    if not host:
        raise TlsError(f"no host in address {address!r}")
    return host
