"""The node's live credentials: its current certificate and session, renewed while the agent runs.

Nothing is frozen into a process environment: the agent's tunnel asks :class:`LiveCredentials` on every
connection and request, so a refreshed session token and a renewed certificate reach the running Prefect
worker and its flow runs at once (SPEC A7 automatic renewal, B2, B5; issue 18).

Files under ``$CYXWIZ_WORK_ROOT`` (0700): ``session.json`` (0600): the session and refresh tokens and,
once the node renewed, the certificate and key they are bound to (``identity/*.pem``, key 0600) — one
file, replaced atomically, so a token and its certificate are always read together. A renewed certificate
never overwrites the one before: flow runs started under it keep it (and the job token bound to it) until
it expires; new processes get the current one. ``identity/renewal-links.json``: every renewal link the
node's keys signed (each old key's "this new key is mine"), which a proof restated under a renewed
certificate carries from the key its run was trained for (issue 17; A7, F1).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import ssl
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from agents.settings import AgentSettings

SESSION_FILE = "session.json"
LINKS_FILE = "renewal-links.json"


def _session(settings: AgentSettings) -> dict[str, Any]:
    try:
        data = json.loads((settings.work_root / SESSION_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _paired(settings: AgentSettings, session: dict[str, Any]) -> AgentSettings:
    if isinstance(session.get("cert"), str) and isinstance(session.get("key"), str):
        return replace(settings, cert=Path(session["cert"]), key=Path(session["key"]))
    return settings


def paired_settings(settings: AgentSettings, session: dict[str, Any]) -> AgentSettings:
    """``settings`` with the certificate and key ``session`` (one read of ``session.json``) is bound to."""
    return _paired(settings, session)


def current_settings(settings: AgentSettings) -> AgentSettings:
    """``settings`` with the certificate and key the node's session is bound to (after renewals)."""
    return _paired(settings, _session(settings))


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def write_identity(settings: AgentSettings, cert_pem: bytes, key: ed25519.Ed25519PrivateKey) -> AgentSettings:
    """Store a renewed certificate and key beside the earlier ones (current once the session names them)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    folder = settings.work_root / "identity"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stem = format(cert.serial_number, "x")
    key_path, cert_path = folder / f"{stem}-key.pem", folder / f"{stem}-cert.pem"
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, pkcs8, 0o600)
    _write_private(cert_path, cert_pem, 0o644)
    return replace(settings, cert=cert_path, key=key_path)


def renewal_links(settings: AgentSettings) -> list[Any]:
    """The renewal links this node's keys signed, oldest first (their signatures are the verifier's check)."""
    try:
        data = json.loads((settings.work_root / "identity" / LINKS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return []
    return data if isinstance(data, list) else []


def _keep_link(settings: AgentSettings, link: dict[str, Any]) -> None:
    folder = settings.work_root / "identity"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = json.dumps([*renewal_links(settings), link]).encode()
    _write_private(folder / LINKS_FILE, data, 0o644)  # public documents: signatures, PeerIDs


def renewal_due(cert_path: Path, *, now: dt.datetime | None = None) -> bool:
    """Half-life reached: half the time between the certificate reaching this node and its expiry."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    now = now or dt.datetime.now(dt.UTC)
    received = dt.datetime.fromtimestamp(cert_path.stat().st_mtime, dt.UTC)
    start = max(cert.not_valid_before_utc, min(received, now))
    return now >= start + (cert.not_valid_after_utc - start) / 2


