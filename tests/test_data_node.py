"""The data node over real sockets: it checks its datasets at start, announces them at a real
gateway, sends granted slices over the bulk channel (verified by the receiver against the
manifest), refuses bad grants with a reason and keeps serving, and never delivers a slice whose
bytes changed on disk."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from hypha_sm.cli import main
from hypha_sm.config.data import DataNodeSettings
from hypha_sm.datasets.manifest import DatasetError
from hypha_sm.net.bulk import BulkServer, ReceivedFile
from hypha_sm.net.discovery import Gateways
from hypha_sm.net.transport import Endpoint, NetError
from hypha_sm.roles.data.node import DataNode, load_datasets, plan_of
from hypha_sm.wire import messages as m
from hypha_sm.wire.identity import Identity
from tests.netkit import LOOPBACK, running_gateway

pytestmark = pytest.mark.net

GATEWAY = Identity.from_seed(bytes([101]) * 32)
DATA_NODE = Identity.from_seed(bytes([102]) * 32)
SCHED = Identity.from_seed(bytes([103]) * 32)
WORKER = Identity.from_seed(bytes([104]) * 32)
FORGER = Identity.from_seed(bytes([105]) * 32)


def dataset(tmp_path: Path, name: str = "fox") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"The quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / name
    args = ["--text", str(corpus), "--samples-per-slice", "4", "--seq-len", "16"]
    assert main(["data", "prepare", "--out", str(out), *args]) == 0
    return out


def settings(tmp_path: Path, gateway: str, *datasets: Path) -> DataNodeSettings:
    return DataNodeSettings(
        node_key=tmp_path / "unused.pem",
        gateway_addresses=[gateway],
        datasets=list(datasets),
        grant_from=[str(SCHED.peer_id)],
        max_concurrent=2,
    )


def test_a_dataset_that_does_not_match_its_manifest_is_not_served(tmp_path: Path) -> None:
    good, bad = dataset(tmp_path / "a"), dataset(tmp_path / "b", "other")
    (bad / "train-00003.safetensors").write_bytes(b"changed")
    assert sorted(load_datasets([good, bad])) == ["fox"]
    with pytest.raises(DatasetError, match="no dataset to serve"):
        load_datasets([bad])


async def test_granted_slices_arrive_verified_and_bad_grants_are_refused(tmp_path: Path) -> None:
    directory = dataset(tmp_path)
    received: list[ReceivedFile] = []
    inbox = tmp_path / "inbox"
    bulk = BulkServer(
        inbox,
        identity=WORKER,
        authorize=lambda sender, offer: None if sender == DATA_NODE.peer_id else "not expected",
        on_result=lambda outcome: (
            received.append(outcome)  # type: ignore[arg-type]
            if isinstance(outcome, ReceivedFile)
            else None
        ),
    )
    async with running_gateway(Endpoint(GATEWAY)) as gw, trio.open_nursery() as nursery:
        config = settings(tmp_path, gw.listen, directory)
        datasets = load_datasets(config.datasets)
        with Endpoint(DATA_NODE) as dn, Endpoint(WORKER) as worker, Endpoint(SCHED) as sched:
            node = DataNode(
                dn, datasets, plan_of(config, datasets), gateways=[gw.listen], address=LOOPBACK
            )
            address = await nursery.start(node.run)
            bulk_address = await nursery.start(bulk.serve, LOOPBACK)
            fox = datasets["fox"]

            def grant(index: int, by: Endpoint = sched, worker_id: Identity = WORKER) -> bytes:
                terms = m.SliceGrant(
                    "fox", index, fox.manifest_hash, str(worker_id.peer_id), time.time() + 60
                )
                return by.seal(terms)

            with trio.fail_after(20):
                # The records are at the gateway: a scheduler finds the dataset and the address.
                lookup = Gateways(worker, [gw.listen])
                while not await lookup.lookup_dataset("fox"):  # noqa: ASYNC110
                    await trio.sleep(0.05)
                (record,) = await lookup.lookup_dataset("fox")
                assert (record.slices, record.manifest_hash) == (25, fox.manifest_hash)
                assert await lookup.lookup_peer(str(DATA_NODE.peer_id)) == (address,)

                served = await worker.request(
                    address, m.SliceFetch(grant(3), "t-3", str(bulk_address))
                )
                piece = fox.manifest.slices[3]
                assert served.message == m.SliceServed("t-3", piece.size, piece.sha256)
                (arrived,) = received
                assert arrived.path.read_bytes() == (directory / piece.file).read_bytes()

                refusals = {
                    "grant_not_trusted": grant(1, by=Endpoint(FORGER)),
                    "grant_for_another_peer": grant(1, worker_id=FORGER),
                    "index_out_of_range": grant(25),  # == slices: the original served or crashed
                    "bad_grant": b"not an envelope",
                }
                for reason, bad in refusals.items():
                    with pytest.raises(NetError, match=reason):
                        await worker.request(address, m.SliceFetch(bad, "t-x", str(bulk_address)))
                # The manifest needs a grant too; with one, it arrives as announced.
                stranger = m.SliceFetch(
                    b"not an envelope", "t-m", str(bulk_address), manifest=True
                )
                with pytest.raises(NetError, match="bad_grant"):
                    await worker.request(address, stranger)
                manifest = m.SliceFetch(grant(25), "t-m", str(bulk_address), manifest=True)
                served = await worker.request(address, manifest)  # any index: the dataset's
                assert isinstance(served.message, m.SliceServed)
                assert "sha256:" + served.message.sha256 == fox.manifest_hash
                received.pop()
                # A slice changed on disk after the start check is never delivered as good.
                (directory / fox.manifest.slices[5].file).write_bytes(b"changed after the check")
                with pytest.raises(NetError, match="send_failed"):
                    await worker.request(address, m.SliceFetch(grant(5), "t-5", str(bulk_address)))
                assert len(received) == 1
                # And the node keeps serving.
                again = await worker.request(
                    address, m.SliceFetch(grant(4), "t-4", str(bulk_address))
                )
                assert isinstance(again.message, m.SliceServed)
                assert node.state.counters["fetches.sent"] == 3  # slices 3 and 4, the manifest
                await node.shutdown()
                await node.stopped.wait()
            nursery.cancel_scope.cancel()
