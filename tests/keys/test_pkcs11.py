"""Keys generated inside a SoftHSM2 token: they sign, they never come out, they survive a restart (A7)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pkcs11
import pytest
from cryptography.hazmat.primitives import serialization

from cyxwiz.errors import ConflictError, NotFoundError
from cyxwiz.keys import (
    FileKeySource,
    KeySourceError,
    NonExportableKeyError,
    as_private_key,
    create_key_source,
    open_key_source,
    public_raw,
)
from cyxwiz.keys.pkcs11 import Pkcs11KeySource, close_sessions
from tests._softhsm import HsmToken


def test_generated_key_signs_with_eddsa(softhsm: HsmToken) -> None:
    source = create_key_source(softhsm.new_uri("ca"))
    assert source.kind == "pkcs11"
    signature = source.sign(b"tbs bytes")
    assert len(signature) == 64
    source.public_key.verify(signature, b"tbs bytes")  # an ordinary Ed25519 verifier accepts it


def test_private_key_cannot_be_extracted(softhsm: HsmToken) -> None:
    source = create_key_source(softhsm.new_uri("ca"))
    assert isinstance(source, Pkcs11KeySource)
    assert source.attributes() == {
        "sensitive": True,
        "extractable": False,
        "always_sensitive": True,
        "never_extractable": True,
        "local": True,  # generated inside the token, never imported
    }
    key = source.private_object()
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        key[pkcs11.Attribute.VALUE]  # attack: read the private scalar
    # attack: wrap it out under a key the attacker also holds in the token
    session = key.session
    wrapper = session.generate_key(
        pkcs11.KeyType.AES, 256, store=False, capabilities=pkcs11.MechanismFlag.WRAP
    )
    with pytest.raises((pkcs11.exceptions.KeyUnextractable, pkcs11.exceptions.KeyNotWrappable)):
        wrapper.wrap_key(key, mechanism=pkcs11.Mechanism.AES_KEY_WRAP_PAD)
    # attack: flip the flags back (PKCS#11 makes EXTRACTABLE false and SENSITIVE true one-way)
    for attribute, value in ((pkcs11.Attribute.EXTRACTABLE, True), (pkcs11.Attribute.SENSITIVE, False)):
        with pytest.raises(pkcs11.exceptions.PKCS11Error):
            key[attribute] = value
    with pytest.raises(NonExportableKeyError):
        as_private_key(source).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    # positive control: still signs after every refused extraction
    source.public_key.verify(source.sign(b"after"), b"after")


def test_signing_survives_a_new_session_and_a_new_process(softhsm: HsmToken) -> None:
    uri = softhsm.new_uri("ca")
    public = public_raw(create_key_source(uri))
    close_sessions()  # logs out: the next open is a fresh login
    again = open_key_source(uri)
    assert public_raw(again) == public
    again.public_key.verify(again.sign(b"x"), b"x")
    code = (
        "import sys; from cyxwiz.keys import open_key_source, public_raw; s = open_key_source(sys.argv[1]);"
        "sig = s.sign(b'restart'); s.public_key.verify(sig, b'restart'); print(public_raw(s).hex())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, uri], env=dict(os.environ), capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == public.hex()


def test_wrong_pin_missing_key_and_duplicate_label(softhsm: HsmToken, tmp_path: Path) -> None:
    uri = softhsm.new_uri("ca")
    create_key_source(uri)
    with pytest.raises(ConflictError):
        create_key_source(uri)  # a label names one key: never a second one behind it
    with pytest.raises(NotFoundError):
        open_key_source(softhsm.new_uri("absent"))
    close_sessions()
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("not-the-pin")
    wrong.chmod(0o600)
    bad_uri = uri.split("?")[0] + f"?pin-source=file:{wrong}"
    with pytest.raises(KeySourceError) as info:
        open_key_source(bad_uri)
    assert "PinIncorrect" in str(info.value)
    assert softhsm.pin not in str(info.value) and "not-the-pin" not in str(info.value)


def test_file_source_is_todays_behaviour(tmp_path: Path) -> None:
    path = tmp_path / "ca-key.pem"
    created = create_key_source(path)
    assert created.kind == "file" and (path.stat().st_mode & 0o777) == 0o600
    loaded = open_key_source(path)
    assert public_raw(loaded) == public_raw(created)
    loaded.public_key.verify(created.sign(b"m"), b"m")
    assert isinstance(loaded, FileKeySource)


def _plant_keypair(softhsm: HsmToken, label: str, **private: object) -> tuple[object, object]:
    """A key pair made directly through python-pkcs11 (what a careless or hostile operator could do)."""
    from cyxwiz.keys.pkcs11 import ED25519_PARAMS, _session
    from cyxwiz.keys.uri import Pkcs11Uri

    entry = _session(Pkcs11Uri.parse(softhsm.token.uri(label)), None)
    attr = pkcs11.Attribute
    template = {attr.TOKEN: True, attr.LABEL: label, attr.SIGN: True, attr.PRIVATE: True}
    template.update({getattr(attr, k.upper()): v for k, v in private.items()})
    with entry.lock:
        return entry.session.generate_keypair(  # type: ignore[no-any-return]
            pkcs11.KeyType.EC_EDWARDS,
            mechanism=pkcs11.Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            store=True,
            label=label,
            public_template={attr.TOKEN: True, attr.LABEL: label, attr.EC_PARAMS: ED25519_PARAMS},
            private_template=template,
        )


def test_an_exportable_key_under_the_label_is_refused(softhsm: HsmToken) -> None:
    label = "exportable-" + os.urandom(3).hex()
    _plant_keypair(softhsm, label, extractable=True, sensitive=False)
    with pytest.raises(KeySourceError) as info:
        open_key_source(softhsm.token.uri(label))  # attack: a key that may exist outside the token
    assert "exportable" in info.value.message and info.value.rule == "A7"


def test_a_planted_public_key_object_is_caught_before_use(softhsm: HsmToken) -> None:
    label, decoy = "victim-" + os.urandom(3).hex(), "decoy-" + os.urandom(3).hex()
    create_key_source(softhsm.token.uri(label))
    public_decoy, _ = _plant_keypair(softhsm, decoy, extractable=False, sensitive=True)
    victim = open_key_source(softhsm.token.uri(label))
    assert isinstance(victim, Pkcs11KeySource)
    # attack: swap the public object under the label for another key's
    own_public = victim._entry.session.get_key(object_class=pkcs11.ObjectClass.PUBLIC_KEY, label=label)
    own_public.destroy()
    public_decoy[pkcs11.Attribute.LABEL] = label  # type: ignore[index]
    with pytest.raises(KeySourceError) as info:
        open_key_source(softhsm.token.uri(label))
    assert "does not verify" in info.value.message


def test_a_held_key_survives_a_dropped_session_but_not_a_swapped_key(softhsm: HsmToken) -> None:
    """A long-lived process keeps signing after the token drops its session (new login, same key); if
    another key now sits under the label, signing is refused instead of silently changing keys."""
    label = "held-" + os.urandom(3).hex()
    source = create_key_source(softhsm.token.uri(label))
    close_sessions()  # the token forgets every session and login (an HSM restart)
    source.public_key.verify(source.sign(b"after restart"), b"after restart")
    assert isinstance(source, Pkcs11KeySource)
    for obj in source.private_object().session.get_objects({pkcs11.Attribute.LABEL: label}):
        obj.destroy()  # attack: the operator's key replaced under the same label
    _plant_keypair(softhsm, label, extractable=False, sensitive=True)
    close_sessions()
    with pytest.raises(KeySourceError) as info:
        source.sign(b"x")
    assert "changed" in info.value.message
