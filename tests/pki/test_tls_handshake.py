"""Real TLS 1.3 mTLS handshakes on loopback (stdlib ``ssl`` = OpenSSL) with the certificates we issue.

The server trusts the dev PKI bundle, checks the issuing CA's CRL on the leaf, and then applies our
own leaf rules (Ed25519 only, clientAuth) to the peer certificate — the part OpenSSL cannot express.
A good node gets an answer; revoked, self-signed, expired, wrong-CA and RSA client certificates do not,
and the server records the precise reason (A2, A3, A6, D1).
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from cyxwiz.errors import PKIError
from cyxwiz.pki.certs import write_certificate
from cyxwiz.pki.devpki import DevPKI
from cyxwiz.pki.keys import write_private_key
from cyxwiz.pki.verify import check_leaf
from tests.pki.conftest import make_hierarchy, rsa_leaf_signed_by, self_signed_leaf


class OneShotServer:
    """Accepts one connection, handshakes, applies our leaf rules, answers b'ok' or closes."""

    def __init__(self, *, pki: DevPKI) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(pki.gateway_cert, pki.gateway_key)
        ctx.load_verify_locations(cafile=pki.bundle)
        ctx.load_verify_locations(cafile=pki.crl)  # CRLs load from files only
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.outcome = ""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                try:
                    check_leaf(x509.load_der_x509_certificate(der), purpose="client")
                except PKIError as exc:
                    self.outcome = f"refused by policy: {exc}"
                    return
                self.outcome = f"ok {tls.version()}"
                tls.sendall(b"ok")
        except ssl.SSLError as exc:
            self.outcome = f"refused by openssl: {getattr(exc, 'verify_message', '') or exc.reason}"
        finally:
            self.listener.close()

    def result(self) -> str:
        self.thread.join(timeout=10)
        return self.outcome


def _client(pki: DevPKI, cert: Path, key: Path, port: int) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=pki.bundle)
    ctx.load_cert_chain(cert, key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() == "TLSv1.3"
        # TLS 1.3: the client learns about a refused certificate only on its first read.
        return tls.recv(2)


def _attempt(pki: DevPKI, cert: Path, key: Path) -> tuple[bytes | Exception, str]:
    server = OneShotServer(pki=pki)
    try:
        answer: bytes | Exception = _client(pki, cert, key, server.port)
    except (ssl.SSLError, ConnectionError) as exc:
        answer = exc
    return answer, server.result()


def _write_pair(tmp: Path, name: str, cert: x509.Certificate, key: PrivateKeyTypes) -> tuple[Path, Path]:
    cert_path, key_path = tmp / f"{name}-cert.pem", tmp / f"{name}-key.pem"
    write_certificate(cert_path, cert)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_good_node_completes_mtls(shared_pki: DevPKI) -> None:
    answer, outcome = _attempt(shared_pki, shared_pki.node_cert("node-1"), shared_pki.node_key("node-1"))
    assert answer == b"ok"
    assert outcome == "ok TLSv1.3"


def test_revoked_node_refused(dev_pki: DevPKI) -> None:
    answer, _ = _attempt(dev_pki, dev_pki.node_cert("node-2"), dev_pki.node_key("node-2"))
    assert answer == b"ok"
    dev_pki.revoke(dev_pki.node_cert("node-2"))
    answer, outcome = _attempt(dev_pki, dev_pki.node_cert("node-2"), dev_pki.node_key("node-2"))
    assert answer != b"ok"
    assert outcome == "refused by openssl: certificate revoked"
    # Only that node: its neighbour still gets in with the new CRL.
    assert _attempt(dev_pki, dev_pki.node_cert("node-1"), dev_pki.node_key("node-1"))[0] == b"ok"


def test_self_signed_client_refused(shared_pki: DevPKI, tmp_path: Path) -> None:
    cert, key = self_signed_leaf()
    answer, outcome = _attempt(shared_pki, *_write_pair(tmp_path, "self", cert, key))
    assert answer != b"ok"
    assert outcome == "refused by openssl: self-signed certificate"


def test_expired_client_refused(shared_pki: DevPKI, tmp_path: Path) -> None:
    issued = shared_pki.issuing_ca().issue(
        common_name="old-node",
        role="worker",
        days=1,
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=5),
    )
    assert issued.private_key is not None
    cert_path, key_path = tmp_path / "old-cert.pem", tmp_path / "old-key.pem"
    write_certificate(cert_path, issued.certificate)
    write_private_key(key_path, issued.private_key)
    answer, outcome = _attempt(shared_pki, cert_path, key_path)
    assert answer != b"ok"
    assert outcome == "refused by openssl: certificate has expired"


def test_wrong_ca_client_refused(shared_pki: DevPKI, tmp_path: Path) -> None:
    other = make_hierarchy(tmp_path / "other", "Other")
    issued = other.intermediate.issue(common_name="node-1", role="worker")
    assert issued.private_key is not None
    answer, outcome = _attempt(
        shared_pki, *_write_pair(tmp_path, "foreign", issued.certificate, issued.private_key)
    )
    assert answer != b"ok"
    assert outcome == "refused by openssl: unable to get local issuer certificate"


def test_rsa_client_refused_by_our_rule(shared_pki: DevPKI, tmp_path: Path) -> None:
    """An RSA key certified by our own CA passes OpenSSL's chain check; our Ed25519 rule stops it (A2)."""
    cert, key = rsa_leaf_signed_by(shared_pki.issuing_ca())
    answer, outcome = _attempt(shared_pki, *_write_pair(tmp_path, "rsa", cert, key))
    assert answer != b"ok"
    assert outcome.startswith("refused by policy:") and "RSA key refused: only Ed25519" in outcome
