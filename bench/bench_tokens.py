"""Full token verification vs bare PyJWT decode (issue 3 benchmark).

Full = signature + header allow-lists + kid lookup + typ + every claim's value + cnf certificate binding
+ one-shot jti replay check (in-memory cache). Baseline = ``jwt.decode`` of the same tokens with the
Ed25519 public key (signature, exp, iss, aud). Ratio = full/s ÷ bare/s; goal ≥ 0.7.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from cyxwiz.tokens import InMemoryReplayCache, KeyRing, TokenIssuer, TokenKind, TokenVerifier

N = 3000
ROUNDS = 3


def _cert() -> x509.Certificate:
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-node")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, None)
    )


def run() -> list[tuple[str, float, str]]:
    ring = KeyRing.generate()
    issuer = TokenIssuer(keyring=ring, issuer="bench-iss", audience="bench-api")
    cert = _cert()
    tokens = [
        issuer.job(node_id="node-1", job_id=f"job-{i}", cert=cert, duration=timedelta(hours=1)).token
        for i in range(N)
    ]
    public = ring.signing_key.public_key

    def bare() -> float:
        start = time.perf_counter()
        for t in tokens:
            jwt.decode(t, public, algorithms=["EdDSA"], audience="bench-api", issuer="bench-iss")
        return N / (time.perf_counter() - start)

    def full() -> float:
        verifier = TokenVerifier.from_keyring(
            ring, issuer="bench-iss", audience="bench-api", replay_cache=InMemoryReplayCache()
        )
        start = time.perf_counter()
        for t in tokens:
            verifier.verify(t, kind=TokenKind.JOB, peer_cert=cert, one_shot=True)
        return N / (time.perf_counter() - start)

    bare_best = full_best = 0.0
    for _ in range(ROUNDS):  # interleaved, best of each: less sensitive to noisy neighbours
        bare_best = max(bare_best, bare())
        full_best = max(full_best, full())
    ratio = full_best / bare_best
    why = f"full verify {full_best:,.0f}/s vs jwt.decode EdDSA {bare_best:,.0f}/s (goal >= 0.7)"
    return [("full_verify_vs_jwt_decode", ratio, why)]


if __name__ == "__main__":
    for label, ratio, why in run():
        print(f"{label}: {ratio:.3f}  {why}")
