"""PeerIDs (A5): libp2p's Ed25519 encoding, checked against the libp2p spec's test key."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from cyxwiz.errors import KeyTypeError, ValidationError
from cyxwiz.pki.ca import CertificateAuthority
from cyxwiz.pki.peerid import b58decode, b58encode, peer_id, protobuf_public_key, public_key_from_peer_id
from tests.pki.conftest import Hierarchy, rsa_leaf_signed_by

# libp2p/specs peer-ids.md test vectors: the Ed25519 private key protobuf 08011240<seed><pub> and its
# public key protobuf 08011220<pub>; the PeerID string is the one rust-libp2p derives from that key.
SPEC_SEED = bytes.fromhex("7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d")
SPEC_PUBLIC_PROTOBUF = bytes.fromhex(
    "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SPEC_PEER_ID = "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq"


def test_spec_vector() -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(SPEC_SEED)
    assert protobuf_public_key(key.public_key()) == SPEC_PUBLIC_PROTOBUF
    assert peer_id(key.public_key()) == SPEC_PEER_ID
    assert peer_id(key) == SPEC_PEER_ID
    # identity multihash: 0x00, length 36, then the protobuf bytes
    assert b58decode(SPEC_PEER_ID) == bytes([0x00, 36]) + SPEC_PUBLIC_PROTOBUF
    assert public_key_from_peer_id(SPEC_PEER_ID).public_bytes_raw() == SPEC_PUBLIC_PROTOBUF[4:]


def test_base58_bitcoin_alphabet_vectors() -> None:
    # draft-msporny-base58 examples
    assert b58encode(b"Hello World!") == "2NEpo7TZRRrLZSi2U"
    assert b58encode(b"\x00\x00\x28\x7f\xb4\xcd") == "11233QC4"
    assert b58decode("11233QC4") == b"\x00\x00\x28\x7f\xb4\xcd"


def test_certificate_peer_id_is_its_key(hierarchy: Hierarchy) -> None:
    issued = hierarchy.intermediate.issue(common_name="n", role="worker")
    assert issued.private_key is not None
    assert peer_id(issued.certificate) == peer_id(issued.private_key.public_key())
    assert peer_id(issued.certificate).startswith("12D3KooW")


def test_rotation_changes_peer_id(hierarchy: Hierarchy) -> None:
    ca: CertificateAuthority = hierarchy.intermediate
    first = ca.issue(common_name="node-1", role="worker").certificate
    second = ca.issue(common_name="node-1", role="worker").certificate
    assert peer_id(first) != peer_id(second)


def test_non_ed25519_refused(hierarchy: Hierarchy) -> None:
    cert, _ = rsa_leaf_signed_by(hierarchy.intermediate)
    with pytest.raises(KeyTypeError, match="only Ed25519"):
        peer_id(cert)
    with pytest.raises(KeyTypeError):
        peer_id(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key())


@pytest.mark.parametrize(
    "bad", ["", "0OIl", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", SPEC_PEER_ID[:-1], "12D3KooW!"]
)
def test_malformed_peer_ids_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        public_key_from_peer_id(bad)


@settings(max_examples=60, deadline=None)
@given(seed_a=st.binary(min_size=32, max_size=32), seed_b=st.binary(min_size=32, max_size=32))
def test_peer_id_stable_per_key_and_distinct_across_keys(seed_a: bytes, seed_b: bytes) -> None:
    a = ed25519.Ed25519PrivateKey.from_private_bytes(seed_a).public_key()
    again = ed25519.Ed25519PrivateKey.from_private_bytes(seed_a).public_key()
    assert peer_id(a) == peer_id(again) == peer_id(a)
    assert peer_id(a).startswith("12D3KooW") and len(peer_id(a)) == 52
    assert public_key_from_peer_id(peer_id(a)).public_bytes_raw() == a.public_bytes_raw()
    b = ed25519.Ed25519PrivateKey.from_private_bytes(seed_b).public_key()
    if a.public_bytes_raw() != b.public_bytes_raw():
        assert peer_id(a) != peer_id(b)
