"""Mutual TLS on ``tls+tcp://``: trusted peers talk; a certificate from another CA is refused.

Certificates come from ``trustme``: one CA for the network, a server certificate for
``localhost`` and ``127.0.0.1``, client certificates, and a second, untrusted CA.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trustme

from hypha_sm.net.tls import TlsError, TlsFiles, host_of
from hypha_sm.net.transport import Endpoint, NetConfig, NetError
from hypha_sm.wire.envelope import Opened
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import Health, HealthReply, Message

pytestmark = pytest.mark.net

SERVER = Identity.from_seed(b"s" * 32)
CLIENT = Identity.from_seed(b"c" * 32)
SHORT = 0.5


def write_files(tmp_path: Path, name: str, leaf: trustme.LeafCert, trust: trustme.CA) -> TlsFiles:
    """PEM files for one node: its chain, its key, and the CA it trusts."""
    base = tmp_path / name
    base.mkdir()
    leaf.private_key_pem.write_to_path(str(base / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(base / "cert.pem"))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(base / "cert.pem"), append=True)
    trust.cert_pem.write_to_path(str(base / "trust.pem"))
    return TlsFiles(cert=base / "cert.pem", key=base / "key.pem", trust=base / "trust.pem")


class Pki:
    """The network's CA, an impostor CA, and the PEM files issued from them."""

    def __init__(self, tmp_path: Path) -> None:
        self.ca = trustme.CA()
        self.rogue = trustme.CA()
        self.server = write_files(
            tmp_path, "server", self.ca.issue_cert("localhost", "127.0.0.1"), self.ca
        )
        self.client = write_files(tmp_path, "client", self.ca.issue_cert("worker-1"), self.ca)
        # A certificate from the wrong CA (that otherwise trusts the right one).
        self.impostor = write_files(
            tmp_path, "impostor", self.rogue.issue_cert("worker-1"), self.ca
        )
        # A good certificate, but trusting only the rogue CA: it cannot accept our server.
        self.distrustful = write_files(
            tmp_path, "distrustful", self.ca.issue_cert("worker-2"), self.rogue
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


async def healthy(opened: Opened) -> Message:
    return HealthReply(healthy=True)


@asynccontextmanager
async def tls_server(files: TlsFiles) -> AsyncIterator[tuple[Endpoint, str]]:
    with Endpoint(SERVER, NetConfig(tls=files)) as server:
        async with trio.open_nursery() as nursery:
            address: str = await nursery.start(server.serve, "tls+tcp://127.0.0.1:0", healthy)
            yield server, address
            nursery.cancel_scope.cancel()


async def test_mutual_tls_round_trip(pki: Pki) -> None:
    """Both sides present certificates from the network's CA: the request is answered."""
    async with tls_server(pki.server) as (_, address):
        assert address.startswith("tls+tcp://127.0.0.1:")
        with Endpoint(CLIENT, NetConfig(tls=pki.client)) as client:
            answer = await client.request(address, Health(), expect=SERVER.peer_id)
    assert answer.message == HealthReply(healthy=True)


async def test_the_server_name_may_differ_from_the_dialled_host(pki: Pki) -> None:
    """``server_name`` checks the certificate against a configured name instead of the host."""
    files = TlsFiles(pki.client.cert, pki.client.key, pki.client.trust, server_name="localhost")
    async with tls_server(pki.server) as (_, address):
        with Endpoint(CLIENT, NetConfig(tls=files)) as client:
            answer = await client.request(address, Health())
    assert answer.message == HealthReply(healthy=True)


async def test_a_certificate_from_another_ca_is_refused_and_good_clients_are_still_served(
    pki: Pki,
) -> None:
    """The impostor never gets a connection (unreachable), the server counts the failed
    handshakes as tls_auth, and a trusted client is answered afterwards."""
    async with tls_server(pki.server) as (server, address):
        with Endpoint(CLIENT, NetConfig(tls=pki.impostor)) as impostor:
            with pytest.raises(NetError) as caught:
                await impostor.request(address, Health(), timeout=SHORT)
            assert caught.value.reason == "unreachable"
            assert impostor.stats().rejected["tls_auth"] >= 1
        with Endpoint(CLIENT, NetConfig(tls=pki.client)) as client:
            answer = await client.request(address, Health())
        assert answer.message == HealthReply(healthy=True)
        assert server.stats().rejected["tls_auth"] >= 1


async def test_a_client_that_does_not_trust_the_server_does_not_talk_to_it(pki: Pki) -> None:
    """Verification works both ways: a client trusting another CA refuses our server."""
    async with tls_server(pki.server) as (_, address):
        with (
            Endpoint(CLIENT, NetConfig(tls=pki.distrustful)) as client,
            pytest.raises(NetError) as caught,
        ):
            await client.request(address, Health(), timeout=SHORT)
    assert caught.value.reason == "unreachable"


async def test_a_wrong_server_name_is_refused(pki: Pki) -> None:
    """A certificate valid for other names does not authenticate this server."""
    files = TlsFiles(pki.client.cert, pki.client.key, pki.client.trust, server_name="example.org")
    async with tls_server(pki.server) as (_, address):
        with Endpoint(CLIENT, NetConfig(tls=files)) as client, pytest.raises(NetError) as caught:
            await client.request(address, Health(), timeout=SHORT)
    assert caught.value.reason == "unreachable"


async def test_advertisements_over_tls(pki: Pki) -> None:
    """Pub/sub works on tls+tcp:// with the same certificates."""
    with (
        Endpoint(SERVER, NetConfig(tls=pki.server)) as gateway,
        Endpoint(CLIENT, NetConfig(tls=pki.client)) as worker,
        gateway.publisher(listen=["tls+tcp://127.0.0.1:0"]) as pub,
        worker.subscribe(dial=list(pub.addresses)) as sub,
        trio.fail_after(5),
    ):
        while pub.connections == 0:  # noqa: ASYNC110 - NNG has no event for it
            await trio.sleep(0.01)
        await pub.publish(Health())
        got = await sub.receive()
    assert got.message == Health()
    assert got.sender == SERVER.peer_id


async def test_tls_addresses_need_tls_files() -> None:
    """Without ``NetConfig.tls`` a tls+tcp:// address is a bad address, not a plain socket."""
    with Endpoint(CLIENT) as client, pytest.raises(NetError) as caught:
        await client.request("tls+tcp://127.0.0.1:9", Health(), timeout=SHORT)
    assert caught.value.reason == "bad_address"


def test_missing_pem_files_are_reported_when_the_endpoint_starts(tmp_path: Path) -> None:
    """A missing file is named in a TlsError before any socket exists."""
    files = TlsFiles(tmp_path / "no-cert.pem", tmp_path / "no-key.pem", tmp_path / "no-ca.pem")
    with pytest.raises(TlsError, match=r"no-cert\.pem"):
        Endpoint(CLIENT, NetConfig(tls=files))


def test_unusable_pem_text_is_a_tls_error(tmp_path: Path, pki: Pki) -> None:
    """Files that are not certificates fail with TlsError when a socket is configured."""
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    files = TlsFiles(junk, pki.client.key, pki.client.trust)
    with Endpoint(CLIENT, NetConfig(tls=files)) as client, pytest.raises(TlsError):
        client.publisher(listen=["tls+tcp://127.0.0.1:0"])


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("tls+tcp://127.0.0.1:7000", "127.0.0.1"),
        ("tls+tcp://localhost:7000", "localhost"),
        ("tls+tcp://[::1]:7000", "::1"),
    ],
)
def test_the_default_server_name_is_the_dialled_host(address: str, host: str) -> None:
    """Without ``server_name``, a client checks the server's certificate for the URL's host."""
    assert host_of(address) == host
