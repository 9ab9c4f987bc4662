"""Builders of the resource events (SPEC H2): jobs, nodes, payments, data and object access,
configuration changes, verification verdicts and the log's own integrity alerts.

Re-exported by :mod:`cyxwiz.audit.events`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import JsonValue

from cyxwiz.audit import catalogue as cat
from cyxwiz.audit.catalogue import ActorType, Outcome, SecurityEvent, clean, outcome_of


def job_submitted(
    *,
    user_id: str,
    job_id: str,
    success: bool = True,
    job_type: str | None = None,
    payment_lamports: int | None = None,
    config: Mapping[str, JsonValue] | None = None,
    reason: str | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A job submission, accepted or refused (H2: user, job config, payment)."""
    details = {
        "job_type": job_type,
        "payment_lamports": payment_lamports,
        "config": dict(config) if config is not None else None,
        "reason": reason,
    }
    return cat.JOB_SUBMITTED.emit(
        actor_id=user_id,
        actor_type=ActorType.USER,
        resource=f"job:{job_id}",
        outcome=outcome_of(success),
        ip_address=ip_address,
        at=at,
        details=clean(details),
    )


def node_registered(
    *,
    node_id: str,
    success: bool = True,
    peer_id: str | None = None,
    cert_subject: str | None = None,
    hardware: Mapping[str, JsonValue] | None = None,
    location: str | None = None,
    reason: str | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A node registered (H2: node id, hardware, location; A5: PeerID and cert subject)."""
    details = {
        "peer_id": peer_id,
        "cert_subject": cert_subject,
        "hardware": dict(hardware) if hardware is not None else None,
        "location": location,
        "reason": reason,
    }
    return cat.NODE_REGISTERED.emit(
        actor_id=node_id,
        actor_type=ActorType.NODE,
        resource=f"node:{node_id}",
        outcome=outcome_of(success),
        ip_address=ip_address,
        at=at,
        details=clean(details),
    )


def payment(
    *,
    action: str,
    job_id: str,
    amount_lamports: int,
    actor_id: str = "escrow",
    actor_type: ActorType | str = ActorType.SERVICE,
    success: bool = True,
    source: str | None = None,
    destination: str | None = None,
    tx_signature: str | None = None,
    reason: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A payment transaction (H2: amount, from, to, tx hash). ``action``: escrow.create/release/refund…"""
    details = {
        "amount_lamports": amount_lamports,
        "from": source,
        "to": destination,
        "tx_signature": tx_signature,
        "reason": reason,
    }
    return cat.PAYMENT.emit(
        actor_id=actor_id,
        actor_type=actor_type,
        resource=f"job:{job_id}",
        part=action,
        outcome=outcome_of(success),
        at=at,
        details=clean(details),
    )


def configuration_change(
    *,
    actor_id: str,
    setting: str,
    changes: Mapping[str, tuple[JsonValue, JsonValue]],
    actor_type: ActorType | str = ActorType.ADMIN,
    success: bool = True,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A configuration change (H2: changed fields, old/new values; secret fields are redacted)."""
    return cat.CONFIGURATION_CHANGE.emit(
        actor_id=actor_id,
        actor_type=actor_type,
        resource=f"config:{setting}",
        outcome=outcome_of(success),
        ip_address=ip_address,
        at=at,
        details={"changes": {name: {"old": old, "new": new} for name, (old, new) in changes.items()}},
    )


def data_access(
    *,
    actor_id: str,
    actor_type: ActorType | str,
    resource: str,
    action: str,
    success: bool = True,
    details: Mapping[str, JsonValue] | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """Access to job inputs/outputs or archived objects (DataAccess)."""
    return cat.DATA_ACCESS.emit(
        actor_id=actor_id,
        actor_type=actor_type,
        resource=resource,
        part=action,
        outcome=outcome_of(success),
        ip_address=ip_address,
        at=at,
        details=dict(details or {}),
    )


def integrity_alert(*, resource: str, reason: str, at: datetime | None = None) -> SecurityEvent:
    """The audit log itself found tampering (H4): records removed from the open day, say."""
    return cat.INTEGRITY_ALERT.emit(
        actor_id="audit-log",
        actor_type=ActorType.SYSTEM,
        resource=resource,
        outcome=Outcome.FAILURE,
        at=at,
        details={"reason": reason},
    )


def verification_outcome(
    *,
    job_id: str,
    passed: bool,
    failed_checks: Sequence[str] = (),
    checks: Sequence[str] = (),
    node_id: str | None = None,
    proof_sha256: str | None = None,
    actor_id: str = "verifier",
    at: datetime | None = None,
) -> SecurityEvent:
    """The verdict on a job's result (F1): pass or fail, with the checks that failed. Its leaf hash is
    what the escrow release/refund memo cites, so the payment and its reason are provably linked."""
    details = {
        "passed": passed,
        "failed_checks": list(failed_checks),
        "checks": list(checks) or None,
        "node_id": node_id,
        "proof_sha256": proof_sha256,
    }
    return cat.VERIFICATION_OUTCOME.emit(
        actor_id=actor_id,
        actor_type=ActorType.SERVICE,
        resource=f"job:{job_id}",
        outcome=outcome_of(passed),
        at=at,
        details=clean(details),
    )


def presigned_url_issued(
    *,
    actor_id: str,
    actor_type: ActorType | str,
    key: str,
    method: str,
    expires_in_s: int | None = None,
    job_id: str | None = None,
    sha256: str | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A presigned object URL was handed out (the URL itself, a bearer credential, is never logged)."""
    return cat.PRESIGNED_URL_ISSUED.emit(
        actor_id=actor_id,
        actor_type=actor_type,
        resource=f"object:{key}",
        outcome=Outcome.SUCCESS,
        ip_address=ip_address,
        at=at,
        details=clean({"method": method, "expires_in_s": expires_in_s, "job_id": job_id, "sha256": sha256}),
    )


def presigned_url_used(
    *,
    key: str,
    method: str,
    success: bool,
    status: int | None = None,
    reason: str | None = None,
    ip_address: str | None = None,
    at: datetime | None = None,
) -> SecurityEvent:
    """A presigned URL was presented to the object endpoint: served, or refused (expired, tampered)."""
    return cat.PRESIGNED_URL_USED.emit(
        actor_id=ip_address or "presigned-url",
        actor_type=ActorType.ANONYMOUS,
        resource=f"object:{key or '-'}",
        outcome=Outcome.SUCCESS if success else Outcome.DENIED,
        ip_address=ip_address,
        at=at,
        details=clean({"method": method, "status": status, "reason": reason}),
    )
