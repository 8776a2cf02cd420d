"""``hypha-sm data run data.toml``: check the datasets, then serve them until SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import logging
from typing import BinaryIO

import trio

from hypha_sm.config.data import DataNodeSettings
from hypha_sm.net.keys import load_key_file
from hypha_sm.net.transport import Endpoint, NetConfig
from hypha_sm.roles.data.core.role import DATA
from hypha_sm.roles.data.node import DataNode, load_datasets, plan_of
from hypha_sm.runtime.bootstrap import on_stop_signals, tls_files
from hypha_sm.runtime.loop import open_run_log
from hypha_sm.runtime.textlog import configure

log = logging.getLogger(__name__)


def run_data_node(settings: DataNodeSettings) -> int:
    """Serve until a signal has drained every fetch; exit code 0 on a clean stop."""
    configure(settings.log_level, settings.log_format)
    identity = load_key_file(settings.node_key)
    datasets = load_datasets(settings.datasets)
    plan = plan_of(settings, datasets)
    tls = tls_files(settings)

    async def main() -> None:
        with contextlib.ExitStack() as files, Endpoint(identity, NetConfig(tls=tls)) as transport:
            sink: BinaryIO | None = None
            if settings.event_log_dir is not None:
                sink = files.enter_context(open_run_log(settings.event_log_dir, DATA))
                log.info("event log %s", sink.name)
            node = DataNode(
                transport,
                datasets,
                plan,
                gateways=settings.gateway_addresses,
                address=settings.listen_address,
                public_address=settings.external_address,
                tls=tls,
                event_log=sink,
            )
            async with trio.open_nursery() as nursery:

                async def drain(name: str) -> None:
                    log.info("%s: stopping (again to force)", name)
                    await node.shutdown()

                def force(name: str) -> None:
                    log.warning("%s again: forcing the exit", name)
                    nursery.cancel_scope.cancel()

                await nursery.start(on_stop_signals, drain, force)
                bound = await nursery.start(node.run)
                print(
                    f"data node {identity.peer_id} serving {', '.join(sorted(datasets))} on {bound}",
                    flush=True,
                )
                await node.stopped.wait()
                nursery.cancel_scope.cancel()
            counters = dict(sorted(node.state.counters.items()))
            print(f"data node stopped: {counters}", flush=True)

    trio.run(main)
    return 0
