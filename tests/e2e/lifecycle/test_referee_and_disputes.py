"""Refereed delegation and the dispute window end to end on the embedded stack (issue 20 acceptance;
SPEC F1, F2, C2, H2, threat I).

One redundant job, two real node agents: node-1 honest, node-2 running a test-only flow (deployed by this
test alone) that forges the second half of its run with every hash, chain link and signature consistent.
The lifecycle dispatches the two shares to the two nodes, the verifier service bisects their commitment
chains to the first differing segment and replays it, the honest node is paid its share, the dishonest
node's escrow goes back to the user and its stake is slashed; every base unit is accounted for. Then a job
with a dispute window: its owner disputes while the release is held and the funds go to the dispute escrow.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.lifecycle_conftest import (
    audit_events,
    restore_control_config,
    set_control_config,
    tiny_job,
    verification_report,
)

pytestmark = [pytest.mark.slow, pytest.mark.prefect, pytest.mark.timeout(900)]

REFEREE_DEPLOYMENT = "sandboxed-train/referee-train"


def redundant_job(stack: Any) -> dict[str, Any]:
    spec = tiny_job(epochs=2)
    spec["verification"] = {"mode": "redundant"}
    funded: dict[str, Any] = stack.fund(spec)
    return funded


def holdings(stack: Any, peers: dict[str, str]) -> dict[str, int]:
    """Wallets plus the two nodes' stake accounts, on chain: what must add up before and after."""
    from cyxwiz.ledger.stake import stake_address
    from tasks import services

    ledger = services.ledger()
    payer = ledger._payer.pubkey()  # the stake accounts are seeded from the fee payer and the PeerID
    found = {k: v for k, v in stack.balances().items() if k in ("user", "node:node-1", "node:node-2")}
    for name, peer in peers.items():
        found[f"stake:{name}"] = ledger.chain.token_amount(stake_address(payer, peer)) or 0
    return found


def test_a_redundant_job_needs_two_distinct_nodes(stack: Any) -> None:
    """F1: with one eligible node (or both shares pinned to one) the spec is refused before any escrow."""
    from cyxwiz.errors import ValidationError
    from flows.job_lifecycle import job_lifecycle
    from tasks import services

    known = {r.job_id for r in services.ledger().list_escrows()}
    before = stack.balances()
    for pins in ({}, {"node": "node-1", "replica_node": "node-1"}):
        with pytest.raises(ValidationError) as caught:
            job_lifecycle(redundant_job(stack), **pins)
        assert (caught.value.field, caught.value.rule) == ("verification.mode", "F1")
        assert "two eligible nodes" in caught.value.message
    assert {r.job_id for r in services.ledger().list_escrows()} == known, "no escrow was created"
    assert stack.balances() == before


def test_the_referee_pays_the_honest_node_and_slashes_the_dishonest_one(stack: Any, tmp_path: Path) -> None:
    from cyxwiz.ledger.attestation import ReportAttestation
    from cyxwiz.pki.certs import load_certificate
    from cyxwiz.pki.peerid import peer_id
    from flows.job_lifecycle import job_lifecycle
    from infra.stack import deploy_one
    from tasks import services

    started = dt.datetime.now(dt.UTC)
    stack.start_agent("node-2")
    stack.wait_for_node("node-2")
    entrypoint = "tests/e2e/evil/evil_referee.py:sandboxed_train"
    deploy_one(stack.env, tmp_path, name="referee-train", entrypoint=entrypoint, pool="gpu")
    peers = {name: peer_id(load_certificate(stack.pki.node_cert(name))) for name in ("node-1", "node-2")}
    spec = redundant_job(stack)
    payment = spec["payment"]
    before = holdings(stack, peers)
    old = set_control_config(stack, train_deployment=REFEREE_DEPLOYMENT)
    try:
        summary = job_lifecycle(spec, node="node-1", replica_node="node-2")
    finally:
        restore_control_config(stack, old)
        stack.stop_agent("node-2")
    after = holdings(stack, peers)
    honest, dishonest = summary["nodes"]
    assert summary["mode"] == "redundant" and honest["job_id"] == spec["job_id"]
    assert dishonest["job_id"] == spec["replica_funding"]["job_id"]
    # Two distinct nodes, by PeerID, trained the two shares; both runs completed as far as Prefect knows.
    assert (honest["peer_id"], dishonest["peer_id"]) == (peers["node-1"], peers["node-2"])
    assert honest["node_run"]["state"] == dishonest["node_run"]["state"] == "COMPLETED"
    # The referee: first differing commitment found by bisection, one segment replayed, node-2 deviated.
    referee = honest["referee"]
    assert referee["compared"] and not referee["agreed"] and referee["passed"] is True
    assert referee["deviators"] == [peers["node-2"]] and referee["honest"] == [peers["node-1"]]
    assert referee["first_difference"] > 0 and referee["segment"] is not None and referee["probes"] >= 2
    assert dishonest["referee"]["passed"] is False
    checks = {c["name"]: c for c in verification_report(stack, dishonest["job_id"])["checks"]}
    for name in ("certificate", "signature", "identity", "binding", "artifacts", "pairing"):
        assert checks[name]["passed"] is True, checks[name]  # the forgery is internally consistent
    assert "replayed segment" in checks["referee"]["reason"]
    # Settlement: the honest share released, the deviator's refunded with a fraud verdict and slashed.
    assert honest["settlement"]["state"] == "released" and honest["verification"]["passed"] is True
    assert dishonest["settlement"]["state"] == "refunded" and dishonest["verification"]["passed"] is False
    fraud = ReportAttestation.parse(verification_report(stack, dishonest["job_id"])["attestation"])
    assert (fraud.verdict, fraud.node_peer_id) == ("fraud", peers["node-2"])
    share = dishonest["slash"]
    assert share is not None and share["slashed"] is True and share["peer_id"] == peers["node-2"]
    slashed = before["stake:node-2"] - after["stake:node-2"]
    assert slashed > 0 and honest["slash"] is None and after["stake:node-1"] == before["stake:node-1"]
    assert after["node:node-1"] - before["node:node-1"] == payment
    assert after["node:node-2"] == before["node:node-2"], "the deviator is paid nothing"
    assert before["user"] - after["user"] == payment - slashed, "user pays one share, gets the slash"
    assert sum(after.values()) == sum(before.values()), "supply conserved across wallets and stakes"
    for job_id in (honest["job_id"], dishonest["job_id"]):
        assert services.ledger().onchain_amount(job_id=job_id) == 0
    assert stack.coordinator.store.job(honest["job_id"]).status == "released"
    assert stack.coordinator.store.job(dishonest["job_id"]).status == "refunded"
    # H2: every step is audited: the second dispatch, both verdicts, the release, the refund, the slash.
    events = audit_events(stack, since=started)

    def logged(action: str, job_id: str) -> bool:
        return any(e.get("action") == action and job_id in str(e.get("resource")) for e in events)

    assert logged("job.dispatch-second", dishonest["job_id"])
    assert logged("job.verify", honest["job_id"]) and logged("job.verify", dishonest["job_id"])
    assert any(e.get("action") == "escrow.stake.slash" and e.get("outcome") == "success" for e in events)
    payments = [e for e in events if e.get("event_type") == "Payment" and e.get("outcome") == "success"]
    assert any(dishonest["job_id"] in str(e.get("resource")) for e in payments)
    assert any(honest["job_id"] in str(e.get("resource")) for e in payments)


