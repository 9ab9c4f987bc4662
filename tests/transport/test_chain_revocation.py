"""An intermediate CA revoked by its root takes down every leaf it issued, on the wire (SPEC A6, issue 18).

``certutil verify`` refused such a leaf while the handshake let it through: only the leaf was looked up.
"""

from __future__ import annotations

import datetime as dt
import time
from datetime import UTC
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cyxwiz.transport.reload import ServerTLS
from cyxwiz.transport.server import MTLSServer
from tests.transport.conftest import Conn, MemoryAudit, client_ctx, request, whoami_app
from tests.transport.pki_fixture import CA, TestPKI
from tests.transport.test_server import refused, rejection_reasons


def _root_crl(pki: TestPKI, revoked: list[x509.Certificate], *, minutes_ago: int = 1) -> bytes:
    now = dt.datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.root_ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=minutes_ago))
        .next_update(now + dt.timedelta(days=7))
    )
    for cert in revoked:
        entry = (
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(now).build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(pki.root_ca.key, None).public_bytes(serialization.Encoding.PEM)


def _second_issuing_ca(pki: TestPKI) -> CA:
    ca = pki._make_ca("Test Issuing CA 2", pki.root_ca, dt.datetime.now(UTC))
    pki.bundle.write_bytes(pki.bundle.read_bytes() + ca.cert.public_bytes(serialization.Encoding.PEM))
    return ca


def _serve(pki: TestPKI, crl: Path, audit: MemoryAudit) -> MTLSServer:
    tls = ServerTLS(
        cert=pki.server.cert_path, key=pki.server.key_path, trust_bundle=pki.bundle, crl=crl, audit=audit,
        poll_interval=0.05,
    )  # fmt: skip
    return MTLSServer(app=whoami_app, tls=tls)


def test_leaf_of_revoked_intermediate_refused_at_handshake(
    pki: TestPKI, audit: MemoryAudit, tmp_path: Path
) -> None:
    second = _second_issuing_ca(pki)
    good = pki.leaf("node-good")  # issued by the intermediate that stays
    bad = pki.leaf("node-bad", ca=second)  # issued by the intermediate the root revokes
    crl = tmp_path / "all-crls.pem"
    issuing_crls = pki.crl_bytes() + _crl_of(second)
    crl.write_bytes(issuing_crls + _root_crl(pki, [second.cert]))
    with _serve(pki, crl, audit) as srv:
        refused(srv.port, client_ctx(pki, bad))
        assert "issuer certificate revoked" in rejection_reasons(audit)
        # Positive control: a leaf of the intermediate still in good standing is served.
        assert request(srv.port, client_ctx(pki, good))[0] == 200


def test_revoking_an_intermediate_later_closes_its_leaves_live_connections(
    pki: TestPKI, audit: MemoryAudit, tmp_path: Path
) -> None:
    second = _second_issuing_ca(pki)
    bad, good = pki.leaf("node-bad", ca=second), pki.leaf("node-good")
    crl = tmp_path / "all-crls.pem"
    issuing_crls = pki.crl_bytes() + _crl_of(second)
    crl.write_bytes(issuing_crls + _root_crl(pki, [], minutes_ago=2))
    with _serve(pki, crl, audit) as srv:
        srv.tls.start_watching()
        conn, keep = Conn(srv.port, client_ctx(pki, bad)), Conn(srv.port, client_ctx(pki, good))
        assert conn.get()[0] == 200 and keep.get()[0] == 200
        tmp = crl.with_suffix(".tmp")
        tmp.write_bytes(issuing_crls + _root_crl(pki, [second.cert]))
        tmp.replace(crl)
        deadline, cut = time.monotonic() + 5, False
        while time.monotonic() < deadline and not cut:
            try:
                conn.get()
                time.sleep(0.05)
            except (ConnectionError, OSError):
                cut = True
        assert cut, "a leaf of the revoked intermediate kept its connection"
        refused(srv.port, client_ctx(pki, bad))
        assert keep.get()[0] == 200
        conn.close()
        keep.close()


def _crl_of(ca: CA) -> bytes:
    now = dt.datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=7))
    )
    return builder.sign(ca.key, None).public_bytes(serialization.Encoding.PEM)