def renew(settings: AgentSettings) -> AgentSettings:
    """A new key and CSR, signed over the node's current identity; the new identity and session stored."""
    from agents.node_client import _client, _raise_for, _write_session, read_session
    from cyxwiz.ledger.payout import SignedRenewalLink
    from cyxwiz.pki.ca import create_csr
    from cyxwiz.pki.keys import load_private_key
    from cyxwiz.pki.peerid import peer_id

    current = current_settings(settings)
    assert current.cert is not None
    cert = x509.load_pem_x509_certificate(current.cert.read_bytes())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    key = ed25519.Ed25519PrivateKey.generate()
    csr = create_csr(key, common_name=str(names[0].value)).public_bytes(serialization.Encoding.PEM).decode()
    session = read_session(settings)
    assert current.key is not None
    # The current key vouches for the new one: what lets a proof this key signed before the switch be
    # paid to the wallet the new key states, and no key the node never vouched for (issue 17; F1, A7).
    link = SignedRenewalLink.sign(old_key=load_private_key(current.key), new_peer_id=peer_id(key))
    body: dict[str, Any] = {"csr": csr, "renewal_link": link.to_dict()}
    if settings.payout_wallet:  # the wallet, signed by the new key, outlives the old certificate (F1)
        from cyxwiz.ledger.payout import SignedWalletStatement

        body["wallet_statement"] = SignedWalletStatement.sign(
            key=key, wallet=settings.payout_wallet
        ).to_dict()
    with _client(current) as client:
        response = client.post(
            "/v1/nodes/renew",
            json=body,
            headers={"authorization": f"Bearer {session['session_token']}"},
        )
        _raise_for(response)
        renewed: dict[str, Any] = response.json()
    new = write_identity(settings, renewed["certificate"].encode(), key)
    _keep_link(
        settings, link.to_dict()
    )  # before the session names the new key: a proof restated under it finds it
    fresh = {k: v for k, v in renewed.items() if k not in ("certificate", "not_after")}
    _write_session(settings, {**fresh, "cert": str(new.cert), "key": str(new.key)})
    return new


def thumbprint(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_thumbprint(token: str) -> str | None:
    """The certificate thumbprint (``cnf.x5t#S256``) one of our JWTs is bound to, unverified."""
    cnf = _claims(token).get("cnf")
    bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    return bound if isinstance(bound, str) else None


class LiveCredentials:
    """What the tunnel presents, read fresh for each connection (:meth:`pin`)."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._contexts: dict[Path | None, ssl.SSLContext] = {}
        self._job_tokens: dict[tuple[str, str], str] = {}

    def pin(self) -> PinnedCredentials:
        """One connection's credentials: the session and the certificate it is bound to, read together."""
        from agents.node_client import client_ssl_context

        session = _session(self.settings)
        current = _paired(self.settings, session)
        with self._lock:
            ctx = self._contexts.get(current.cert)
            if ctx is None:
                ctx = self._contexts[current.cert] = client_ssl_context(current)
        token = session.get("session_token")
        return PinnedCredentials(self, current, ctx, token if isinstance(token, str) else None)

    def _rebound_job_token(self, current: AgentSettings, presented: str) -> str:
        claims = _claims(presented)
        job_id = claims.get("job_id")
        cnf = claims.get("cnf")
        bound = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        if not isinstance(job_id, str) or current.cert is None:
            return presented
        now = thumbprint(x509.load_pem_x509_certificate(current.cert.read_bytes()))
        if bound == now:
            return presented
        with self._lock:
            cached = self._job_tokens.get((job_id, now))
        if cached is not None:
            return cached
        from agents.node_client import fetch_job_token

        try:
            fresh = fetch_job_token(current, job_id)
        except Exception:
            return presented  # the gateway refuses it and says why
        if token_thumbprint(fresh) != now:
            return fresh  # the session moved on meanwhile: not this certificate's to keep
        with self._lock:
            self._job_tokens[(job_id, now)] = fresh
        return fresh


@dataclass(frozen=True)
class PinnedCredentials:
    live: LiveCredentials
    settings: AgentSettings
    context: ssl.SSLContext
    token: str | None

    def ssl_context(self) -> ssl.SSLContext:
        return self.context

    def session_token(self) -> str | None:
        """The session's token as it is now, while the session is still bound to this connection's
        certificate (a refresh reaches a keep-alive connection at its next request); else the one read
        when the connection opened."""
        session = _session(self.live.settings)
        token = session.get("session_token")
        if isinstance(token, str) and _paired(self.live.settings, session).cert == self.settings.cert:
            return token
        return self.token

    def stale(self) -> bool:
        """The node switched to a renewed certificate since this connection opened."""
        return current_settings(self.live.settings).cert != self.settings.cert

    def job_token(self, presented: str) -> str:
        """``presented`` if bound to this certificate, else one for the same job that is (a flow run
        started before a renewal keeps working)."""
        return self.live._rebound_job_token(self.settings, presented)


def _claims(token: str) -> dict[str, Any]:
    """The payload of one of our own JWTs, unverified (the gateway verifies; this only routes)."""
    try:
        payload = token.split(".")[1]
        value = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
