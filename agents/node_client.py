"""The node's side of the coordinator API, always over mTLS with the node's certificate (SPEC A5, D1).

The agent launcher registers the node and keeps its session alive (heartbeat + refresh rotation); the
session lives in ``$CYXWIZ_WORK_ROOT/session.json`` (0600) where the worker reads it to fetch job tokens.
A flow run on the node only ever holds its own job's token (``CYXWIZ_JOB_TOKEN``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from agents.credentials import SESSION_FILE
from agents.settings import AgentSettings
from cyxwiz.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    UnavailableError,
)
from cyxwiz.retry import TRANSIENT_STATUSES, retrying

_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
T = TypeVar("T")


def client_ssl_context(settings: AgentSettings) -> ssl.SSLContext:
    """TLS 1.3 client context presenting the node certificate and verifying the control plane's."""
    from cyxwiz.transport.tls import client_context

    if settings.cert is None or settings.key is None or settings.ca_bundle is None:
        raise ConfigError(
            "the node agent needs CYXWIZ_NODE_CERT, CYXWIZ_NODE_KEY and CYXWIZ_CA_BUNDLE",
            field="CYXWIZ_NODE_CERT",
            rule="A5",
        )
    return client_context(
        trust_bundle=settings.ca_bundle, cert=settings.cert, key=settings.key, crl=settings.crl
    )


def _client(settings: AgentSettings, *, follow: bool = True) -> httpx.Client:
    """A client with the node's certificate: its current one (``follow``, after renewals), or exactly the
    one ``settings`` names (a flow run keeps the certificate its job token is bound to)."""
    if not settings.coordinator_url:
        raise ConfigError("CYXWIZ_COORDINATOR_URL is not set", field="CYXWIZ_COORDINATOR_URL")
    if follow:
        from agents.credentials import current_settings

        settings = current_settings(settings)
    assert settings.coordinator_url is not None
    # httpx drops cert= when verify is a path: the SSLContext carries both (ARCHITECTURE.md).
    return httpx.Client(
        base_url=settings.coordinator_url, verify=client_ssl_context(settings), timeout=_TIMEOUT
    )


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("title") or response.text
    except ValueError:
        detail = response.text
    if response.status_code in (401, 403):
        raise AuthenticationError(f"coordinator refused ({response.status_code}): {detail}", rule="B1")
    if response.status_code == 404:
        raise NotFoundError(f"coordinator: {detail}")
    if response.status_code == 409:
        raise ConflictError(f"coordinator refused ({response.status_code}): {detail}")
    if response.status_code in TRANSIENT_STATUSES:
        # The coordinator (or a proxy before it) could not act now: retried, never a verdict (issue 21).
        raise UnavailableError(f"coordinator unavailable ({response.status_code}): {detail}")
    raise ConfigError(f"coordinator error {response.status_code}: {detail}")


def _write_session(settings: AgentSettings, data: dict[str, Any]) -> None:
    settings.work_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = settings.work_root / SESSION_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    tmp.replace(path)


def read_session(settings: AgentSettings) -> dict[str, Any]:
    path = settings.work_root / SESSION_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuthenticationError(
            "the node is not registered (no session)", path=str(path), rule="B1"
        ) from None
    return data


