"""Network addresses in settings: NNG URLs, or the original's multiaddrs converted to them.

A user coming from ``hypha-worker`` keeps ``/ip4/127.0.0.1/tcp/7200`` (and ``/ip6``, ``/dns``,
``/dns4``, ``/dns6``; a trailing ``/p2p/<peer id>`` is dropped: our envelopes name the peer;
``/tls`` selects ``tls+tcp://``). QUIC and other transports have no NNG equivalent and are
refused with a reason naming the address.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field

#: What an address must look like once converted.
PATTERN = r"^(tcp|tls\+tcp)://[^\s]+:\d+$|^ipc:///[^\s]+$"
_HOSTS = {"ip4", "ip6", "dns", "dns4", "dns6"}


def nng_address(value: object) -> object:
    """``value`` as an NNG URL if it is a multiaddr; anything else is left to the pattern."""
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    parts = value.strip("/").split("/")
    if len(parts) < 4 or parts[0] not in _HOSTS or parts[2] != "tcp":
        raise ValueError(
            f"multiaddr {value!r}: only /ip4|ip6|dns|dns4|dns6/<host>/tcp/<port> converts to "
            "an NNG address (QUIC and other transports are not supported)"
        )
    host, port = parts[1], parts[3]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"multiaddr {value!r}: port {port!r} is not 0..65535")
    rest = parts[4:]
    scheme = "tcp"
    if rest[:1] == ["tls"]:
        scheme, rest = "tls+tcp", rest[1:]
    if rest and not (rest[0] == "p2p" and len(rest) == 2):
        raise ValueError(f"multiaddr {value!r}: cannot convert /{'/'.join(rest)}")
    if parts[0] == "ip6":
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


#: An address setting: an NNG URL (``tcp://``, ``tls+tcp://``, ``ipc://``) or a multiaddr.
Address = Annotated[str, BeforeValidator(nng_address), Field(pattern=PATTERN)]
