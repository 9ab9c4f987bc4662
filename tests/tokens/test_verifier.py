"""Attacks on token verification (SPEC B1–B5): each breaks one rule and asserts the precise refusal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.errors import TokenBindingError, TokenError, TokenExpiredError, TokenReplayError
from cyxwiz.tokens import KeyRing, TokenIssuer, TokenKind, TokenVerifier
from cyxwiz.tokens.errors import (
    TokenAlgorithmError,
    TokenClaimError,
    TokenFormatError,
    TokenNotYetValidError,
    TokenSignatureError,
    TokenTypeError,
    UnknownKeyError,
)
from cyxwiz.tokens.keys import TokenKey, b64url
from tests.tokens.conftest import AUDIENCE, ISSUER, Clock, Forge, session_claims


def _hs256(header: dict[str, object], claims: dict[str, object], secret: bytes) -> str:
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64url(sig)}"


def test_valid_session_token_verifies(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.session(user_id="alice")
    verified = verifier.verify(token.token, kind=TokenKind.SESSION)
    assert verified.user_id == "alice" and verified.role == "user" and verified.jti == token.jti
    assert "job:submit" in verified.scopes


def test_forged_signature_other_key(forge: Forge, verifier: TokenVerifier, clock: Clock) -> None:
    token = forge(session_claims(clock), key=Ed25519PrivateKey.generate())
    with pytest.raises(TokenSignatureError) as exc:
        verifier.verify(token, kind=TokenKind.SESSION)
    assert exc.value.field == "signature" and exc.value.http_status == 401


def test_tampered_payload_breaks_signature(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    header, _, sig = issuer.session(user_id="alice").token.split(".")
    claims = {**session_claims(Clock(issuer.clock())), "role": "admin"}
    forged = f"{header}.{b64url(json.dumps(claims).encode())}.{sig}"
    with pytest.raises(TokenSignatureError):
        verifier.verify(forged, kind=TokenKind.SESSION)


@pytest.mark.parametrize(
    "alg", ["none", "None", "NONE", "noNE", "", None, "RS256", "ES256", "HS512", "eddsa"]
)
def test_alg_none_and_unlisted_algorithms_refused(
    alg: str | None, forge: Forge, verifier: TokenVerifier, clock: Clock
) -> None:
    token = forge(session_claims(clock), header={"alg": alg})
    if alg is not None and alg.lower() == "none":
        token = token.rsplit(".", 1)[0] + "."  # the classic unsigned form
    with pytest.raises((TokenAlgorithmError, TokenFormatError)) as exc:
        verifier.verify(token, kind=TokenKind.SESSION)
    assert exc.value.field in ("alg", "signature")
    if token.endswith(".") is False:
        assert isinstance(exc.value, TokenAlgorithmError)


def test_alg_none_unsigned_refused_as_algorithm(forge: Forge, verifier: TokenVerifier, clock: Clock) -> None:
    h = b64url(
        json.dumps(
            {"alg": "none", "typ": TokenKind.SESSION.typ, "kid": verifier.keys.signing_key.kid}
        ).encode()
    )  # type: ignore[attr-defined]
    p = b64url(json.dumps(session_claims(clock)).encode())
    with pytest.raises(TokenAlgorithmError) as exc:
        verifier.verify(f"{h}.{p}.AAAA", kind=TokenKind.SESSION)
    assert exc.value.field == "alg" and exc.value.rule == "B3"


@pytest.mark.parametrize("encoding", ["raw", "pem", "openssh"])
def test_hs256_signed_with_eddsa_public_key_refused(
    encoding: str, ring: KeyRing, verifier: TokenVerifier, clock: Clock
) -> None:
    """Algorithm confusion: the attacker HMACs with the (public) verification key."""
    public = ring.signing_key.public_key
    assert public is not None
    secret = {
        "raw": public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "openssh": public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
    }[encoding]
    header = {"alg": "HS256", "typ": TokenKind.SESSION.typ, "kid": ring.signing_key.kid}
    with pytest.raises(TokenAlgorithmError):
        verifier.verify(_hs256(header, session_claims(clock), secret), kind=TokenKind.SESSION)


def test_hs256_confusion_refused_even_when_hs256_is_allowed(clock: Clock) -> None:
    """A sole-verifier ring with both key types: an HS256 token naming the Ed25519 kid is refused."""
    ed = TokenKey.generate(now=clock())
    hs = TokenKey.generate(alg="HS256", now=clock())
    ring = KeyRing(keys=[ed, hs], issuer_is_sole_verifier=True)
    verifier = TokenVerifier.from_keyring(ring, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    assert ed.public_key is not None
    raw = ed.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    header = {"alg": "HS256", "typ": TokenKind.SESSION.typ, "kid": ed.kid}
    with pytest.raises(TokenAlgorithmError) as exc:
        verifier.verify(_hs256(header, session_claims(clock), raw), kind=TokenKind.SESSION)
    assert "key's algorithm" in exc.value.message


def test_hs256_works_only_for_a_sole_verifier_ring(clock: Clock) -> None:
    ring = KeyRing.generate(alg="HS256", now=clock())
    issuer = TokenIssuer(keyring=ring, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    verifier = TokenVerifier.from_keyring(ring, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    token = issuer.session(user_id="alice").token
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert verifier.verify(token, kind=TokenKind.SESSION).user_id == "alice"
    assert ring.jwks() == {"keys": []}  # a secret is never published
    # A verifier built from an EdDSA-only configuration refuses the HS256 token outright.
    strict = TokenVerifier(keys=ring, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    with pytest.raises(TokenAlgorithmError):
        strict.verify(token, kind=TokenKind.SESSION)


@pytest.mark.parametrize(
    "kid",
    [
        "unknown-key-id",
        "../../../../etc/passwd",
        "/dev/null",
        "http://attacker.example/jwks.json",
        "x' OR '1'='1",
        "a" * 65,
        "",
        42,
        None,
        ["kid"],
    ],
)
def test_unknown_or_injected_kid_refused(
    kid: object, forge: Forge, verifier: TokenVerifier, clock: Clock
) -> None:
    token = forge(session_claims(clock), header={"kid": kid})
    with pytest.raises(UnknownKeyError) as exc:
        verifier.verify(token, kind=TokenKind.SESSION)
    assert exc.value.field == "kid" and exc.value.rule == "B4"
    assert "/" not in str(exc.value) or kid is None  # the kid is never echoed back


@pytest.mark.parametrize(
    "extra",
    [
        {"jku": "http://evil/jwks"},
        {"jwk": {"kty": "OKP"}},
        {"x5u": "http://evil"},
        {"crit": ["exp"]},
        {"b64": False},
    ],
)
def test_key_carrying_or_critical_headers_refused(
    extra: dict[str, object], forge: Forge, verifier: TokenVerifier, clock: Clock
) -> None:
    with pytest.raises(TokenFormatError) as exc:
        verifier.verify(forge(session_claims(clock), header=extra), kind=TokenKind.SESSION)
    assert exc.value.field == "header"


def test_expired_token(issuer: TokenIssuer, verifier: TokenVerifier, clock: Clock) -> None:
    token = issuer.session(user_id="alice", lifetime=timedelta(hours=1)).token
    clock.advance(timedelta(hours=1) + verifier.leeway - timedelta(seconds=1))
    verifier.verify(token, kind=TokenKind.SESSION)  # inside the clock-skew allowance
    clock.advance(timedelta(seconds=1))
    with pytest.raises(TokenExpiredError) as exc:
        verifier.verify(token, kind=TokenKind.SESSION)
    assert exc.value.field == "exp" and exc.value.code == "token-expired"


def test_not_yet_valid_nbf(forge: Forge, verifier: TokenVerifier, clock: Clock) -> None:
    now = int(clock().timestamp())
    token = forge(session_claims(clock, nbf=now + 600, exp=now + 3600))
    with pytest.raises(TokenNotYetValidError) as exc:
        verifier.verify(token, kind=TokenKind.SESSION)
    assert exc.value.field == "nbf"


def test_issued_in_the_future(forge: Forge, verifier: TokenVerifier, clock: Clock) -> None:
    now = int(clock().timestamp())
    token = forge(session_claims(clock, iat=now + 600, nbf=now + 600, exp=now + 3600))
    with pytest.raises(TokenNotYetValidError):
        verifier.verify(token, kind=TokenKind.SESSION)


@pytest.mark.parametrize(
    ("claim", "value"), [("iss", "evil-issuer"), ("aud", "other-service"), ("aud", ["a", "b"])]
)
def test_wrong_issuer_or_audience(
    claim: str, value: object, forge: Forge, verifier: TokenVerifier, clock: Clock
) -> None:
    with pytest.raises(TokenClaimError) as exc:
        verifier.verify(forge(session_claims(clock, **{claim: value})), kind=TokenKind.SESSION)
    assert exc.value.field == claim


def test_audience_list_containing_ours_is_accepted(
    forge: Forge, verifier: TokenVerifier, clock: Clock
) -> None:
    verifier.verify(forge(session_claims(clock, aud=["x", AUDIENCE])), kind=TokenKind.SESSION)


def test_token_for_another_service_refused_by_audience(
    issuer: TokenIssuer, ring: KeyRing, clock: Clock
) -> None:
    token = issuer.session(user_id="alice", audience="billing").token
    other = TokenVerifier.from_keyring(ring, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    with pytest.raises(TokenClaimError) as exc:
        other.verify(token, kind=TokenKind.SESSION)
    assert exc.value.field == "aud"


def test_wrong_kind_both_ways(issuer: TokenIssuer, verifier: TokenVerifier, certs: tuple) -> None:  # type: ignore[type-arg]
    cert_a, _ = certs
    job = issuer.job(node_id="node-a", job_id="job-1", cert=cert_a, duration=timedelta(hours=1)).token
    session = issuer.session(node_id="node-a", cert=cert_a).token
    with pytest.raises(TokenTypeError) as exc:
        verifier.verify(job, kind=TokenKind.SESSION, peer_cert=cert_a)
    assert exc.value.field == "typ"
    with pytest.raises(TokenTypeError):
        verifier.verify(session, kind=TokenKind.JOB, peer_cert=cert_a)


@pytest.mark.parametrize("presented", [TokenKind.SESSION, TokenKind.JOB, TokenKind.REFRESH])
def test_p2p_and_refresh_never_pass_as_other_kinds(
    presented: TokenKind, issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    p2p = issuer.p2p(subject="alice", user_id="alice", node_id="node-a").token
    refresh = issuer.refresh(session_id="s" * 22, user_id="alice").token
    for token, kind in ((p2p, TokenKind.P2P), (refresh, TokenKind.REFRESH)):
        if kind is presented:
            continue
        with pytest.raises(TokenTypeError):
            verifier.verify(token, kind=presented, audience=AUDIENCE)


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "cyxwiz-SESSION+jwt", None])
def test_generic_or_missing_typ_refused(
    typ: str | None, forge: Forge, verifier: TokenVerifier, clock: Clock
) -> None:
    with pytest.raises(TokenTypeError):
        verifier.verify(forge(session_claims(clock), header={"typ": typ}), kind=TokenKind.SESSION)


@pytest.mark.parametrize(
    "claim", ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "scope", "role", "session_id"]
)
def test_missing_required_claim(claim: str, forge: Forge, verifier: TokenVerifier, clock: Clock) -> None:
    claims = session_claims(clock)
    del claims[claim]
    with pytest.raises(TokenClaimError) as exc:
        verifier.verify(forge(claims), kind=TokenKind.SESSION)
    assert exc.value.field == claim and "missing" in exc.value.message


@pytest.mark.parametrize("claim", ["job_id", "node_id", "cnf"])
def test_job_token_missing_claim(
    claim: str, forge: Forge, verifier: TokenVerifier, clock: Clock, certs: tuple
) -> None:  # type: ignore[type-arg]
    from cyxwiz.tokens.binding import cnf_claim

    claims = session_claims(
        clock,
        sub="node-a",
        user_id=None,
        session_id=None,
        node_id="node-a",
        job_id="job-1",
        role="node",
        cnf=cnf_claim(certs[0]),
    )
    del claims[claim]
    with pytest.raises(TokenClaimError) as exc:
        verifier.verify(
            forge(claims, header={"typ": TokenKind.JOB.typ}), kind=TokenKind.JOB, peer_cert=certs[0]
        )
    assert exc.value.field == claim


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"scope": "job:read"}, "scope"),
        ({"scope": ["job:read", 7]}, "scope"),
        ({"scope": ["JOB READ"]}, "scope"),
        ({"exp": 1.5e12}, "exp"),
        ({"iat": True}, "iat"),
        ({"nbf": "0"}, "nbf"),
        ({"role": "root"}, "role"),
        ({"role": "node"}, "role"),
        ({"node_id": "node-a"}, "node_id/user_id"),
        ({"user_id": None}, "node_id/user_id"),
        ({"sub": "mallory"}, "sub"),
        ({"user_id": "../alice"}, "user_id"),
        ({"sub": "../alice", "user_id": "../alice"}, "sub"),
        ({"jti": "short"}, "jti"),
        ({"exp": 99999999999}, "exp"),
        ({"cnf": {"jkt": "x"}}, "cnf"),
    ],
)
def test_bad_claim_values(
    over: dict[str, object], field: str, forge: Forge, verifier: TokenVerifier, clock: Clock
) -> None:
    with pytest.raises(TokenClaimError) as exc:
        verifier.verify(forge(session_claims(clock, **over)), kind=TokenKind.SESSION)
    assert exc.value.field == field


def test_duplicate_claims_refused(forge: Forge, verifier: TokenVerifier, clock: Clock) -> None:
    body = json.dumps(session_claims(clock))[:-1] + ', "role": "admin"}'
    with pytest.raises(TokenFormatError) as exc:
        verifier.verify(forge({}, raw_payload=body.encode()), kind=TokenKind.SESSION)
    assert "duplicate" in exc.value.message


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t + ".x",
        lambda t: t.rsplit(".", 1)[0],
        lambda t: t + "=",
        lambda t: "!" + t,
        lambda t: "A" * 9000,
        lambda t: t.rsplit(".", 1)[0] + ".@@",
        lambda t: "W10." + t.split(".", 1)[1],  # header "[]"
    ],
)
def test_malformed_tokens(mangle, issuer: TokenIssuer, verifier: TokenVerifier) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TokenFormatError):
        verifier.verify(mangle(issuer.session(user_id="alice").token), kind=TokenKind.SESSION)


def test_non_canonical_base64_signature_refused(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    head, sig = issuer.session(user_id="alice").token.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(sig + "==")
    # 64-byte signature → 86 chars with 2 spare low bits; setting them gives the same bytes, another string.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(sig[-1]) | 1]
    assert base64.urlsafe_b64decode(sig[:-1] + last + "==") == raw
    with pytest.raises(TokenFormatError) as exc:
        verifier.verify(f"{head}.{sig[:-1]}{last}", kind=TokenKind.SESSION)
    assert "canonical" in exc.value.message


def test_replayed_one_shot_jti(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.p2p(subject="alice", user_id="alice", node_id="node-a").token
    verifier.verify(token, kind=TokenKind.P2P, audience="node-a")
    with pytest.raises(TokenReplayError) as exc:
        verifier.verify(token, kind=TokenKind.P2P, audience="node-a")
    assert exc.value.field == "jti" and exc.value.code == "token-replayed"


def test_session_tokens_reusable_unless_caller_asks_one_shot(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.session(user_id="alice").token
    verifier.verify(token, kind=TokenKind.SESSION)
    verifier.verify(token, kind=TokenKind.SESSION)
    verifier.verify(token, kind=TokenKind.SESSION, one_shot=True)
    with pytest.raises(TokenReplayError):
        verifier.verify(token, kind=TokenKind.SESSION, one_shot=True)


def test_p2p_token_only_for_its_node(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.p2p(subject="alice", user_id="alice", node_id="node-a").token
    with pytest.raises(TokenClaimError) as exc:
        verifier.verify(token, kind=TokenKind.P2P, audience="node-b")
    assert exc.value.field == "aud"
    with pytest.raises(TokenClaimError):
        verifier.verify(token, kind=TokenKind.P2P)  # the API is not its audience either


def test_cert_bound_token_with_other_cert(issuer: TokenIssuer, verifier: TokenVerifier, certs: tuple) -> None:  # type: ignore[type-arg]
    cert_a, cert_b = certs
    token = issuer.job(node_id="node-a", job_id="job-1", cert=cert_a, duration=timedelta(hours=1)).token
    from cryptography.hazmat.primitives.serialization import Encoding

    assert (
        verifier.verify(token, kind=TokenKind.JOB, peer_cert=cert_a.public_bytes(Encoding.DER)).job_id
        == "job-1"
    )
    with pytest.raises(TokenBindingError) as exc:
        verifier.verify(token, kind=TokenKind.JOB, peer_cert=cert_b)
    assert exc.value.field == "cnf" and exc.value.code == "token-binding"
    with pytest.raises(TokenBindingError):
        verifier.verify(token, kind=TokenKind.JOB)  # stolen token, no certificate at all


def test_node_session_without_cnf_refused(
    forge: Forge, verifier: TokenVerifier, clock: Clock, certs: tuple
) -> None:  # type: ignore[type-arg]
    claims = session_claims(clock, sub="node-a", user_id=None, node_id="node-a", role="node")
    with pytest.raises(TokenClaimError) as exc:
        verifier.verify(forge(claims), kind=TokenKind.SESSION, peer_cert=certs[0])
    assert exc.value.field == "cnf" and exc.value.rule == "B5"


def test_errors_never_contain_the_token(forge: Forge, verifier: TokenVerifier, clock: Clock) -> None:
    token = forge(session_claims(clock), key=Ed25519PrivateKey.generate())
    with pytest.raises(TokenError) as exc:
        verifier.verify(token, kind=TokenKind.SESSION)
    assert token.split(".")[1] not in str(exc.value)


def test_jwks_verifier_refuses_hs256_configuration(ring: KeyRing) -> None:
    from cyxwiz.errors import ConfigError
    from cyxwiz.tokens import JwksKeySource

    with pytest.raises(ConfigError) as exc:
        TokenVerifier(
            keys=JwksKeySource(ring.jwks()), issuer=ISSUER, audience=AUDIENCE, algorithms=("HS256",)
        )
    assert exc.value.rule == "B3"
