"""The control plane's verifier service binds a verdict only to the node the coordinator's own records
assign (F1): a lifecycle that names another wallet gets a ``fail``, never a ``pass``."""

from __future__ import annotations

from pathlib import Path

from cyxwiz.coordinator.store import CoordinatorStore
from cyxwiz.pki.certs import load_certificate
from cyxwiz.pki.devpki import build_dev_pki
from cyxwiz.pki.peerid import peer_id
from cyxwiz.verification.verifier import TrustStore
from tasks.coordinator_channel import SchedulerChannel
from tasks.verifier_service import assigned, verdict_of


def test_assigned_node_comes_from_the_coordinators_records(tmp_path: Path) -> None:
    pki = build_dev_pki(tmp_path / "pki", nodes=("node-1",))
    store = CoordinatorStore.from_url(f"sqlite:///{tmp_path / 'c.db'}")
    channel = SchedulerChannel(store=store, node_wallets={"node-1": "W1"}, crl=pki.crl)
    cert = load_certificate(pki.node_cert("node-1"))
    record = store.register_node(
        peer_id=peer_id(cert), subject=cert.subject.rfc4514_string(),
        cert_serial=format(cert.serial_number, "x"), hardware={}, certificate=cert,
    )  # fmt: skip
    store.heartbeat(record.node_id)
    job_id = channel.create_job(user="u", spec={"job_type": "model"}, duration_s=60)
    assert assigned(job_id, channel) is None  # not dispatched yet
    channel.assign(job_id)
    # The wallet follows the key that signed the job's proof (here configured by the name its
    # certificate carries); with no verified proof there is none to pay (issue 17, F1).
    trust = TrustStore.from_files(pki.bundle, crls=[pki.crl])  # a name counts from a certificate of the CA
    node = assigned(job_id, channel, trust, signer=peer_id(cert))
    assert node is not None and (node.node_id, node.peer_ids, node.wallet) == (
        record.node_id, {peer_id(cert)}, "W1",
    )  # fmt: skip
    unproven = assigned(job_id, channel, trust)
    assert unproven is not None and unproven.wallet is None
    assert assigned("job-unknown", channel) is None


def test_verdicts() -> None:
    passing = {"passed": True, "checks": [{"name": "signature", "passed": True}]}
    assert verdict_of(passing) == "pass"
    lied = {
        "passed": False,
        "checks": [{"name": "signature", "passed": True}, {"name": "replay", "passed": False}],
    }
    assert verdict_of(lied) == "fraud"  # a signed proof whose training does not reproduce
    crashed = {"passed": False, "checks": [{"name": "proof", "passed": False}]}
    assert verdict_of(crashed) == "fail"  # no proof (crash, timeout, cancel): never slashed
    forged = {
        "passed": False,
        "checks": [{"name": "signature", "passed": False}, {"name": "replay", "passed": False}],
    }
    assert verdict_of(forged) == "fail"  # not provably the node's own claim


def test_a_model_below_the_threshold_fails_the_job_but_is_no_fraud() -> None:
    # F1: a signed, replay-verified model that misses the user's target refunds the user; only a lie slashes.
    signed = {"name": "signature", "passed": True}
    short = {"name": "holdout", "passed": False, "details": {"rule": "threshold"}}
    assert verdict_of({"passed": False, "checks": [signed, short]}) == "fail"
    gap = {"name": "holdout", "passed": False, "details": {"rule": "gap"}}
    assert verdict_of({"passed": False, "checks": [signed, gap]}) == "fraud"  # claimed far above the holdout
    replay = {"name": "replay", "passed": False}
    assert verdict_of({"passed": False, "checks": [signed, short, replay]}) == "fraud"


def test_the_verifier_remembers_the_newest_wallet_statement(tmp_path: Path) -> None:
    """Issue 17 (F1): an older statement is a replay under the node id or under its signing PeerID, so a
    coordinator that moves the node's rows to another node id still gets it refused."""
    from tasks.payout_wallet import StatementMarks

    marks = StatementMarks.open(tmp_path / "verifier" / "marks.db")
    assert marks.observe(("node:n1", "peer:p1"), 10) is None
    assert marks.observe(("node:n1", "peer:p1"), 10) is None  # the same statement again
    assert marks.observe(("node:n2", "peer:p1"), 5) == 10  # re-keyed node id, same signer
    assert marks.observe(("node:n1", "peer:p2"), 7) == 10  # an older one under another key
    assert marks.observe(("node:n1", "peer:p2"), 20) is None  # a newer one (renewal): accepted
    assert StatementMarks.open(tmp_path / "verifier" / "marks.db").observe(("node:n1",), 15) == 20  # on disk
    assert (tmp_path / "verifier" / "marks.db").stat().st_mode & 0o777 == 0o600
