"""Chunked bulk transfer of files between nodes, bound to a signed ``TransferOffer``.

Pseudo-gradients, parameter updates, dataset slices and model artifacts are files of up to many
GB. They move over a trio byte stream (``hypha_sm.net.streams``: ``tcp://``, ``ipc://``,
``tls+tcp://``), not as NNG messages: NNG reached 25-47 % of a bare TCP socket on loopback and
holds each message whole in memory, while a stream gives byte-level backpressure. The
measurements and the choice are in ``docs/network-bulk.md``.

Protocol, one transfer per connection (``frame`` = 4-byte big-endian length + that many bytes,
at most 64 KiB)::

    sender → receiver   MAGIC frame(seal(TransferOffer))    who sends what: name, size, digests
    receiver → sender   frame(seal(TransferAnswer))         accepted, or refused with a reason
    sender → receiver   chunk* end                          chunk = u32 n (1..MAX_CHUNK) + n bytes
                                                            end = u32 0
    sender → receiver   frame(seal(TransferTrailer))        only after an offer with
                                                            ``trailer = "blake3"``: the digest
    receiver → sender   frame(seal(TransferAnswer))         the verdict: accepted=True once the
                                                            file is verified, stored and (with
                                                            a ``place`` hook) placed

An offer names its digest, or (``trailer = "blake3"``, no digest named) promises it after the
bytes: a file still being written (``GrowingFile``, the parameter server's update) is sent as
it is written, and its BLAKE3 follows in a trailer signed by the offer's sender and naming the
transfer. The receiver checks it exactly as an offered digest.

The verdict may come early (too many bytes, disk error, the receiver cancelled); the sender
watches for it while it sends and stops at once. A refused verdict's ``reason`` starts with a
code: ``size-mismatch``, ``sha256-mismatch``, ``blake3-mismatch``, ``exists``, ``aborted``, ``not-placed`` (see
``protocol.verdict_reason`` and ``BulkServer``'s ``place``).

Threat model. Peers are identified by Ed25519 keys (``hypha_sm.wire``), never by addresses.

* The receiver writes bytes only after a ``TransferOffer`` envelope on the same connection was
  verified as signed by the sender, fresh (clock skew) and not replayed (the server's single
  ``Opener`` remembers envelope ids), and only if its ``authorize`` policy accepted that sender
  and offer. Oversized offers are refused before any byte is sent.
* A trailer counts only if it is signed by the offer's sender, fresh, not replayed and names
  the transfer; until it checks out the bytes stay in the ``.part`` file, so streaming before
  the digest is known gives an attacker nothing an offered digest would not.
* Integrity is end to end: the size and digest (BLAKE3, or SHA-256 where a manifest names it;
  the receiver checks every digest named) are inside the signed offer, so a corrupted or
  substituted stream fails the check, even over plain ``tcp://``; the partial file is removed
  and the error names expected and actual values. A file appears under its final name only
  after the check (it is ``.<transfer id>.part`` until then; the final step is an atomic link
  that never overwrites).
* The sender believes an answer or verdict only if it is signed by the receiver it meant
  (``peer``) and names its transfer id (128 random bits by default), so a forged "stored" or a
  replayed old verdict is refused.
* Names are plain file names (no separators, no leading dot) and the receiver chooses the
  directory. Resources are bounded: ``depth`` chunk buffers per transfer (chunks are at most
  ``MAX_CHUNK``), ``max_concurrent`` transfers, a timeout on every wait.
* Confidentiality, and protection against an on-path attacker who breaks or hijacks a
  connection after the offer, need ``tls+tcp://`` (mutual TLS: both certificates must chain to
  the configured trust bundle). ``tcp://`` and ``ipc://`` are for local development: an attacker
  there can read the bytes or spoil the transfer, but cannot get a different file accepted.
"""

from hypha_sm.net.bulk.growing import GrowingFile
from hypha_sm.net.bulk.protocol import (
    DEFAULT_CHUNK,
    DEFAULT_DEPTH,
    DEFAULT_MAX_SIZE,
    MAGIC,
    MAX_CHUNK,
    Authorize,
    BulkError,
    PeerAuthError,
    ReceivedFile,
    SentFile,
    TransferAborted,
    TransferMismatch,
    TransferRefused,
)
from hypha_sm.net.bulk.receive import BulkServer
from hypha_sm.net.bulk.send import (
    file_digest,
    new_transfer_id,
    send_file,
    send_over,
)

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_DEPTH",
    "DEFAULT_MAX_SIZE",
    "MAGIC",
    "MAX_CHUNK",
    "Authorize",
    "BulkError",
    "BulkServer",
    "GrowingFile",
    "PeerAuthError",
    "ReceivedFile",
    "SentFile",
    "TransferAborted",
    "TransferMismatch",
    "TransferRefused",
    "file_digest",
    "new_transfer_id",
    "send_file",
    "send_over",
]
