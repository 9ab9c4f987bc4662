"""Issuance rules (SPEC B1, B2, B5): bad input is refused before anything is signed."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cyxwiz.errors import ValidationError
from cyxwiz.pki.certs import x5t_s256
from cyxwiz.tokens import TokenIssuer, TokenKind, TokenVerifier, cert_thumbprint
from cyxwiz.tokens.kinds import DEFAULT_JOB_MARGIN

Certs = tuple[x509.Certificate, x509.Certificate]


def test_headers_and_lifetimes(issuer: TokenIssuer, certs: Certs) -> None:
    cases = {
        TokenKind.SESSION: (issuer.session(user_id="alice"), timedelta(hours=24)),
        TokenKind.P2P: (issuer.p2p(subject="alice", user_id="alice", node_id="node-a"), timedelta(hours=1)),
        TokenKind.REFRESH: (issuer.refresh(session_id="s" * 22, user_id="alice"), timedelta(days=7)),
        TokenKind.JOB: (
            issuer.job(node_id="node-a", job_id="job-1", cert=certs[0], duration=timedelta(hours=2)),
            timedelta(hours=2) + DEFAULT_JOB_MARGIN,
        ),
    }
    for kind, (token, lifetime) in cases.items():
        header = jwt.get_unverified_header(token.token)
        assert header == {"alg": "EdDSA", "typ": kind.typ, "kid": issuer.keyring.signing_key.kid}
        assert token.claims["exp"] - token.claims["iat"] == lifetime.total_seconds()
        assert token.token not in repr(token)


def test_job_token_claims(issuer: TokenIssuer, verifier: TokenVerifier, certs: Certs) -> None:
    token = issuer.job(node_id="node-a", job_id="job-1", cert=certs[0], duration=timedelta(minutes=30))
    claims = token.claims
    assert claims["scope"] == ["job:execute", "metrics:report"] and claims["role"] == "node"
    assert claims["cnf"] == {"x5t#S256": x5t_s256(certs[0])}
    verified = verifier.verify(token.token, kind=TokenKind.JOB, peer_cert=certs[0])
    assert (verified.node_id, verified.job_id, verified.subject) == ("node-a", "job-1", "node-a")


def test_thumbprint_matches_pki_for_object_and_der(certs: Certs) -> None:
    cert = certs[0]
    assert cert_thumbprint(cert) == cert_thumbprint(cert.public_bytes(Encoding.DER)) == x5t_s256(cert)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda i, c: i.session(user_id="alice", node_id="node-a", cert=c), "node_id/user_id"),
        (lambda i, c: i.session(), "sub"),
        (lambda i, c: i.session(node_id="node-a"), "cnf"),  # node sessions must be bound
        (lambda i, c: i.session(user_id="alice", role="node"), "role"),
        (lambda i, c: i.session(node_id="node-a", role="admin", cert=c), "role"),
        (lambda i, c: i.session(user_id="../../etc"), "sub"),
        (lambda i, c: i.session(user_id="alice", scopes=["Not A Scope"]), "scope"),
        (lambda i, c: i.session(user_id="alice", lifetime=timedelta(days=8)), "lifetime"),
        (lambda i, c: i.session(user_id="alice", lifetime=timedelta(0)), "lifetime"),
        (lambda i, c: i.job(node_id="node-a", job_id="j", cert=c, duration=timedelta(0)), "duration"),
        (lambda i, c: i.job(node_id="node-a", job_id="j", cert=c, duration=timedelta(days=7)), "lifetime"),
        (lambda i, c: i.job(node_id="node-a", job_id="a/b", cert=c, duration=timedelta(hours=1)), "job_id"),
    ],
)
def test_bad_issuance_refused(call, field: str, issuer: TokenIssuer, certs: Certs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as exc:
        call(issuer, certs[0])
    assert exc.value.field == field and exc.value.http_status == 422


def test_from_env(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from cyxwiz.tokens import DirKeyRingStore, KeyRing

    DirKeyRingStore(tmp_path / "ring").save(KeyRing.generate())
    env = {
        "CYXWIZ_TOKEN_KEYRING_DIR": str(tmp_path / "ring"),
        "CYXWIZ_TOKEN_ISSUER": "iss-x",
        "CYXWIZ_TOKEN_AUDIENCE": "api-x,api-y",
    }
    issuer = TokenIssuer.from_env(env)
    verifier = TokenVerifier.from_env(env)
    (tmp_path / "jwks.json").write_text(__import__("json").dumps(issuer.keyring.jwks()))
    jwks_verifier = TokenVerifier.from_env({**env, "CYXWIZ_TOKEN_JWKS_FILE": str(tmp_path / "jwks.json")})
    token = issuer.session(user_id="alice", audience="api-y").token
    assert verifier.verify(token, kind=TokenKind.SESSION).audience == ("api-y",)
    assert jwks_verifier.verify(token, kind=TokenKind.SESSION).issuer == "iss-x"
