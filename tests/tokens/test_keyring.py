"""Key ring (SPEC B4): rotation with a controllable clock, JWKS, persistence, key sources."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from cyxwiz.errors import (
    ConfigError,
    KeyFormatError,
    KeyPermissionError,
    KeyTypeError,
    NotFoundError,
    TokenExpiredError,
)
from cyxwiz.tokens import (
    DirKeyRingStore,
    JwksKeySource,
    KeyRing,
    MemorySecretStore,
    SecretKeyRingStore,
    TokenIssuer,
    TokenKind,
    TokenVerifier,
    rotate_if_due,
)
from cyxwiz.tokens.errors import UnknownKeyError
from cyxwiz.tokens.keys import TokenKey
from tests.tokens.conftest import AUDIENCE, ISSUER, Clock


def _pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_rotation_old_tokens_verify_until_expiry_not_after(clock: Clock) -> None:
    ring = KeyRing.generate(now=clock())
    issuer = TokenIssuer(keyring=ring, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    verifier = TokenVerifier.from_keyring(ring, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    old_kid = ring.signing_key.kid

    clock.advance(timedelta(days=29, hours=23))
    assert not ring.rotation_due(now=clock())
    session = issuer.session(user_id="alice")  # 24 h, signed just before rotation
    refresh = issuer.refresh(session_id="s" * 22, user_id="alice")  # 7 d
    clock.advance(timedelta(hours=1))
    assert ring.rotation_due(now=clock())
    new = ring.rotate(now=clock())
    assert new.kid != old_kid and ring.signing_key.kid == new.kid
    assert issuer.session(user_id="bob").kid == new.kid  # new tokens use the new key
    assert {k["kid"] for k in ring.jwks(now=clock())["keys"]} == {old_kid, new.kid}

    # Old-key tokens keep verifying until their own expiry...
    clock.now = session.expires_at - timedelta(seconds=1)
    verifier.verify(session.token, kind=TokenKind.SESSION)
    clock.now = session.expires_at + verifier.leeway
    with pytest.raises(TokenExpiredError):
        verifier.verify(session.token, kind=TokenKind.SESSION)
    clock.now = refresh.expires_at - timedelta(seconds=1)
    verifier.verify(refresh.token, kind=TokenKind.REFRESH, audience=ISSUER)
    # ...and once the last token the old key could have signed has expired, the key is dropped.
    retired_at = next(k.retired_at for k in ring.all_keys() if k.kid == old_kid)
    assert retired_at is not None
    clock.now = retired_at + ring.max_token_lifetime + timedelta(seconds=1)
    assert old_kid not in {k["kid"] for k in ring.jwks(now=clock())["keys"]}
    with pytest.raises(UnknownKeyError):
        verifier.verify(refresh.token, kind=TokenKind.REFRESH, audience=ISSUER)
    assert ring.prune(now=clock()) == [old_kid]
    assert [k.kid for k in ring.all_keys()] == [new.kid]


def test_rotate_if_due_persists_and_prunes(tmp_path: Path, clock: Clock) -> None:
    store = DirKeyRingStore(tmp_path / "ring")
    store.save(KeyRing.generate(now=clock()))
    first = store.load().signing_key.kid
    report = rotate_if_due(store, now=clock() + timedelta(days=1))
    assert not report.rotated and report.signing_kid == first
    report = rotate_if_due(store, now=clock() + timedelta(days=30))
    assert report.rotated and report.signing_kid != first and report.dropped == ()
    assert len(store.load().all_keys()) == 2
    report = rotate_if_due(store, now=clock() + timedelta(days=38))
    assert report.dropped == (first,)
    assert not (tmp_path / "ring" / f"{first}.key").exists()  # the private part is destroyed


def test_keyring_dir_modes_and_permission_refusal(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "ring"
    ring = KeyRing.generate(now=clock())
    DirKeyRingStore(path).save(ring)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    key_file = path / f"{ring.signing_key.kid}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "PRIVATE" not in (path / "ring.json").read_text()
    assert KeyRing.from_dir(path).signing_key.kid == ring.signing_key.kid
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyPermissionError) as exc:
        KeyRing.from_dir(path)
    assert exc.value.rule == "A4"


def test_ring_json_with_path_kid_refused(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "ring"
    DirKeyRingStore(path).save(KeyRing.generate(now=clock()))
    meta = json.loads((path / "ring.json").read_text())
    meta["keys"][0]["kid"] = "../../outside"
    (path / "ring.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as exc:
        KeyRing.from_dir(path)
    assert exc.value.field == "kid"


def test_secret_store_round_trip(clock: Clock) -> None:
    store = SecretKeyRingStore(MemorySecretStore())
    ring = KeyRing.generate(now=clock())
    ring.rotate(now=clock() + timedelta(days=30))
    store.save(ring)
    loaded = KeyRing.from_secret_store(store.store)
    assert [k.kid for k in loaded.all_keys()] == [k.kid for k in ring.all_keys()]
    assert loaded.all_keys()[0].retired_at == ring.all_keys()[0].retired_at
    with pytest.raises(NotFoundError):
        SecretKeyRingStore(MemorySecretStore()).load()


def test_from_file_and_env(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "signing.pem"
    path.write_bytes(_pem(key))
    path.chmod(0o600)
    kid = KeyRing.from_file(path).signing_key.kid
    assert KeyRing.from_env({"CYXWIZ_TOKEN_SIGNING_KEY_FILE": str(path)}).signing_key.kid == kid
    assert KeyRing.from_env({"CYXWIZ_TOKEN_SIGNING_KEY": _pem(key).decode()}).signing_key.kid == kid
    with pytest.raises(ConfigError):
        KeyRing.from_env({})
    with pytest.raises(ConfigError):
        KeyRing.from_env({"CYXWIZ_TOKEN_SIGNING_KEY": "x", "CYXWIZ_TOKEN_SIGNING_KEY_FILE": str(path)})
    path.chmod(0o640)
    with pytest.raises(KeyPermissionError):
        KeyRing.from_file(path)


def test_hs256_needs_sole_verifier(clock: Clock) -> None:
    secret = "A" * 43
    with pytest.raises(ConfigError) as exc:
        KeyRing.from_env({"CYXWIZ_TOKEN_HS256_SECRET": secret})
    assert exc.value.rule == "B3" and exc.value.hint
    ring = KeyRing.from_env({"CYXWIZ_TOKEN_HS256_SECRET": secret, "CYXWIZ_TOKEN_SOLE_VERIFIER": "1"})
    assert ring.signing_key.alg == "HS256"
    with pytest.raises(ConfigError):
        KeyRing(keys=[TokenKey.generate(alg="HS256", now=clock())])
    with pytest.raises(ConfigError):
        TokenKey.from_secret(b"short", now=clock())


def test_wrong_key_types_and_formats(tmp_path: Path) -> None:
    rsa = tmp_path / "rsa.pem"
    rsa.write_bytes(_pem(generate_private_key(public_exponent=65537, key_size=2048)))
    rsa.chmod(0o600)
    with pytest.raises(KeyTypeError):
        KeyRing.from_file(rsa)
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    junk.chmod(0o600)
    with pytest.raises(KeyFormatError):
        KeyRing.from_file(junk)
    openssh = tmp_path / "ssh.pem"
    openssh.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    openssh.chmod(0o600)
    with pytest.raises(KeyFormatError) as exc:
        KeyRing.from_file(openssh)
    assert exc.value.hint and "openssl" in exc.value.hint


def test_jwks_verifier_and_tampered_jwks(
    ring: KeyRing, issuer: TokenIssuer, clock: Clock, tmp_path: Path
) -> None:
    jwks = ring.jwks(now=clock())
    assert all("d" not in k and k["kty"] == "OKP" for k in jwks["keys"])
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    verifier = TokenVerifier.from_jwks_file(path, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    assert verifier.verify(issuer.session(user_id="alice").token, kind=TokenKind.SESSION).user_id == "alice"
    # A JWKS entry whose kid is not its key's thumbprint (e.g. an attacker relabelling their own key).
    evil = TokenKey.generate(now=clock()).public_jwk()
    evil["kid"] = ring.signing_key.kid
    with pytest.raises(ConfigError) as exc:
        JwksKeySource({"keys": [evil]})
    assert exc.value.field == "kid"
    with pytest.raises(KeyTypeError):
        JwksKeySource({"keys": [{"kty": "oct", "k": "AAAA", "kid": "x"}]})
