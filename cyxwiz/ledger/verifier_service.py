"""The verifier service: its own process holding the verifier's escrow key and ``verifier`` certificate (F1).

It is the only holder of the verifier's share of the 2-of-3 escrow multisig (sealed in its own key file
under its own passphrase, ``CYXWIZ_VERIFIER_PASSPHRASE``) and of the Ed25519 key of a certificate of role
``verifier``. It listens on a Unix socket (mode 0600, loopback plumbing in the trusted zone) and answers:

``GET  /v1/pubkey``  its escrow-authority public key;
``POST /v1/verify``  run the job's verification (when the process was given a ``verify`` hook) and return
                     the report with a signed attestation of its verdict;
``POST /v1/cosign``  co-sign a settle message when :class:`~cyxwiz.ledger.cosign.VerifierPolicy` allows
                     it (a release only with a passing attestation for that job, node and escrow; no
                     refund or slash of a job whose verification passed); a refusal carries the precise
                     error;
``GET  /v1/verdicts/{job_id}``  the passing attestation this verifier recorded for the job, or null (the
                     sweep releases an expired escrow that passed instead of refunding it).

:class:`~cyxwiz.ledger.verifier_client.RemoteCosigner` is the control plane's client;
:func:`start_verifier_service` runs the process.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from solders.message import Message

from cyxwiz.errors import CyxwizError, LedgerError, ValidationError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.attestation import report_sha256, sign_attestation
from cyxwiz.ledger.cosign import CosignRequest, VerifierPolicy
from cyxwiz.service_process import SocketServiceProcess
from cyxwiz.unix_json_server import serve_unix

#: verify hook: the lifecycle's request body -> (the report as a dict, its verdict: pass, fail or fraud)
VerifyHook = Callable[[dict[str, Any]], tuple[dict[str, Any], str]]
MAX_BODY = 1 << 20


def canonical_sha256(value: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class VerifierService:
    """The verifier service's rules behind its socket (:meth:`handle`: one request, one answer)."""

    keypair: txbuild.Signer
    policy: VerifierPolicy
    signing_key: Any  # Ed25519PrivateKey of the verifier certificate
    certificate: Any  # x509.Certificate, role verifier
    verify: VerifyHook | None = None
    audit: Any = None
    #: One verification request at a time: a repeat waits for the first and then finds its answer.
    _serial: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def handle(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        try:
            if method == "GET" and path == "/v1/pubkey":
                return 200, {"pubkey": str(self.keypair.pubkey())}
            if method == "POST" and path == "/v1/cosign":
                request = CosignRequest.from_dict(body)
                attestation = self.policy.approve(request)
                self._audit(request, success=True, report=attestation.report_sha256 if attestation else None)
                signature = txbuild.sign_message(self.keypair, Message.from_bytes(request.message))
                return 200, {"signature": str(signature)}
            if method == "POST" and path == "/v1/verify":
                return 200, self._verify(body)
            if method == "GET" and path.startswith("/v1/verdicts/"):
                from cyxwiz.ledger.records import check_job_id

                book = self.policy.verdicts
                job_id = check_job_id(path.removeprefix("/v1/verdicts/"))
                return 200, {"attestation": None if book is None else book.passing(job_id)}
            return 404, {"error": {"code": "not-found", "message": f"no route {method} {path}"}}
        except CyxwizError as exc:
            if path == "/v1/cosign" and isinstance(body, dict):
                self._audit_refusal(body, exc)
            return exc.http_status, {"error": exc.to_dict()}

    def _verify(self, body: Any) -> dict[str, Any]:
        if self.verify is None:
            raise LedgerError("this verifier service was started without a verification hook", field="path")
        if not isinstance(body, dict):
            raise LedgerError("a verify request is a JSON object", field="body")
        bound = {k: body.get(k) for k in ("job_id", "node_peer_id", "node_wallet", "escrow")}
        if not all(isinstance(v, str) and v for v in bound.values()):
            raise LedgerError("job_id, node_peer_id, node_wallet and escrow are required", field="body")
        book, key = self.policy.verdicts, canonical_sha256(bound)
        with self._serial:
            given: dict[str, Any] | None = (
                None if book is None else book.answer(str(bound["job_id"]), request_sha256=key)
            )
            if given is not None:
                # Asked again (the answer was lost to a restart, the lifecycle retried): the verdict already
                # signed, audited and recorded, never a second one (issue 21, F2).
                return given
            answer = self._new_verdict(body, bound)
            if book is not None:
                book.record_answer(str(bound["job_id"]), request_sha256=key, answer=answer)
            return answer

    def _new_verdict(self, body: dict[str, Any], bound: dict[str, Any]) -> dict[str, Any]:
        assert self.verify is not None
        report, verdict = self.verify(body)
        if report.get("job_id") != bound["job_id"]:
            verdict = "fail"  # a report about another job never passes for this one
        digest = report_sha256(report)
        attestation = sign_attestation(
            key=self.signing_key,
            certificate=self.certificate,
            report_sha256=digest,
            verdict=verdict,  # type: ignore[arg-type]
            audit_leaf=self._audit_verdict(str(bound["job_id"]), verdict, digest),
            **bound,
        )
        if self.policy.verdicts is not None:  # on disk before it leaves: a pass is never refunded (F1)
            self.policy.verdicts.record(attestation)
        # its release's co-sign in this process then needs no second Ed25519 verify of what it signed
        self.policy.attestations.signed_here(attestation, self.signing_key)
        return {"report": report, "attestation": attestation.to_json()}

    def _audit_verdict(self, job_id: str, verdict: str, digest: str) -> str:
        """Record the verdict; its audit leaf hash goes into the attestation and the settlement memo."""
        if self.audit is None:
            return ""
        from cyxwiz.audit import events

        receipt = self.audit.record(
            events.payment(
                action="verification.verdict", job_id=job_id, amount_lamports=0, actor_id="verifier-service",
                success=verdict == "pass", reason=f"{verdict}: report sha256 {digest}",
            )
        )  # fmt: skip
        return str(getattr(receipt, "leaf_hash", "") or "")

    def _audit(self, request: CosignRequest, *, success: bool, report: str | None = None) -> None:
        if self.audit is None:
            return
        from cyxwiz.ledger.audit_bridge import record_payment

        record_payment(
            self.audit, action=f"cosign.{request.kind}", job_id=request.job_id, success=success, amount=0,
            reason=f"report {report}" if report else None,
        )  # fmt: skip

    def _audit_refusal(self, body: dict[str, Any], exc: CyxwizError) -> None:
        if self.audit is None:
            return
        from cyxwiz.ledger.audit_bridge import record_payment

        record_payment(
            self.audit, action=f"cosign.{body.get('kind')}", job_id=str(body.get("job_id"))[:64],
            success=False, amount=0, reason=f"refused: {exc.code}",
        )  # fmt: skip


def serve(
    app: VerifierService, *, socket_path: Path, ready_file: Path | None = None, mode: int = 0o600
) -> None:
    """Serve on a Unix socket only its owner can connect to (0600 in a 0700 directory); ``mode`` 0660
    lets the socket's group in too: in production the control worker's account is that group's only
    other member, so the coordinator's account cannot ask for a co-signature (issue 17; F1, I)."""
    if mode not in (0o600, 0o660):
        raise ValidationError("the verifier socket is 0600 or 0660", field="socket_mode", rule="F1")
    serve_unix(app, socket_path=socket_path, mode=mode, max_body=MAX_BODY, ready_file=ready_file)


class VerifierProcess(SocketServiceProcess):
    """A running verifier service subprocess (``python -m MODULE``); a context manager."""

    name = "verifier"

    def error(self, message: str) -> CyxwizError:
        return LedgerError(message)


def start_verifier_service(
    *,
    config_path: Path,
    state_dir: Path,
    env: dict[str, str],
    module: str = "cyxwiz.ledger.verifier_cli",
) -> VerifierProcess:
    """Start ``python -m MODULE serve --config CONFIG`` (the core one, or the control plane's with the
    verification hook) on ``state_dir/verifier.sock``."""
    from cyxwiz.ledger.config import LedgerConfig

    config = LedgerConfig.from_file(config_path)
    socket_path = config.verifier_socket_path() or state_dir / "verifier.sock"
    argv = [sys.executable, "-m", module, "serve", "--config", str(config_path)]
    return VerifierProcess(argv=argv, env=env, state_dir=state_dir, socket_path=socket_path).start()
