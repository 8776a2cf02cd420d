"""Finding gateways and peers: one address per gateway, records verified against their authors."""

from __future__ import annotations

import time

import pytest
import trio

from hypha_sm.net.discovery import Gateways, dialable
from hypha_sm.net.transport import Endpoint, NetError
from hypha_sm.wire import messages as m
from hypha_sm.wire.envelope import seal
from hypha_sm.wire.identity import Identity
from tests.netkit import running_gateway

pytestmark = pytest.mark.net

GATEWAY = Identity.from_seed(bytes([61]) * 32)
WORKER = Identity.from_seed(bytes([62]) * 32)
OTHER = Identity.from_seed(bytes([63]) * 32)


@pytest.mark.parametrize(
    ("bound", "via", "expected"),
    [
        ("tcp://0.0.0.0:7002", "tcp://10.1.2.3:7000", "tcp://10.1.2.3:7002"),
        ("tls+tcp://0.0.0.0:7002", "tls+tcp://gw.example:7000", "tls+tcp://gw.example:7002"),
        ("tcp://[::]:7002", "tcp://[fd00::1]:7000", "tcp://[fd00::1]:7002"),
        ("tcp://192.168.0.7:7002", "tcp://10.1.2.3:7000", "tcp://192.168.0.7:7002"),
        ("ipc:///tmp/gw.pub", "tcp://10.1.2.3:7000", "ipc:///tmp/gw.pub"),
        ("tcp://0.0.0.0:7002", "tcp://0.0.0.0:7000", "tcp://0.0.0.0:7002"),
    ],
)
def test_a_wildcard_host_is_replaced_by_the_host_the_gateway_was_reached_at(
    bound: str, via: str, expected: str
) -> None:
    """Only wildcard hosts are rewritten; concrete hosts and ipc paths stay as bound."""
    assert dialable(bound, via) == expected


async def test_one_address_per_gateway_is_enough_to_find_its_ingest_and_publish() -> None:
    """gateway_info answers with the addresses the gateway bound, made dialable."""
    async with running_gateway(Endpoint(GATEWAY), ingest="tcp://0.0.0.0:0") as gw:
        with Endpoint(WORKER) as worker, trio.fail_after(5):
            located = await Gateways(worker, [gw.listen]).locate(gw.listen)
    assert located.publish == gw.publish
    assert located.ingest == gw.ingest.replace("0.0.0.0", "127.0.0.1")


async def test_a_registered_peer_is_found_and_unknown_or_unreachable_gives_nothing() -> None:
    """register → lookup_peer returns the node's own signed addresses; a dead gateway is skipped."""
    async with running_gateway(Endpoint(GATEWAY)) as gw:
        with Endpoint(WORKER) as worker, Endpoint(OTHER) as other, trio.fail_after(10):
            await Gateways(worker, [gw.listen]).register(gw.listen, ["tcp://10.0.0.9:7200"], 60)
            finder = Gateways(other, ["tcp://127.0.0.1:9", gw.listen], timeout=0.5)
            found = await finder.lookup_peer(str(WORKER.peer_id))
            missing = await finder.lookup_peer(str(OTHER.peer_id))
    assert found == ("tcp://10.0.0.9:7200",)
    assert missing == ()


async def test_an_expired_or_forged_record_from_a_gateway_is_not_believed() -> None:
    """A gateway that hands out an expired record, or one signed by someone else, is ignored."""
    now = time.time()
    expired = seal(
        WORKER, m.PeerRecord(str(WORKER.peer_id), ("tcp://old:1",), now - 1), now - 5, bytes(16)
    )
    forged = seal(
        OTHER, m.PeerRecord(str(WORKER.peer_id), ("tcp://evil:1",), now + 60), now, bytes(16)
    )

    async def lying_gateway(opened: object) -> m.Message:
        return m.LookupReply((expired, forged, b"garbage"))

    with Endpoint(GATEWAY) as gateway, Endpoint(OTHER) as other:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(gateway.serve, "tcp://127.0.0.1:0", lying_gateway)
            with trio.fail_after(5):
                found = await Gateways(other, [address]).lookup_peer(str(WORKER.peer_id))
                with pytest.raises(NetError) as wrong:
                    await Gateways(other, [address]).locate(address)
            nursery.cancel_scope.cancel()
    assert found == ()
    assert wrong.value.reason == "unexpected_answer"


@pytest.mark.parametrize("publish", ["tcp://0.0.0.0:99999", "tcp://0.0.0.0:x"])
async def test_a_gateway_naming_an_unusable_address_is_an_error_not_a_crash(publish: str) -> None:
    """gateway_info is remote input: an address we cannot use is NetError('bad_address')."""

    async def odd_gateway(opened: object) -> m.Message:
        return m.GatewayInfoReply("tcp://127.0.0.1:7001", publish)

    with Endpoint(GATEWAY) as gateway, Endpoint(OTHER) as other:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(gateway.serve, "tcp://127.0.0.1:0", odd_gateway)
            with trio.fail_after(5), pytest.raises(NetError) as bad:
                await Gateways(other, [address]).locate(address)
            nursery.cancel_scope.cancel()
    assert bad.value.reason == "bad_address"