def hardware() -> dict[str, Any]:
    cores = os.cpu_count() or 1
    memory_mb = (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // (1024 * 1024)
    return {"gpus": 0, "gpu_model": None, "gpu_memory_mb": 0, "cpu_cores": cores, "memory_mb": int(memory_mb)}


def register_node(settings: AgentSettings, *, max_jobs: int | None = None) -> dict[str, Any]:
    """Register (identity = the certificate's PeerID, never a body field) and store the session.
    ``max_jobs``: the most open jobs the coordinator may give this node (issue 21; None: no cap)."""
    with _client(settings) as client:
        body: dict[str, Any] = {"hardware": hardware()}
        if max_jobs is not None:
            body["hardware"]["max_jobs"] = max_jobs
        if settings.payout_wallet:
            body["wallet"] = settings.payout_wallet  # only a public key: the node's key stays elsewhere
            body["wallet_statement"] = wallet_statement(settings, settings.payout_wallet)
        response = client.post("/v1/nodes/register", json=body)
        _raise_for(response)
        data: dict[str, Any] = response.json()
    _write_session(settings, data)
    return {"node_id": data["node_id"], "peer_id": data["peer_id"], "platform": platform.machine()}


def wallet_statement(settings: AgentSettings, wallet: str) -> dict[str, Any]:
    """The payout wallet signed by the key of the certificate this node presents (issue 17; F1, A5):
    what the verifier service checks before it attests a release, so no coordinator row can redirect pay."""
    from agents.credentials import current_settings
    from cyxwiz.ledger.payout import SignedWalletStatement
    from cyxwiz.pki.keys import load_private_key

    key_path = current_settings(settings).key
    if key_path is None:
        raise ConfigError("the node agent needs CYXWIZ_NODE_KEY", field="CYXWIZ_NODE_KEY", rule="A5")
    key = load_private_key(key_path)
    return SignedWalletStatement.sign(key=key, wallet=wallet).to_dict()


def refresh_session(settings: AgentSettings, client: httpx.Client | None = None) -> dict[str, Any]:
    """Rotate the session through its refresh token (one-shot, reuse revokes the family, B5)."""
    session = read_session(settings)
    with contextlib.ExitStack() as stack:
        client = client or stack.enter_context(_client(settings))
        refreshed = client.post("/v1/tokens/refresh", json={"refresh_token": session["refresh_token"]})
        _raise_for(refreshed)
    session.update(refreshed.json())
    _write_session(settings, session)
    return session


def _expiring(session: dict[str, Any], within: float) -> bool:
    import datetime as dt

    try:
        expires = dt.datetime.fromisoformat(str(session["expires_at"]))
    except (KeyError, ValueError):
        return False
    return (expires - dt.datetime.now(dt.UTC)).total_seconds() < within


def heartbeat_once(settings: AgentSettings, *, refresh_within: float = 60.0) -> dict[str, Any]:
    session = read_session(settings)
    with _client(settings) as client:
        if _expiring(session, refresh_within):
            # Refreshed ahead of expiry: the tunnel hands the new token to the running worker at once.
            session = refresh_session(settings, client)
        response = client.post(
            "/v1/nodes/heartbeat",
            json={},
            headers={"authorization": f"Bearer {session['session_token']}"},
        )
        if response.status_code == 401:
            session = refresh_session(settings, client)
            response = client.post(
                "/v1/nodes/heartbeat",
                json={},
                headers={"authorization": f"Bearer {session['session_token']}"},
            )
        _raise_for(response)
        result: dict[str, Any] = response.json()
        return result


def heartbeat_forever(settings: AgentSettings, stop: threading.Event, interval: float) -> None:
    """Heartbeat, keep the session fresh, and renew the certificate at half-life (issue 18, A7)."""
    from agents.credentials import current_settings, renew, renewal_due

    while not stop.wait(interval):
        with contextlib.suppress(Exception):  # a missed beat only makes the node look stale; retry next tick
            heartbeat_once(settings, refresh_within=max(60.0, 3 * interval))
        with contextlib.suppress(Exception):  # renewal is retried every tick until the certificate expires
            cert = current_settings(settings).cert
            if cert is not None and renewal_due(cert):
                renew(settings)


def fetch_job_token(settings: AgentSettings, job_id: str) -> str:
    """The job's token over the node's session, across a coordinator restart (issue 21)."""
    # Each try reads the session again: the heartbeat may have refreshed it meanwhile.
    return retrying(lambda: _fetch_job_token(settings, job_id), what=f"job token of {job_id}")


def _fetch_job_token(settings: AgentSettings, job_id: str) -> str:
    return _fetch_pinned_job_token(settings, job_id)[1]


def _fetch_pinned_job_token(settings: AgentSettings, job_id: str) -> tuple[AgentSettings, str]:
    """The job's token and the certificate it is bound to, from ONE read of the session: a renewal that
    replaces ``session.json`` between reading the session token and picking the certificate would send
    the old session's token over the new certificate (refused as bound to another certificate: the run
    picked up just before a renewal would not start, issue 18)."""
    from agents.credentials import paired_settings

    session = read_session(settings)
    pinned = paired_settings(settings, session)
    with _client(pinned, follow=False) as client:
        response = client.get(
            f"/v1/jobs/{job_id}/token", headers={"authorization": f"Bearer {session['session_token']}"}
        )
        _raise_for(response)
        return pinned, str(response.json()["job_token"])


class CoordinatorChannel:
    """:class:`tasks.channel.NodeChannel` over the coordinator API with the job token (SPEC C3, D3).

    A flow run can outlive the certificate it started with (a job longer than the certificate's lifetime,
    or a renewal between the worker's pickup and the run's start): each call goes out under the node's
    *current* certificate, with a job token bound to that certificate (fetched for the same job over the
    current identity when the one the run was given is bound to an earlier certificate), and a proof
    signed with an earlier identity of the node is signed again with the current one (A7, B1, F1).
    """

    def __init__(self, *, settings: AgentSettings, job_token: str) -> None:
        self.settings = settings
        self._token = job_token
        #: No call outlives the job token: past its expiry the coordinator refuses the run anyway (B2).
        self._until = _expiry(job_token)
        #: Job tokens for this run's job, by the thumbprint of the certificate they are bound to.
        self._bound: dict[str, str] = {}

    @classmethod
    def from_env(cls) -> CoordinatorChannel:
        token = os.environ.get("CYXWIZ_JOB_TOKEN")
        if not token:
            raise AuthenticationError("no job token in this flow run (CYXWIZ_JOB_TOKEN)", rule="B1")
        return cls(settings=AgentSettings.from_env(), job_token=token)

    def _identity(self, job_id: str) -> tuple[AgentSettings, dict[str, str]]:
        """The node's current certificate and this job's token bound to it."""
        from agents.credentials import current_settings, token_thumbprint

        current = current_settings(self.settings)
        if current.cert is None or current.cert == self.settings.cert:
            return self.settings, {"authorization": f"Bearer {self._token}"}
        now = cert_thumbprint(current.cert)
        token = self._token if token_thumbprint(self._token) == now else self._bound.get(now)
        if token is None:
            # Over the current identity, for the same job: the coordinator checks it is still the node's.
            # The call goes out under the certificate the fetched token is bound to (a renewal may land
            # between reading ``current`` and the fetch).
            current, token = _fetch_pinned_job_token(current, job_id)  # the caller retries
            assert current.cert is not None
            self._bound[cert_thumbprint(current.cert)] = token
        return current, {"authorization": f"Bearer {token}"}

    def _url(
        self, client: httpx.Client, auth: dict[str, str], job_id: str, body: dict[str, Any]
    ) -> tuple[str, dict[str, str]]:
        response = client.post(f"/v1/jobs/{job_id}/urls", json=body, headers=auth)
        _raise_for(response)
        target = response.json()["url"]
        if isinstance(target, dict):
            return str(target["url"]), {str(k): str(v) for k, v in (target.get("headers") or {}).items()}
        return str(target), {}

    def _retrying(self, call: Callable[[], T], *, what: str) -> T:
        """``call`` across a coordinator or gateway restart (issue 21): transport errors and 502/503/504
        are retried with backoff until the budget or the job token's expiry, a refusal never."""
        return retrying(call, what=what, until=self._until)

    def fetch_input(self, job_id: str, name: str, *, sha256: str | None) -> bytes:
        def once() -> bytes:
            settings, auth = self._identity(job_id)
            with _client(settings, follow=False) as client:
                url, headers = self._url(
                    client, auth, job_id, {"kind": "input", "name": name, "method": "GET"}
                )
                response = client.get(url, headers=headers)
                _raise_for(response)
                return response.content

        data = self._retrying(once, what=f"fetch input {name}")
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(f"input {name} does not match its SHA-256 in the job spec", rule="D3")
        return data

    def report_progress(self, job_id: str, message: dict[str, Any]) -> None:
        if message.get("kind") != "progress" or not message.get("total"):
            return
        body = {"step": int(message["step"]), "total": int(message["total"])}

        def once() -> None:
            settings, auth = self._identity(job_id)
            with _client(settings, follow=False) as client:
                _raise_for(client.post(f"/v1/jobs/{job_id}/progress", json=body, headers=auth))

        self._retrying(once, what="progress report")

    def upload_output(self, job_id: str, name: str, path: Path) -> None:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        wanted = {"kind": "output", "name": name, "method": "PUT", "sha256": digest, "size": len(data)}

        def once() -> None:
            # A fresh URL each try (one issued before a restart may have expired); the same bytes under
            # the same key: a PUT repeated after a lost answer overwrites itself.
            settings, auth = self._identity(job_id)
            with _client(settings, follow=False) as client:
                url, headers = self._url(client, auth, job_id, wanted)
                _raise_for(client.put(url, content=data, headers=headers))

        self._retrying(once, what=f"upload output {name}")

    def submit_proof(self, job_id: str, proof: bytes) -> None:
        def once() -> None:
            # The coordinator accepts the same proof again (its answer may have been lost), not another.
            settings, auth = self._identity(job_id)
            body = {"proof": json.loads(resigned(proof, settings))}
            with _client(settings, follow=False) as client:
                _raise_for(client.post(f"/v1/jobs/{job_id}/completion", json=body, headers=auth))

        self._retrying(once, what="submit proof")


def _expiry(token: str) -> float | None:
    """The job token's ``exp`` (its signature is the coordinator's to check; we only bound our retries)."""
    import jwt

    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return float(exp) if isinstance(exp, int | float) else None


def cert_thumbprint(path: Path) -> str:
    from cryptography import x509

    from agents.credentials import thumbprint

    return thumbprint(x509.load_pem_x509_certificate(path.read_bytes()))


def resigned(proof: bytes, settings: AgentSettings) -> bytes:
    """``proof`` as the node's current identity (``settings``) states it: unchanged when it already names
    that certificate; restated and signed with its key when the run signed it under an earlier certificate
    of this node (renewed while the job ran, or the job outlived that certificate), after checking that
    earlier signature. The restated proof keeps the key the run was trained for (its seed mixes it in) and
    carries this node's renewal links from that key to the current one (issue 17; A7, F1). Anything else
    is passed on unchanged, for the coordinator to refuse."""
    from cryptography import x509

    from agents.credentials import renewal_links
    from cyxwiz.errors import CyxwizError
    from cyxwiz.pki.certs import fingerprint_sha256
    from cyxwiz.pki.keys import load_private_key
    from cyxwiz.pki.peerid import peer_id
    from cyxwiz.verification.proof import SignedProof, restate_proof, verify_proof_signature
    from cyxwiz.verification.renewal_links import chain_links

    if settings.cert is None or settings.key is None:
        return proof
    try:
        signed = SignedProof.from_json(proof)
        cert = x509.load_pem_x509_certificate(settings.cert.read_bytes())
        if signed.proof.node_peer_id == peer_id(cert):
            return proof
        earlier = _earlier_certificate(settings, signed.proof.node_peer_id)
        if earlier is None:
            return proof
        verify_proof_signature(signed, earlier.public_key())
        current = peer_id(cert)
        return restate_proof(
            signed,
            node_peer_id=current,
            cert_fingerprint_sha256=fingerprint_sha256(cert).hex(),
            links=chain_links(signed.proof.trainer(), current, renewal_links(settings)),
            private_key=load_private_key(settings.key),
        ).to_json()
    except CyxwizError:
        return proof


def _earlier_certificate(settings: AgentSettings, wanted: str) -> Any:
    """The node's own certificate (the first one, or one it renewed to) with PeerID ``wanted``."""
    from cryptography import x509

    from cyxwiz.pki.peerid import peer_id

    candidates = [settings.cert] if settings.cert is not None else []
    base = AgentSettings.from_env()
    if base.cert is not None:
        candidates.append(base.cert)
    candidates += sorted((settings.work_root / "identity").glob("*-cert.pem"))
    for path in candidates:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue
        if peer_id(cert) == wanted:
            return cert
    return None
