"""Context factories refuse what the wire policy forbids before a socket exists (SPEC D1, A2, A4)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from cyxwiz.errors import ConfigError, KeyPermissionError, KeyTypeError
from cyxwiz.transport.tls import client_context, server_context
from tests.transport.pki_fixture import TestPKI


def test_server_context_policy(pki: TestPKI) -> None:
    ctx = server_context(
        cert=pki.server.cert_path, key=pki.server.key_path, trust_bundle=pki.bundle, crl=pki.crl
    )
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3 == ctx.maximum_version
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
    assert ctx.options & ssl.OP_NO_TICKET and ctx.num_tickets == 0


def test_group_readable_key_refused(pki: TestPKI) -> None:
    pki.server.key_path.chmod(0o640)
    with pytest.raises(KeyPermissionError):
        server_context(cert=pki.server.cert_path, key=pki.server.key_path, trust_bundle=pki.bundle, crl=None)


def test_rsa_key_refused(pki: TestPKI) -> None:
    leaf = pki.leaf("rsa", key_type="rsa")
    with pytest.raises(KeyTypeError):
        client_context(trust_bundle=pki.bundle, cert=leaf.cert_path, key=leaf.key_path)


def test_missing_files_are_config_errors(pki: TestPKI, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trust bundle"):
        client_context(trust_bundle=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="CRL"):
        client_context(trust_bundle=pki.bundle, crl=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="both cert and key"):
        client_context(trust_bundle=pki.bundle, cert=pki.server.cert_path)
