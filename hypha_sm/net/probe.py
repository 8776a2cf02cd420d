"""``hypha-sm probe ADDRESS``: exit 0 only if the node answers healthy within the timeout."""

from __future__ import annotations

import trio

from hypha_sm.net.tls import TlsFiles
from hypha_sm.net.transport import Endpoint, NetConfig, NetError
from hypha_sm.wire.identity import Identity
from hypha_sm.wire.messages import Health, HealthReply


async def probe(
    address: str,
    *,
    seconds: float,
    identity: Identity | None = None,
    tls: TlsFiles | None = None,
) -> tuple[bool, str]:
    """(healthy, what happened) within ``seconds``. Any failure is unhealthy, with its reason."""
    with Endpoint(identity or Identity.generate(), NetConfig(tls=tls)) as endpoint:
        try:
            with trio.fail_after(seconds):
                answer = await endpoint.request(address, Health(), timeout=seconds)
        except NetError as exc:
            return False, f"no healthy answer: {exc}"
        except trio.TooSlowError:
            return False, "no healthy answer: timeout"
    if isinstance(answer.message, HealthReply) and answer.message.healthy:
        return True, f"healthy ({answer.sender})"
    return False, f"unhealthy ({answer.sender})"
