"""libp2p PeerIDs derived from the certificate's Ed25519 key, as Hypha does (SPEC A5).

PeerID = base58btc(identity-multihash(protobuf PublicKey{Type=Ed25519, Data=<32 raw bytes>})).
The protobuf encoding of an Ed25519 key is 36 bytes (<= 42), so libp2p inlines it with the identity
multihash instead of hashing it; the string therefore starts with ``12D3KooW``. PeerIDs change when the
key rotates (Hypha's accepted trade-off).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from cyxwiz.errors import ValidationError
from cyxwiz.pki.keys import public_key_raw, require_ed25519_public

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {char: index for index, char in enumerate(_B58_ALPHABET)}
#: protobuf: field 1 (Type) varint = 1 (Ed25519); field 2 (Data) length-delimited, 32 bytes.
_PROTOBUF_ED25519_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
_MULTIHASH_IDENTITY = 0x00


def b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(_B58_ALPHABET[rem])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    number = 0
    for char in text:
        if char not in _B58_INDEX:
            raise ValidationError(f"invalid base58 character {char!r}", field="peer_id")
        number = number * 58 + _B58_INDEX[char]
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body


def protobuf_public_key(key: ed25519.Ed25519PublicKey) -> bytes:
    """libp2p's protobuf ``PublicKey`` encoding of an Ed25519 key (36 bytes)."""
    return _PROTOBUF_ED25519_PREFIX + public_key_raw(key)


def peer_id(cert_or_public_key: x509.Certificate | PublicKeyTypes | ed25519.Ed25519PrivateKey) -> str:
    """The libp2p PeerID string (``12D3KooW…``) of a certificate's or key's Ed25519 public key."""
    if isinstance(cert_or_public_key, x509.Certificate):
        public: PublicKeyTypes = cert_or_public_key.public_key()
    elif isinstance(cert_or_public_key, ed25519.Ed25519PrivateKey):
        public = cert_or_public_key.public_key()
    else:
        public = cert_or_public_key
    key = require_ed25519_public(public)
    encoded = protobuf_public_key(key)
    return b58encode(bytes([_MULTIHASH_IDENTITY, len(encoded)]) + encoded)


def public_key_from_peer_id(text: str) -> ed25519.Ed25519PublicKey:
    """Inverse of :func:`peer_id` for Ed25519 PeerIDs (refuses other key types and hashed ids)."""
    raw = b58decode(text.strip())
    expected_len = 2 + len(_PROTOBUF_ED25519_PREFIX) + 32
    if (
        len(raw) != expected_len
        or raw[0] != _MULTIHASH_IDENTITY
        or raw[1] != expected_len - 2
        or raw[2:6] != _PROTOBUF_ED25519_PREFIX
    ):
        raise ValidationError(
            "not an Ed25519 libp2p PeerID (identity multihash of a protobuf Ed25519 key)",
            field="peer_id",
            rule="A5",
        )
    return ed25519.Ed25519PublicKey.from_public_bytes(raw[6:])
