"""How a request fails, and the protocol names of the byte counters.

Shared by the transport (``base``) and its sessions (``sessions``).
"""

from __future__ import annotations

from hypha_sm.net.errors import NetworkError

#: Why a request failed (``NetError.reason``).
NET_ERRORS = (
    "timeout",  # connected, but no answer in time (the peer dropped or never answered it)
    "unreachable",  # no connection to the address within the timeout
    "connection_lost",  # the connection closed while we waited (e.g. the peer's size limit)
    "too_large",  # our envelope is over our own size limit; it was not sent
    "rejected",  # the answer failed verification; ``cause`` is the Rejection reason
    "refused",  # the peer answered Refused; ``cause`` is its reason
    "closed",  # this endpoint was closed
    "bad_address",  # the address cannot be dialled or listened on
    "unexpected_answer",  # a verified answer of the wrong kind for the request
)


class NetError(NetworkError):
    """A request (or a publication) that failed, with a reason from ``NET_ERRORS``.

    Attributes:
        reason: what went wrong, from ``NET_ERRORS``.
        address: the address the request went to.
        cause: for ``rejected``, the Rejection reason; for ``refused``, the peer's reason.
        detail: a short human-readable detail.
    """

    def __init__(self, reason: str, address: str, *, cause: str = "", detail: str = "") -> None:
        self.reason = reason
        self.address = address
        self.cause = cause
        self.detail = detail
        text = f"{reason} ({cause})" if cause else reason
        super().__init__(f"{text}: {address}" + (f": {detail}" if detail else ""))


#: Protocol names in the byte counters (the ``protocols`` attribute of the bandwidth metrics).
REQUEST_PROTOCOL = "hypha/request"
PUBSUB_PROTOCOL = "hypha/pubsub"
