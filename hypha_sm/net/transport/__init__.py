"""Signed envelopes over NNG: request/response with concurrent contexts, and pub/sub.

A ``Transport`` is one node's presence on the network. It seals what it sends with the node's
identity and opens what it receives with an ``Opener`` (``hypha_sm.wire.envelope``); upper
layers only ever see verified ``Opened`` messages. Two implementations share all of that
logic: ``Endpoint`` (NNG sockets, this module) and ``MemoryEndpoint`` (trio memory channels,
``hypha_sm.net.memory``) for testing the layers above.

Request/response (``serve`` / ``request``):
    The server answers on a Rep0 socket with ``NetConfig.contexts`` contexts, so that many
    requests are handled at once. A request that fails verification is counted by reason and
    logged at debug level. If its signature was valid (``stale``, ``replayed``,
    ``unknown_message``, ``malformed_payload``) the sender gets a sealed ``Refused(reason)``;
    unauthenticated input (``oversized``, ``malformed``, ``unknown_version``, ``bad_sender``,
    ``bad_signature``) gets no answer at all, so forged traffic costs us no signature and tells
    the sender nothing. A handler that raises is logged, counted, and answered with
    ``Refused("internal_error")``; the server keeps serving. The client keeps one Req0 socket
    per address (dialled once, in the background) and raises ``NetError`` for every failure.

Pub/sub (``publisher`` / ``subscribe``):
    Frames are ``hypha_sm.net.relay`` frames: ``TOPIC_WORKER + sequence (u64) + envelope``.
    NNG subscriptions match the topic prefix; the envelope is signed by its author, so a
    gateway relays the bytes it verified (``Publisher.relay``) without signing them again and
    numbers the frames itself. NNG pub/sub drops silently when a queue is full: a subscriber
    finds each loss as a gap in the numbering of the connection the frame came on
    (``relay.GapCounter``) and counts it as ``dropped``. The same advertisement arriving
    through a second gateway is refused by the replay guard and counted as a duplicate, not as
    an attack.

Size limits:
    An envelope over ``recv_max_size`` (request/response) or ``publication_max_size``
    (pub/sub) is refused and counted as ``oversized``. Every NNG socket also has a hard
    ``recv-size-max`` of twice that: NNG refuses a longer frame while reading its length
    header, so it is never buffered, and closes that connection. NNG reports that only as
    "other errors" of the listener or dialer, the same bucket as a peer hanging up, so those
    are counted as ``connection_errors``, not as rejections. ``Endpoint`` reads NNG's
    statistics when a connection closes and when ``stats()`` is called; TLS handshake failures
    ("auth") and SP protocol mismatches ("reject", "proto") are counted as ``tls_auth`` and
    ``protocol`` rejections.
"""

from hypha_sm.net.transport.base import (
    DRAIN_BATCH,
    HARD_LIMIT_FACTOR,
    NNG_ERRORS,
    TRANSPORT_REASONS,
    Handler,
    NetConfig,
    NetStats,
    Publisher,
    Subscription,
    Transport,
)
from hypha_sm.net.transport.failures import (
    NET_ERRORS,
    PUBSUB_PROTOCOL,
    REQUEST_PROTOCOL,
    NetError,
)
from hypha_sm.net.transport.nng import Endpoint

__all__ = [
    "DRAIN_BATCH",
    "HARD_LIMIT_FACTOR",
    "NET_ERRORS",
    "NNG_ERRORS",
    "PUBSUB_PROTOCOL",
    "REQUEST_PROTOCOL",
    "TRANSPORT_REASONS",
    "Endpoint",
    "Handler",
    "NetConfig",
    "NetError",
    "NetStats",
    "Publisher",
    "Subscription",
    "Transport",
]
