"""Node identities: one Ed25519 key per node; peer ids in the libp2p text form (``12D3KooW…``).

A libp2p peer id for an Ed25519 key is the *identity* multihash of the protobuf-encoded public
key, written in base58btc. Because the key is embedded, a receiver recovers the public key from
the sender's peer id alone and can check the signature with nothing else.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hypha_sm.wire.errors import WireError

# protobuf PublicKey { KeyType Type = 1 (Ed25519 = 1); bytes Data = 2 (32 bytes) }
_PROTO_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
# multihash: identity (0x00), length 36
_MULTIHASH_PREFIX = bytes([0x00, 0x24])
PEER_ID_BYTES = len(_MULTIHASH_PREFIX) + len(_PROTO_PREFIX) + 32  # 38


class IdentityError(WireError):
    """A peer id or key that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class PeerId:
    """A peer id: the 38 bytes on the wire, and the base58 text people see."""

    raw: bytes

    @classmethod
    def from_public_key(cls, public: bytes) -> PeerId:
        """The peer id of a raw 32-byte Ed25519 public key."""
        if len(public) != 32:
            raise IdentityError("an Ed25519 public key is 32 bytes")
        return cls(_MULTIHASH_PREFIX + _PROTO_PREFIX + public)

    @classmethod
    def from_bytes(cls, raw: bytes) -> PeerId:
        """Parse wire bytes; only Ed25519 identity peer ids are accepted."""
        if len(raw) != PEER_ID_BYTES or not raw.startswith(_MULTIHASH_PREFIX + _PROTO_PREFIX):
            raise IdentityError("not an Ed25519 identity peer id")
        return cls(raw)

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """Parse the base58 text form (``12D3KooW…``)."""
        try:
            raw = base58.b58decode(text)
        except ValueError:
            raise IdentityError(f"peer id {text!r} is not base58") from None
        return cls.from_bytes(raw)

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key inside the id."""
        return self.raw[-32:]

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` over ``data`` was made by this peer's key."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def __str__(self) -> str:
        return _base58(self.raw)


@functools.lru_cache(maxsize=4096)
def _base58(raw: bytes) -> str:
    # Every envelope's sender is shown as text (~25 µs of base58 each); peers repeat.
    return base58.b58encode(raw).decode()


class Identity:
    """A node's private key and its peer id."""

    __slots__ = ("_key", "peer_id")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.peer_id = PeerId.from_public_key(public)

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity whose private key is this 32-byte seed (tests, golden vectors)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def generate(cls) -> Identity:
        """A new random identity (the shell's job: it draws entropy)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> Identity:
        """Load a PKCS#8 PEM Ed25519 private key."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"not a PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError("the node key must be an Ed25519 key")
        return cls(key)

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (store it with mode 0600)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature (deterministic for the same key and data)."""
        return self._key.sign(data)
