"""Token signing-key rotation with the keys in a PKCS#11 token (SoftHSM2): B4 with A7 "beyond".

Rotating a token-held ring generates the new key inside the token (non-extractable), never a file; the
ring directory holds ring.json only; tokens of the retired key still verify until it is pruned, and
pruning destroys its token objects. Attacks: a software key slipped into the ring, key material planted
in ring.json, a URI pointing at another token key, rotating a one-key ring opened from the token.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cyxwiz.errors import ConfigError, NotFoundError
from cyxwiz.keys import create_key_source, open_key_source
from cyxwiz.keys.pkcs11 import Pkcs11KeySource, close_sessions
from cyxwiz.tokens import KeyRing, TokenIssuer, TokenKind, TokenVerifier
from cyxwiz.tokens.hsm_ring import uri_of
from cyxwiz.tokens.keyring import DirKeyRingStore, rotate_if_due
from cyxwiz.tokens.keys import TokenKey
from tests._softhsm import HsmToken, softhsm, softhsm_session

__all__ = ["softhsm", "softhsm_session"]

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def token_ring(softhsm: HsmToken, path: Path) -> tuple[DirKeyRingStore, KeyRing]:
    store = DirKeyRingStore(path)
    ring = KeyRing.in_token(softhsm.new_uri("token-signing"), now=T0)
    store.save(ring)
    return store, ring


def only_ring_json(path: Path) -> None:
    assert sorted(p.name for p in path.iterdir()) == ["ring.json"]
    text = (path / "ring.json").read_text()
    assert "PRIVATE KEY" not in text and '"secret"' not in text


def test_rotation_generates_the_new_key_in_the_token(softhsm: HsmToken, tmp_path: Path) -> None:
    store, ring = token_ring(softhsm, tmp_path / "ring")
    old_kid = ring.signing_key.kid
    issuer = TokenIssuer(keyring=ring, issuer="cyxwiz", audience="api")
    old_token = issuer.session(user_id="alice").token
    only_ring_json(tmp_path / "ring")

    report = rotate_if_due(store, now=T0 + timedelta(days=31))  # what the scheduled flow runs (B4)
    assert report.rotated and report.signing_kid != old_kid
    only_ring_json(tmp_path / "ring")  # never a key file
    close_sessions()  # a restart: the ring is found again from ring.json and the token alone
    reloaded = store.load()
    new_key = reloaded.signing_key
    uri = uri_of(new_key)
    assert new_key.kid == report.signing_kid and uri is not None
    held = open_key_source(uri)
    assert isinstance(held, Pkcs11KeySource)
    assert held.attributes() == {
        "sensitive": True,
        "extractable": False,
        "always_sensitive": True,
        "never_extractable": True,
        "local": True,  # generated inside the token, not imported
    }
    verifier = TokenVerifier.from_keyring(reloaded, issuer="cyxwiz", audience="api")
    fresh = TokenIssuer(keyring=reloaded, issuer="cyxwiz", audience="api").session(user_id="bob").token
    assert verifier.verify(fresh, kind=TokenKind.SESSION).claims["sub"] == "bob"
    assert verifier.verify(old_token, kind=TokenKind.SESSION).claims["sub"] == "alice"  # old key kept

    # once every token of the old key has expired, pruning destroys it in the token
    old_uri = next(uri_of(k) for k in reloaded.all_keys() if k.kid == old_kid)
    assert old_uri is not None
    later = T0 + timedelta(days=31) + reloaded.max_token_lifetime + timedelta(seconds=1)
    assert rotate_if_due(store, now=later).dropped == (old_kid,)
    with pytest.raises(NotFoundError):
        open_key_source(old_uri)
    assert store.load().signing_key.kid == report.signing_kid


def test_cli_init_and_rotate_keep_keys_in_the_token(softhsm: HsmToken, tmp_path: Path) -> None:
    from cyxwiz.tokens.cli import app

    runner = CliRunner()
    ring_dir = tmp_path / "ring"
    made = runner.invoke(app, ["init", str(ring_dir), "--pkcs11", softhsm.new_uri("cli-ring")])
    assert made.exit_code == 0, made.output
    rotated = runner.invoke(app, ["rotate", str(ring_dir), "--force"])
    assert rotated.exit_code == 0 and "rotated" in rotated.output
    only_ring_json(ring_dir)
    assert all(uri_of(k) for k in DirKeyRingStore(ring_dir).load().all_keys())
    assert softhsm.pin not in made.output + rotated.output


def test_a_software_key_is_never_written_into_a_token_ring(softhsm: HsmToken, tmp_path: Path) -> None:
    store, ring = token_ring(softhsm, tmp_path / "ring")
    before = (tmp_path / "ring" / "ring.json").read_bytes()
    smuggled = KeyRing(keys=[*ring.all_keys(), TokenKey.generate(now=T0)], pkcs11=ring.pkcs11)
    with pytest.raises(ConfigError) as info:
        store.save(smuggled)
    assert info.value.rule == "B4" and "not held by the token" in info.value.message
    assert (tmp_path / "ring" / "ring.json").read_bytes() == before
    only_ring_json(tmp_path / "ring")
    with pytest.raises(ConfigError):
        ring.to_secret_json()  # nor into a secret store


def test_planted_key_material_or_a_foreign_uri_in_ring_json_is_refused(
    softhsm: HsmToken, tmp_path: Path
) -> None:
    store, ring = token_ring(softhsm, tmp_path / "ring")
    meta_path = tmp_path / "ring" / "ring.json"
    honest = json.loads(meta_path.read_text())
    assert store.load().signing_key.kid == ring.signing_key.kid  # positive control

    planted = json.loads(json.dumps(honest))
    planted["keys"][0]["secret"] = TokenKey.generate(now=T0).private_pem().decode()
    meta_path.write_text(json.dumps(planted))
    with pytest.raises(ConfigError) as info:
        store.load()
    assert info.value.rule == "B4"

    other = create_key_source(softhsm.new_uri("elsewhere"))  # a token key, but not the recorded one
    foreign = json.loads(json.dumps(honest))
    foreign["keys"][0]["uri"] = other.uri
    meta_path.write_text(json.dumps(foreign))
    with pytest.raises(ConfigError) as info:
        store.load()
    assert info.value.field == "kid"


def test_a_one_key_ring_from_the_token_does_not_rotate_into_a_file_key(softhsm: HsmToken) -> None:
    ring = KeyRing.from_key_source(create_key_source(softhsm.new_uri("single")))
    kid = ring.signing_key.kid
    with pytest.raises(ConfigError) as info:
        ring.rotate(now=T0 + timedelta(days=40))
    assert info.value.rule == "B4"
    assert [k.kid for k in ring.all_keys()] == [kid] and ring.signing_key.retired_at is None
    # positive control: a file-key ring still rotates as before
    plain = KeyRing.generate(now=T0)
    assert plain.rotate(now=T0 + timedelta(days=40)).kid != plain.all_keys()[0].kid


def test_a_ring_adopting_a_token_held_ring_rotates_in_the_token(softhsm: HsmToken, tmp_path: Path) -> None:
    """A process whose ring was a file ring follows the directory (KeyRingReloader adopts it): once the
    directory is token-held, its own rotations are generated in the token too."""
    store, _ = token_ring(softhsm, tmp_path / "ring")
    running = KeyRing.generate(now=T0)
    running.adopt(store.load())
    new = running.rotate(now=T0 + timedelta(days=31))
    assert uri_of(new) is not None
    store.save(running)
    only_ring_json(tmp_path / "ring")
