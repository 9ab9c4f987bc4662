"""The issuer service as its own process on its 0600 Unix socket (issue 17; SPEC A6, A7, I).

The coordinator's client gets the issuer's precise refusals back (their class, rule and field), an honest
renewal and a revocation's CRL; the process refuses to start, in one line, without its CA key.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cyxwiz.errors import UnavailableError
from cyxwiz.issuer.policy import IssuanceRefusedError, RenewalRequest
from cyxwiz.issuer.revocation import RevocationRefusedError, RevocationRequest
from cyxwiz.issuer.service import IssuerProcess, RemoteIssuer, start_issuer_service
from cyxwiz.ledger.payout import RenewalLinkError, SignedRenewalLink
from cyxwiz.pki.ca import create_csr
from cyxwiz.pki.certs import Role, load_certificate, role_of
from cyxwiz.pki.devpki import DevPKI, build_dev_pki
from cyxwiz.pki.keys import load_private_key
from cyxwiz.pki.peerid import peer_id
from tests._softhsm import HsmToken


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevPKI, IssuerProcess]]:
    home = tmp_path_factory.mktemp("issuer-svc")
    pki = build_dev_pki(home / "pki", nodes=("node-a", "node-b"))
    with start_issuer_service(ca_dir=pki.ca_dir, state_dir=home / "issuer", env=dict(os.environ)) as proc:
        yield pki, proc


def _renewal(pki: DevPKI, node: str, *, cn: str | None = None, cert: Path | None = None) -> RenewalRequest:
    old = load_private_key(pki.node_key(node))
    assert isinstance(old, ed25519.Ed25519PrivateKey)
    new = ed25519.Ed25519PrivateKey.generate()
    csr = create_csr(new, common_name=cn or node).public_bytes(serialization.Encoding.PEM).decode()
    link = SignedRenewalLink.sign(old_key=old, new_peer_id=peer_id(new))
    current = load_certificate(cert or pki.node_cert(node))
    return RenewalRequest.build(certificate=current, csr_pem=csr, link=link.to_dict())


def test_renewal_and_refusals_through_the_socket(running: tuple[DevPKI, IssuerProcess]) -> None:
    pki, proc = running
    mode = stat.S_IMODE(proc.socket_path.stat().st_mode)
    assert mode == 0o600  # only its owner connects
    client = proc.client()
    try:
        assert client.ca_certificate() == load_certificate(pki.ca_cert)
        renewed = client.renew(_renewal(pki, "node-a"))  # positive control
        assert (
            role_of(renewed) is Role.WORKER
            and renewed.subject == load_certificate(pki.node_cert("node-a")).subject
        )
        with pytest.raises(IssuanceRefusedError) as info:  # another node's name
            client.renew(_renewal(pki, "node-a", cn="node-b"))
        assert (info.value.rule, info.value.field) == ("C2", "csr")
        request = _renewal(pki, "node-a")
        body = request.to_dict()
        body["renewal_link"] = _renewal(pki, "node-b").link.to_dict()  # node-b's honest link, for node-a
        with pytest.raises(RenewalLinkError):
            client.renew(RenewalRequest.from_dict(body))
        with pytest.raises(IssuanceRefusedError) as info:  # the verifier's certificate is never renewed here
            client.renew(_verifier_renewal(pki))
        assert info.value.rule == "A1"
        # A revocation: the node's certificate in a freshly signed CRL.
        node_b = load_certificate(pki.node_cert("node-b"))
        serial = node_b.serial_number
        crl = x509.load_pem_x509_crl(client.revoke(RevocationRequest(certificate=node_b)))
        assert serial in {r.serial_number for r in crl}
        fresh = x509.load_pem_x509_crl(client.crl())
        assert fresh.get_revoked_certificate_by_serial_number(serial) is not None
        short = x509.load_pem_x509_crl(client.crl(days=2))  # what the crl-refresh flow asks for
        assert short.next_update_utc is not None
        assert short.next_update_utc - short.last_update_utc < dt.timedelta(days=3)
        with pytest.raises(IssuanceRefusedError) as info:  # ... and no longer renewed
            client.renew(_renewal(pki, "node-b"))
        assert info.value.rule == "A6"
    finally:
        client.close()
    # Not JSON, or no route: the service answers, never crashes.
    transport = httpx.HTTPTransport(uds=str(proc.socket_path))
    with httpx.Client(transport=transport, base_url="http://issuer") as raw:
        assert raw.post("/v1/renew", content=b"{").status_code == 400
        assert raw.post("/v1/sign", json={}).status_code == 404
        assert raw.post("/v1/renew", json={"csr": "x"}).status_code == 422
        assert raw.post("/v1/crl", json={"days": 9999}).status_code == 422


def test_over_the_socket_only_a_nodes_own_worker_certificates_are_revoked(
    running: tuple[DevPKI, IssuerProcess],
) -> None:
    """The coordinator's way in (A6, F1): the verifier's certificate, another node's smuggled in
    ``earlier`` and a bare serial are refused (403 / 422, the precise class back) and the CRL stays."""
    pki, proc = running
    node_a, node_b = load_certificate(pki.node_cert("node-a")), load_certificate(pki.node_cert("node-b"))
    client = proc.client()
    try:
        before = {r.serial_number for r in x509.load_pem_x509_crl(client.crl())}
        with pytest.raises(RevocationRefusedError) as info:
            client.revoke(RevocationRequest(certificate=load_certificate(pki.verifier_cert)))
        assert (info.value.field, info.value.rule) == ("certificate", "A6")
        with pytest.raises(RevocationRefusedError) as info:
            client.revoke(RevocationRequest(certificate=node_a, earlier=(node_b,)))
        assert (info.value.field, info.value.rule) == ("earlier[0]", "A6")
        transport = httpx.HTTPTransport(uds=str(proc.socket_path))
        with httpx.Client(transport=transport, base_url="http://issuer") as raw:
            verifier = load_certificate(pki.verifier_cert)
            r = raw.post("/v1/revoke", json={"serial": format(verifier.serial_number, "x")})
            assert r.status_code == 422 and r.json()["error"]["field"] == "body"
            pem = verifier.public_bytes(serialization.Encoding.PEM).decode()
            assert raw.post("/v1/revoke", json={"certificate": pem}).status_code == 403
        assert {r.serial_number for r in x509.load_pem_x509_crl(client.crl())} == before
        crl = x509.load_pem_x509_crl(client.revoke(RevocationRequest(certificate=node_a)))  # the control
        assert {r.serial_number for r in crl} == before | {node_a.serial_number}
    finally:
        client.close()


def _verifier_renewal(pki: DevPKI) -> RenewalRequest:
    key = load_private_key(pki.verifier_key)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    new = ed25519.Ed25519PrivateKey.generate()
    cn = load_certificate(pki.verifier_cert).subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    csr = create_csr(new, common_name=str(cn)).public_bytes(serialization.Encoding.PEM).decode()
    link = SignedRenewalLink.sign(old_key=key, new_peer_id=peer_id(new))
    return RenewalRequest.build(
        certificate=load_certificate(pki.verifier_cert), csr_pem=csr, link=link.to_dict()
    )


def test_the_service_refuses_to_start_without_its_ca_key_in_one_line(tmp_path: Path) -> None:
    pki = build_dev_pki(tmp_path / "pki", nodes=())
    keyless = tmp_path / "keyless-ca"
    keyless.mkdir()
    (keyless / pki.ca_cert.name).write_bytes(pki.ca_cert.read_bytes())  # the certificate, not the key
    done = subprocess.run(
        [sys.executable, "-m", "cyxwiz.issuer", "serve", "--ca-dir", str(keyless), "--socket",
         str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: ca_dir: the issuer service cannot load its CA key, not starting")
    assert not (tmp_path / "s.sock").exists()


def test_an_unreachable_issuer_is_named(tmp_path: Path) -> None:
    client = RemoteIssuer(socket_path=tmp_path / "none.sock")
    with pytest.raises(UnavailableError) as info:
        client.ca_certificate()
    assert info.value.field == "issuer_socket"


def test_the_issuer_signs_with_a_ca_key_held_in_a_token(softhsm: HsmToken, tmp_path: Path) -> None:
    """``demo --hsm``: the issuing CA key was made inside SoftHSM2 and never leaves it; the issuer service
    reaches it through ``ca-key.uri`` (A7) and renews with it."""
    keys = {"root": softhsm.new_uri("root-ca"), "issuing": softhsm.new_uri("issuing-ca")}
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-a",), ca_keys=keys)
    assert not pki.ca_key.exists() and (pki.ca_dir / "ca-key.uri").is_file()
    with start_issuer_service(ca_dir=pki.ca_dir, state_dir=tmp_path / "issuer", env=dict(os.environ)) as proc:
        client = proc.client()
        try:
            renewed = client.renew(_renewal(pki, "node-a"))
        finally:
            client.close()
    renewed.verify_directly_issued_by(load_certificate(pki.ca_cert))
