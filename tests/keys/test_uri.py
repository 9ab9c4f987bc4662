"""RFC 7512 URIs: what names a key, and that a PIN never rides in one (A7; no secrets in logs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyxwiz.errors import ConfigError, KeyPermissionError
from cyxwiz.keys.uri import PIN_ENV, Pkcs11Uri


def test_parses_token_object_and_query() -> None:
    uri = Pkcs11Uri.parse("pkcs11:token=cyx%20wiz;object=issuing-ca;id=%01%ff?pin-source=env:HSM_PIN")
    assert (uri.token, uri.object, uri.id, uri.pin_source) == (
        "cyx wiz",
        "issuing-ca",
        b"\x01\xff",
        "env:HSM_PIN",
    )
    assert Pkcs11Uri.parse(str(uri)) == uri


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("pkcs11:token=cyxwiz;object=ca?pin-value=1234", "pin-value"),
        ("pkcs11:token=cyxwiz;object=ca;pin-value=1234", "pin-value"),
        ("pkcs11:object=ca", "token"),
        ("pkcs11:token=cyxwiz", "object"),
        ("pkcs11:token=a;token=b;object=c", "uri"),
        ("pkcs11:token=a;object=c;frobnicate=1", "uri"),
        ("pkcs11:token=a;object=c;type=secret-key", "type"),
        ("pkcs11:token=a;object=c%00x", "uri"),
        ("file:/etc/key.pem", "uri"),
    ],
)
def test_refuses_bad_uris(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Pkcs11Uri.parse(text)
    assert info.value.field == field
    assert "1234" not in str(info.value)


def test_pin_sources(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("s3cret\n")
    pin_file.chmod(0o600)
    assert Pkcs11Uri.parse(f"pkcs11:token=t;object=o?pin-source=file:{pin_file}").pin({}) == "s3cret"
    assert Pkcs11Uri.parse("pkcs11:token=t;object=o?pin-source=env:X").pin({"X": "p"}) == "p"
    assert Pkcs11Uri.parse("pkcs11:token=t;object=o").pin({PIN_ENV: "q"}) == "q"
    with pytest.raises(ConfigError):
        Pkcs11Uri.parse("pkcs11:token=t;object=o").pin({})
    pin_file.chmod(0o644)  # attack: a PIN file others can read
    with pytest.raises(KeyPermissionError) as info:
        Pkcs11Uri.parse(f"pkcs11:token=t;object=o?pin-source=file:{pin_file}").pin({})
    assert info.value.rule == "A4" and "s3cret" not in str(info.value)


def test_module_path_must_be_a_protected_absolute_file(tmp_path: Path) -> None:
    """The module is code loaded into the process: relative, missing, writable-by-others: refused."""
    rogue = tmp_path / "rogue.so"
    rogue.write_bytes(b"\x7fELF")
    for path, error in (("lib.so", ConfigError), (str(tmp_path / "absent.so"), ConfigError)):
        with pytest.raises(error):
            Pkcs11Uri.parse("pkcs11:token=t;object=o").module({"CYXWIZ_PKCS11_MODULE": path})
    rogue.chmod(0o666)
    with pytest.raises(KeyPermissionError):
        Pkcs11Uri.parse(f"pkcs11:token=t;object=o?module-path={rogue}").module({})
    rogue.chmod(0o644)
    tmp_path.chmod(0o755)
    assert Pkcs11Uri.parse(f"pkcs11:token=t;object=o?module-path={rogue}").module({}) == str(rogue)
