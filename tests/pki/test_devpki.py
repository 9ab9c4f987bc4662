"""devpki.build_dev_pki: a whole CA-signed dev PKI, idempotent, usable at once (A1, A3, A4)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cyxwiz.errors import CertificateRevokedError, ValidationError
from cyxwiz.pki.certs import Role, load_certificate, load_certificates, load_crls, role_of
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.pki.verify import verify_certificate


def _verify(pki: DevPKI, cert: Path, purpose: str | None = None) -> None:
    verify_certificate(
        load_certificate(cert),
        trusted=load_certificates(pki.bundle),
        crls=load_crls(pki.crl),
        purpose=purpose,  # type: ignore[arg-type]
    )


def test_every_leaf_verifies_with_its_purpose(shared_pki: DevPKI) -> None:
    for cert in (shared_pki.gateway_cert, shared_pki.coordinator_cert):
        _verify(shared_pki, cert, "server")
        _verify(shared_pki, cert, "client")
    for cert in (shared_pki.verifier_cert, shared_pki.user_cert, shared_pki.node_cert("node-1")):
        _verify(shared_pki, cert, "client")
    assert role_of(load_certificate(shared_pki.node_cert("node-2"))) is Role.WORKER
    assert role_of(load_certificate(shared_pki.gateway_cert)) is Role.GATEWAY


def test_file_modes(shared_pki: DevPKI) -> None:
    for key in (shared_pki.root_ca_key, shared_pki.gateway_key, shared_pki.node_key("node-1")):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for public in (shared_pki.bundle, shared_pki.crl, shared_pki.gateway_cert):
        assert stat.S_IMODE(public.stat().st_mode) == 0o644


def test_idempotent_keeps_files_and_adds_nodes(tmp_path: Path) -> None:
    first = build_dev_pki(tmp_path)
    before = {p: p.read_bytes() for p in (first.root_ca_cert, first.ca_cert, first.node_cert("node-1"))}
    second = build_dev_pki(tmp_path, nodes=("node-1", "node-7"))
    assert all(p.read_bytes() == data for p, data in before.items())
    assert second.node_cert("node-7").exists()


def test_broken_leaf_is_remade(tmp_path: Path) -> None:
    pki = build_dev_pki(tmp_path)
    pki.gateway_key.write_text("garbage")
    build_dev_pki(tmp_path)
    assert load_certificate(pki.gateway_cert).public_key() is not None
    _verify(pki, pki.gateway_cert, "server")


def test_revocation_persists_across_rebuilds(dev_pki: DevPKI) -> None:
    dev_pki.revoke(dev_pki.node_cert("node-1"))
    build_dev_pki(dev_pki.root, nodes=("node-1",))
    with pytest.raises(CertificateRevokedError, match="node-1"):
        _verify(dev_pki, dev_pki.node_cert("node-1"))


@pytest.mark.parametrize("name", ["../evil", "Node", "", "a/b", "x" * 64])
def test_bad_node_names_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValidationError, match="node name"):
        build_dev_pki(tmp_path, nodes=(name,))
    assert not (tmp_path / "nodes").exists()


def test_dev_node_certificates_are_short_lived(shared_pki: DevPKI) -> None:
    """Issue 18 (A7): a dev node certificate only bootstraps the node (2 days), as in production the
    agent renews it at half-life over its mTLS identity; servers and users keep their 90 days."""
    import datetime as dt

    node = load_certificate(shared_pki.node_cert("node-1"))
    assert node.not_valid_after_utc - node.not_valid_before_utc <= dt.timedelta(days=2, hours=1)
    server = load_certificate(shared_pki.gateway_cert)
    assert server.not_valid_after_utc - server.not_valid_before_utc >= dt.timedelta(days=89)
