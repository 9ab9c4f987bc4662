"""``demo --hsm``'s token signing keys rotate inside the token (issue 22; A7, B4).

The embedded stack's HSM mode keeps the coordinator's ring as a token-held ring directory: the
coordinator loads it like any ring directory, and a rotation (``cyxwiz token rotate``, the scheduled
``signing-key-rotation`` flow) makes the next key in the token, never a file. The whole demo with the ring
rotated while it is kept: ``tests/e2e/test_demo_keep.py``.
"""

from __future__ import annotations

from pathlib import Path

import jwt

from cyxwiz.coordinator.service import load_or_create_keyring
from cyxwiz.tokens import TokenIssuer, TokenKind, TokenVerifier
from cyxwiz.tokens.hsm_ring import uri_of
from cyxwiz.tokens.keyring import DirKeyRingStore, rotate_if_due
from cyxwiz.tokens.reload import KeyRingReloader
from infra.startup import hsm_keyring_dir
from tests._softhsm import HsmToken, softhsm, softhsm_session

__all__ = ["softhsm", "softhsm_session"]


def test_the_demo_ring_is_token_held_and_rotates_in_the_token(softhsm: HsmToken, tmp_path: Path) -> None:
    ring_dir = hsm_keyring_dir(tmp_path / "coordinator", softhsm.new_uri("token-signing"))
    ring = load_or_create_keyring(ring_dir)  # what the coordinator does with its state dir's ring
    first = ring.signing_key
    assert (uri_of(first) or "").startswith("pkcs11:")
    old_token = TokenIssuer(keyring=ring, issuer="cyxwiz", audience="api").session(user_id="alice").token

    reloader = KeyRingReloader(ring=ring, path=ring_dir)  # the coordinator's, which the gateway shares

    report = rotate_if_due(DirKeyRingStore(ring_dir), force=True)  # the rotation flow's step
    assert report.rotated and report.signing_kid != first.kid
    assert reloader.check_now() and ring.signing_key.kid == report.signing_kid  # followed, no restart
    fresh = TokenIssuer(keyring=ring, issuer="cyxwiz", audience="api").session(user_id="bob").token
    assert jwt.get_unverified_header(fresh)["kid"] == report.signing_kid
    assert sorted(p.name for p in ring_dir.iterdir()) == ["ring.json"]  # never a key file
    rotated = DirKeyRingStore(ring_dir).load()
    assert all((uri_of(k) or "").startswith("pkcs11:") for k in rotated.all_keys())
    verifier = TokenVerifier.from_keyring(rotated, issuer="cyxwiz", audience="api")
    assert verifier.verify(old_token, kind=TokenKind.SESSION).claims["sub"] == "alice"  # old key kept
    assert verifier.verify(fresh, kind=TokenKind.SESSION).claims["sub"] == "bob"  # signed in the token
    assert softhsm.pin not in (ring_dir / "ring.json").read_text()
