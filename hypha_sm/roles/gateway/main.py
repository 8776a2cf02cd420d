"""``hypha-sm gateway run``: load settings and the key, run the gateway until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import sys

import trio

from hypha_sm.config.gateway import GatewaySettings
from hypha_sm.net.keys import load_key_file
from hypha_sm.net.transport import Endpoint, NetConfig
from hypha_sm.roles.gateway.gateway import Gateway
from hypha_sm.runtime.bootstrap import on_stop_signals, tls_files
from hypha_sm.runtime.textlog import configure


def run_gateway(settings: GatewaySettings) -> int:
    """Run until a signal; exit code 0 on a clean stop."""
    configure(settings.log_level, settings.log_format)
    identity = load_key_file(settings.node_key)
    config = NetConfig(max_skew=settings.max_skew, tls=tls_files(settings))

    async def main() -> None:
        with Endpoint(identity, config) as transport:
            gateway = Gateway(
                transport,
                listen=settings.listen,
                ingest=settings.ingest,
                publish=settings.publish,
                max_records=settings.max_records,
                max_directory_bytes=settings.max_directory_mb << 20,
                relay_queue=settings.relay_queue,
            )
            async with trio.open_nursery() as nursery:

                async def stop(name: str) -> None:
                    logging.getLogger(__name__).info("%s: stopping", name)
                    nursery.cancel_scope.cancel()

                # Signals are caught before the gateway says it is ready.
                await nursery.start(on_stop_signals, stop)
                bound = await nursery.start(gateway.run)
                print(
                    f"gateway {identity.peer_id} ready: listen {bound.listen} "
                    f"ingest {bound.ingest} publish {bound.publish}",
                    flush=True,
                )
            stats = gateway.stats
            net = transport.stats()
            print(
                f"gateway stopped: relayed {stats.relayed}, overload dropped "
                f"{stats.overload_dropped}, lost before arrival {net.dropped}, "
                f"refused {dict(stats.refused)}, rejected {dict(net.rejected)}",
                file=sys.stderr,
                flush=True,
            )

    trio.run(main)
    return 0