def job_status(stack: Any, job_id: str) -> str | None:
    from cyxwiz.errors import NotFoundError

    try:
        return str(stack.coordinator.store.job(job_id).status)
    except NotFoundError:  # the lifecycle has not made the row yet
        return None


def test_a_dispute_in_the_window_moves_the_funds_to_the_dispute_escrow(stack: Any) -> None:
    """F1 (issue 20): a verified job whose spec asks for a dispute window is not paid at once; its owner
    disputes through the coordinator API (mTLS, their own certificate) while the release is held, and the
    escrow moves into the dispute escrow for the arbiter instead of paying the node."""
    import threading

    from cyxwiz.jobs.client import CoordinatorUserClient
    from cyxwiz.ledger.store import EscrowState
    from flows.job_lifecycle import job_lifecycle
    from tasks import services
    from tests.e2e.lifecycle_conftest import wait_until

    spec = tiny_job(epochs=2)
    spec["verification"] = {"dispute_window_s": 300}
    funded = stack.fund(spec)
    job_id = funded["job_id"]
    filed: dict[str, Any] = {}

    def dispute_when_held() -> None:
        try:
            held = wait_until(lambda: job_status(stack, job_id) == "held", timeout=400)
            if not held:
                return
            with CoordinatorUserClient.from_options(
                url=stack.coordinator.url, cert=stack.pki.user_cert, key=stack.pki.user_key,
                ca_bundle=stack.pki.bundle, crl=stack.pki.crl,
            ) as client:  # fmt: skip
                filed["answer"] = client.dispute(
                    job_id, kind="segment", segment_start=0, reason="the first segment does not reproduce"
                )
        except Exception as exc:  # reported by the assertions below, not lost with the thread
            filed["error"] = repr(exc)

    before = stack.balances()
    watcher = threading.Thread(target=dispute_when_held, daemon=True)
    watcher.start()
    summary = job_lifecycle(funded, node="node-1")
    watcher.join(timeout=30)
    after = stack.balances()
    assert "answer" in filed, filed.get("error")
    assert filed["answer"]["state"] == "disputed"
    assert summary["verification"]["passed"] is True
    assert summary["settlement"]["state"] == "disputed"
    record = services.ledger().status(job_id=job_id)
    assert record.state is EscrowState.DISPUTED and record.dispute_account
    assert services.ledger().onchain_amount(job_id=job_id) == spec["payment"], (
        "all of it held for the arbiter"
    )
    assert after["node"] == before["node"], "the node is not paid while disputed"
    assert before["user"] - after["user"] == spec["payment"]
    assert stack.coordinator.store.job(job_id).status == "disputed"
    actions = [e.get("action") for e in audit_events(stack) if job_id in str(e.get("resource"))]
    assert {"escrow.hold", "escrow.dispute-filed", "escrow.dispute"} <= set(actions)
    # The arbiter's flow replays the disputed segment from the node's signed, re-hashed checkpoints with
    # the sealed bound document: the honest node's segment reproduces, the dispute is rejected, it is paid.
    import os

    from flows.arbiter import resolve_dispute

    os.environ["CYXWIZ_ARBITER_PASSPHRASE"] = stack.ledger.arbiter_passphrase
    services.reset()
    try:
        decision = resolve_dispute(job_id)
    finally:
        os.environ.pop("CYXWIZ_ARBITER_PASSPHRASE", None)
        services.reset()
    assert decision["upheld"] is False and "reproduces bit for bit" in decision["reason"], decision
    assert services.ledger().status(job_id=job_id).state is EscrowState.RELEASED
    assert stack.balances()["node"] - before["node"] == spec["payment"]
    assert stack.coordinator.store.job(job_id).status == "released"
    actions = [e.get("action") for e in audit_events(stack) if job_id in str(e.get("resource"))]
    assert "escrow.arbiter.rejected" in actions
