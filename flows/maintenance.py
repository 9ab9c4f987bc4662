"""Scheduled maintenance flows (deployments with schedules in prefect.yaml; ARCHITECTURE "Scheduled flows").

Each is idempotent: running twice in a row changes nothing the second time, so schedules may overlap
and a retry is always safe.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import services


@flow(name="crl-refresh")
def crl_refresh(days: int = 7, refresh_before_hours: int = 48) -> dict[str, Any]:
    """Re-sign the CRL before its nextUpdate so gateways and nodes never hold a stale one (SPEC A6).

    The issuer service signs it and writes the CRL file (the control plane holds no CA key, issue 17);
    gateways watch that file and hot-reload it: no restart anywhere.
    """
    from cryptography import x509

    from cyxwiz.errors import ConfigError
    from cyxwiz.issuer.service import RemoteIssuer
    from cyxwiz.pki.certs import load_crls

    cfg = services.config()
    crl_path = cfg.pki_root / "ca" / "ca-crl.pem"
    now = dt.datetime.now(dt.UTC)
    current = load_crls(crl_path) if crl_path.exists() else []
    due = not current or any(
        c.next_update_utc is None or c.next_update_utc - now < dt.timedelta(hours=refresh_before_hours)
        for c in current
    )
    if not due:
        return {"refreshed": False, "next_update": str(current[0].next_update_utc)}
    if cfg.issuer_socket is None:
        raise ConfigError(
            "the CRL is due and no issuer service is named to sign it", field="issuer_socket", rule="A6"
        )
    issuer = RemoteIssuer(socket_path=cfg.issuer_socket)
    try:
        crl = x509.load_pem_x509_crl(issuer.crl(days=days))
    finally:
        issuer.close()
    get_run_logger().info("CRL re-signed by the issuer service; nextUpdate %s", crl.next_update_utc)
    return {"refreshed": True, "next_update": str(crl.next_update_utc)}


@flow(name="escrow-sweep")
def escrow_sweep() -> dict[str, Any]:
    """Nothing stuck, nothing paid twice (F2): finish in-flight moves on chain, send again releases left
    ``settling``, refund every locked escrow past its deadline whose lifecycle run is terminal or gone (at
    once when the run is dead), and close the jobs a dead lifecycle left open (tasks.recover). First the
    dispute windows a dead lifecycle left (issue 20): release the undisputed closed ones, move the disputed
    ones into their dispute escrow; an open window keeps its escrow locked."""
    from tasks.holds import settle_holds
    from tasks.recover import sweep_once
    from tasks.sweep import reap_lifecycles

    held = settle_holds()
    swept = sweep_once()
    # Lifecycles killed after they had closed their job: no escrow rule asks about them (issue 21).
    crashed = reap_lifecycles()
    report = swept["report"]
    rows = held + report.rows() + [{"job_id": f["job_id"], "state": f["status"], "step": "job closed"}
                                   for f in swept["finished"]]  # fmt: skip
    if rows:
        create_table_artifact(key="escrow-sweep", table=rows, description="Escrows settled by the sweep")
    for job_id, why in report.alerts.items():
        get_run_logger().warning("escrow of %s still unsettled: %s", job_id, why)
    return {
        "reconciled": len(report.reconciled),
        "released": [r.job_id for r in report.released],
        "refunded": [r.job_id for r in report.refunded],
        "alerts": report.alerts,
        "closed": [f["job_id"] for f in swept["finished"]],
        "crashed": crashed,
        "escrows": rows,
    }


@flow(name="audit-maintenance")
def audit_maintenance() -> dict[str, Any]:
    """Rotate, seal (signed digest), gzip, archive and prune the audit log, then verify the chain (H3, H4)."""
    from cyxwiz.audit.maintenance import run_maintenance
    from cyxwiz.audit.verify import verify_log

    log = services.audit()
    report = run_maintenance(log)
    log.checkpoint()  # the verdict covers everything written so far
    verdict = verify_log(services.config().audit_dir, public_key=services.audit_public_key())
    summary = {
        "head": str(report.head),
        "sealed": [str(d) for d in report.sealed],
        "archived": [str(d) for d in report.archived],
        "pruned": [str(d) for d in report.pruned],
        "chain_ok": verdict.ok,
        "first_problem": str(verdict.first) if verdict.first else None,
    }
    if not verdict.ok:
        create_markdown_artifact(
            key="audit-chain-broken",
            markdown=f"# Audit chain broken\n\nFirst problem: `{verdict.first}`\n",
            description="The audit log failed verification",
        )
        raise RuntimeError(f"audit chain broken: {verdict.first}")
    return summary


@flow(name="audit-anchor")
def audit_anchor() -> dict[str, Any]:
    """Put the latest signed audit checkpoint's root on the ledger as a memo from the dedicated anchoring
    wallet (hourly; H4). Idempotent: a checkpoint already anchored is not sent again."""
    from cyxwiz.audit.anchor import anchor_latest, anchored_count

    log = services.audit()
    log.checkpoint()  # what is written now is what gets anchored
    chain, payer = services.anchor_wallet()
    try:
        anchor = anchor_latest(
            services.config().audit_dir, chain=chain, payer=payer, public_key=services.audit_public_key()
        )
    finally:
        chain.close()
    if anchor is not None:
        get_run_logger().info(
            "anchored audit checkpoint %s (size %s) in %s", anchor.root.hex(), anchor.size, anchor.signature
        )
    return {
        "anchored": anchor is not None,
        "size": anchor.size if anchor else None,
        "signature": anchor.signature if anchor else None,
        "anchors": anchored_count(services.config().audit_dir),
    }


@flow(name="signing-key-rotation")
def signing_key_rotation(force: bool = False) -> dict[str, Any]:
    """Start a new JWT signing key every rotation period (30 d); drop retired keys once unusable (B4)."""
    from cyxwiz.tokens.keyring import DirKeyRingStore

    cfg = services.config()
    if cfg.keyring_dir is None:
        return {"rotated": False, "reason": "no keyring_dir configured"}
    ring_store = DirKeyRingStore(cfg.keyring_dir)
    ring = ring_store.load()
    now = dt.datetime.now(dt.UTC)
    rotated = None
    if force or ring.rotation_due(now=now):
        rotated = ring.rotate(now=now).kid
    pruned = ring.prune(now=now)
    if rotated or pruned:
        ring_store.save(ring)
        from cyxwiz.audit import events as ev

        services.audit().record(ev.key_rotation(kind="token-signing-key", new_id=rotated, retired=pruned))
    return {"rotated": rotated, "pruned": pruned}


@flow(name="certificate-expiry-watch")
def certificate_expiry_watch(warn_days: int = 30) -> dict[str, Any]:
    """Warn about certificates expiring within ``warn_days`` (default 30) across the PKI directory (A4)."""
    from cyxwiz.pki.certs import common_name, load_certificates

    cfg = services.config()
    now = dt.datetime.now(dt.UTC)
    rows = []
    for path in sorted(cfg.pki_root.rglob("*cert*.pem")):
        for cert in load_certificates(path):
            left = cert.not_valid_after_utc - now
            if left < dt.timedelta(days=warn_days):
                rows.append(
                    {"file": str(path.relative_to(cfg.pki_root)), "subject": common_name(cert) or "",
                     "expires": cert.not_valid_after_utc.isoformat(), "days_left": left.days}
                )  # fmt: skip
    logger = get_run_logger()
    for row in rows:
        logger.warning("certificate %s expires in %s days", row["subject"], row["days_left"])
    if rows:
        create_table_artifact(key="certificates-expiring", table=rows, description="Certificates to renew")
    return {"expiring": rows}
