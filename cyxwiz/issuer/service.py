"""The issuer service: its own process, the only holder of the issuing CA's key (issue 17; A1, A6, A7).

It listens on a Unix socket (mode 0600 in a 0700 directory: only its owner, the control plane's account,
connects) and answers, in the style of the verifier service:

``GET  /v1/ca``      the issuing CA's certificate (public);
``POST /v1/renew``   ``{certificate, csr, renewal_link}`` -> ``{certificate}``, when
                     :class:`~cyxwiz.issuer.policy.NodeCertIssuer` allows it; else the precise refusal;
``POST /v1/revoke``  ``{certificate, reason, earlier}`` (PEM) -> ``{crl}``: a node's worker certificate
                     and its earlier ones under its name revoked and a fresh CRL signed, when
                     :func:`~cyxwiz.issuer.revocation.revocable` allows it; no other certificate is
                     revoked over the socket (an operator does it on this host);
``GET  /v1/crl``     ``{crl}``: a freshly signed CRL (the listeners' copy nears its nextUpdate);
``POST /v1/crl``     ``{days}`` -> the same with nextUpdate in ``days`` (the ``crl-refresh`` flow).

:class:`RemoteIssuer` is the coordinator's client (the same two calls as the in-process issuer, so the
coordinator takes either); :class:`IssuerProcess` starts ``python -m cyxwiz.issuer serve``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cyxwiz.errors import (
    AuthorizationError,
    ConflictError,
    CyxwizError,
    UnavailableError,
    ValidationError,
)
from cyxwiz.issuer.policy import IssuanceRefusedError, NodeCertIssuer, RenewalRequest
from cyxwiz.issuer.revocation import RevocationRefusedError, RevocationRequest
from cyxwiz.service_process import SocketServiceProcess
from cyxwiz.unix_json import ServiceUnreachable, UnixJsonClient
from cyxwiz.unix_json_server import serve_unix

MAX_BODY = 64 << 10


@dataclass
class IssuerService:
    """The issuer service's rules behind its socket (:meth:`handle`: one request, one answer)."""

    issuer: NodeCertIssuer
    #: One signing at a time: the CA's revocation database and CRL number are read-modify-write.
    _serial: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def handle(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        try:
            with self._serial:
                return self._route(method, path, body)
        except CyxwizError as exc:
            return exc.http_status, {"error": exc.to_dict()}

    def _route(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path == "/v1/ca":
            return 200, {"certificate": self.issuer.ca.certificate.public_bytes(Encoding.PEM).decode()}
        if method == "POST" and path == "/v1/renew":
            cert = self.issuer.renew(RenewalRequest.from_dict(body))
            return 200, {"certificate": cert.public_bytes(Encoding.PEM).decode()}
        if method == "POST" and path == "/v1/revoke":
            return 200, {"crl": self.issuer.revoke(self.issuer.revocation_request(body)).decode()}
        if method == "GET" and path == "/v1/crl":
            return 200, {"crl": self.issuer.crl().decode()}
        if method == "POST" and path == "/v1/crl":
            return 200, {"crl": self.issuer.crl(days=_crl_days(body)).decode()}
        return 404, {"error": {"code": "not-found", "message": f"no route {method} {path}"}}


def serve(
    app: IssuerService, *, socket_path: Path, ready_file: Path | None = None, mode: int = 0o600
) -> None:
    """Serve on a Unix socket only its owner can connect to (0600 in a 0700 directory); ``mode`` 0660
    lets the owner's group in (systemd: the coordinator's account shares the group, not the user)."""
    if mode & 0o007:
        raise ValidationError("the issuer socket is never open to others", field="socket_mode", rule="A7")
    serve_unix(app, socket_path=socket_path, mode=mode, max_body=MAX_BODY, ready_file=ready_file)


def _crl_days(body: Any) -> int:
    days = body.get("days") if isinstance(body, dict) and set(body) == {"days"} else None
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 366:
        raise ValidationError("must be {days: 1..366}", field="days", rule="A6")
    return days


#: The refusals the issuer sends, rebuilt by their code on the coordinator's side (precise, not generic).
def _known() -> Sequence[type[CyxwizError]]:
    from cyxwiz.errors import CertificateError, ChainError, CRLError
    from cyxwiz.ledger.payout import RenewalLinkError

    return (
        IssuanceRefusedError, RevocationRefusedError, RenewalLinkError, ValidationError, ConflictError,
        AuthorizationError,
        CertificateError, ChainError, CRLError,
    )  # fmt: skip


class RemoteIssuer:
    """The coordinator's side: asks the issuer service over its Unix socket; holds no key."""

    def __init__(self, *, socket_path: Path, timeout_s: float = 30.0) -> None:
        self.socket_path = socket_path
        self._client = UnixJsonClient(socket_path, timeout_s=timeout_s)

    def renew(self, request: RenewalRequest) -> x509.Certificate:
        pem = str(self._call("POST", "/v1/renew", request.to_dict())["certificate"])
        return x509.load_pem_x509_certificate(pem.encode())

    def revoke(self, request: RevocationRequest) -> bytes:
        return str(self._call("POST", "/v1/revoke", request.to_dict())["crl"]).encode()

    def crl(self, *, days: int | None = None) -> bytes:
        if days is None:
            return str(self._call("GET", "/v1/crl")["crl"]).encode()
        return str(self._call("POST", "/v1/crl", {"days": days})["crl"]).encode()

    def ca_certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(str(self._call("GET", "/v1/ca")["certificate"]).encode())

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            status, payload = self._client.request(method, path, body)
        except ServiceUnreachable as exc:
            raise UnavailableError(
                f"the issuer service at {self.socket_path} is unreachable ({exc})",
                field="issuer_socket",
                rule="A7",
            ) from None
        if status != 200:
            data = payload.get("error") if isinstance(payload, dict) else None
            data = data if isinstance(data, dict) else {}
            cls = next((k for k in _known() if k.code == data.get("code")), IssuanceRefusedError)
            raise cls(
                str(data.get("message") or "the issuer refused"),
                field=data.get("field"),
                rule=data.get("rule"),
            )
        if not isinstance(payload, dict):
            raise UnavailableError("the issuer service answered garbage", field="issuer_socket")
        return payload

    def close(self) -> None:
        self._client.close()


class IssuerProcess(SocketServiceProcess):
    """A running issuer service subprocess (``python -m cyxwiz.issuer serve``); a context manager."""

    name = "issuer"

    def error(self, message: str) -> CyxwizError:
        return UnavailableError(message, field="issuer")

    def client(self) -> RemoteIssuer:
        return RemoteIssuer(socket_path=self.socket_path)


def start_issuer_service(
    *,
    ca_dir: Path,
    state_dir: Path,
    env: dict[str, str],
    lifetime_s: float | None = None,
    audit_key: Path | None = None,
) -> IssuerProcess:
    """Start ``python -m cyxwiz.issuer serve --ca-dir CA_DIR`` on ``state_dir/issuer.sock``; with
    ``audit_key`` it keeps its own audit log in ``state_dir/audit`` (every issuance, refusal, revocation)."""
    argv = [sys.executable, "-m", "cyxwiz.issuer", "serve", "--ca-dir", str(ca_dir)]
    if lifetime_s is not None:
        argv += ["--lifetime-s", str(lifetime_s)]
    if audit_key is not None:
        argv += ["--audit-dir", str(state_dir / "audit"), "--audit-key", str(audit_key)]
    socket_path = state_dir / "issuer.sock"
    return IssuerProcess(argv=argv, env=env, state_dir=state_dir, socket_path=socket_path).start()
