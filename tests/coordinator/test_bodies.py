"""No body is read before the caller authenticated, and each route has its own body cap (issue 18;
SPEC I: body size limits, DoS). The declared body is never sent in the attacks: the answer must come
without it, which shows the coordinator did not wait to buffer it."""

from __future__ import annotations

from cyxwiz.transport.tls import client_context
from tests._rawhttp import head_only
from tests.coordinator.conftest import Env


def _post(env: Env, path: str, *, length: int, token: str | None = None, who: str | None = None) -> int:
    pki = env.pki
    if who is None:
        ctx = client_context(trust_bundle=pki.bundle)
    else:
        ctx = client_context(trust_bundle=pki.bundle, cert=pki.node_cert(who), key=pki.node_key(who))
    auth = f"\nAuthorization: Bearer {token}" if token else ""
    head = f"POST {path} HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: {length}{auth}"
    status, _ = head_only(env.coord.url, ctx, head)
    return status


def _refused(env: Env, code: str) -> int:
    """Refusals audited with this problem code (``unauthenticated: ...`` or ``413 body-too-large: ...``)."""
    return sum(1 for e in env.audit.events if e.outcome.value != "success" and code in str(e.details))


def test_anonymous_body_refused_before_it_is_read(env: Env) -> None:
    assert _post(env, "/v1/jobs", length=500_000) == 401
    assert _post(env, "/v1/jobs", length=500_000, token="not-a-jwt") == 401
    assert _refused(env, "before a request body is read") == 1
    assert _refused(env, "token-format") == 1
    # Positive control: the same user with a real token is waited for (the body is read, then judged).
    token = env.user_token("alice")
    with env.client() as c:
        r = c.post("/v1/jobs", content=b"{}", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 422  # the body was read and judged: not a job spec


def test_bodies_capped_per_route(env: Env) -> None:
    token = env.user_token("alice")
    # The JSON API takes 1 MiB at most, whoever asks; refused on the declared length alone.
    assert _post(env, "/v1/jobs", length=2 << 20, token=token) == 413
    assert _post(env, "/v1/nodes/heartbeat", length=2 << 20, who="node-a") == 413
    # A refresh token travels in its body: that body is tiny (16 KiB).
    assert _post(env, "/v1/tokens/refresh", length=64 << 10) == 413
    assert _refused(env, "body-too-large") >= 3
    # A chunked body past the cap is cut off too (no Content-Length to judge it by).
    with env.client() as c:
        chunks = (b"x" * 65536 for _ in range(40))
        r = c.post("/v1/jobs", content=chunks, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 413
    # Positive control: a small refresh body is read (and judged: not a token).
    with env.client() as c:
        r = c.post("/v1/tokens/refresh", json={"refresh_token": "x"})
    assert r.status_code == 401


def test_certificate_admits_a_body(env: Env) -> None:
    """A node registers with its certificate alone: its body is read (the certificate authenticated it)."""
    registered = env.register("node-a")
    assert registered["node_id"].startswith("node-")
