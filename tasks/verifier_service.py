"""The control plane's verifier service process: the core service plus the job-verification hook.

``python -m tasks.verifier_service serve --config LEDGER.json --socket PATH`` (the embedded stack starts
it). The service runs the verification itself (the same checks as :func:`tasks.services.verify_job`) and
signs its own verdict, so the lifecycle process can neither forge a passing report nor release without
one (F1, threat I). It holds the verifier's escrow key and ``verifier`` certificate, not the
control plane's ledger key.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cyxwiz._cli import new_app
from tasks.payout_wallet import StatementMarks, wallet_of_job

app = new_app(help="The verifier service with the control plane's job verification.")

#: Checks whose failure, once the node's signature verified, proves the node lied (stake is slashed).
FRAUD_CHECKS = frozenset(
    {"commitments", "endpoints", "claimed-metric", "holdout", "replay", "training", "referee"}
)


def verdict_of(report: dict[str, Any]) -> str:
    """``pass``; ``fraud`` when a signed proof's training claims fail; else ``fail`` (crash, timeout)."""
    listed = report.get("checks", [])
    checks = {c["name"]: bool(c["passed"]) for c in listed}
    if report.get("passed") and checks and all(checks.values()):
        return "pass"
    # A model below the user's threshold is a failed job, not a lie: only the other refusals prove one.
    lies = [c for c in listed if not c["passed"] and c["name"] in FRAUD_CHECKS and not _quality_only(c)]
    if checks.get("signature") and lies:
        return "fraud"
    return "fail"


def _quality_only(check: dict[str, Any]) -> bool:
    return check["name"] == "holdout" and (check.get("details") or {}).get("rule") == "threshold"


#: One verification at a time in this process. Re-training (the seeded initialisation, replayed segments,
#: the referee) seeds and draws from torch's process-wide generator: two jobs verified at once on the
#: service's request threads interleave their draws, and an honest node's step-0 checkpoint stops
#: matching its seed — a "fraud" verdict that slashes it (seen with four jobs settling together).
_TRAINING = threading.Lock()


def verify_hook(body: dict[str, Any], *, marks: StatementMarks | None = None) -> tuple[dict[str, Any], str]:
    """Verify the job and give the verdict the service signs. ``marks``: the service's own memory of
    the newest payout wallet statement per node (an older one put back is a replay, issue 17)."""
    from tasks import services
    from tasks.control import JobRequest
    from tasks.node_stake import signed_later_peers

    request = JobRequest(**body["request"])
    dispatched = body["dispatched"]
    assignment = dispatched.get("assignment") or {}
    with _TRAINING:
        report = services.verify_job(request=request, dispatched=dispatched)
        if body.get("partner"):  # redundant mode: the referee against the other node of the pair (issue 20)
            import dataclasses

            from tasks.referee import referee_checks

            extra = referee_checks(request=request, dispatched=dispatched, partner=body["partner"])
            report = dataclasses.replace(report, checks=(*report.checks, *extra))
    # "public-derived" tells the reader the verdict rests on the replay, not on holdout secrecy (F1).
    report.summary["holdout"] = dispatched.get("holdout_source", "public-derived")
    as_dict: dict[str, Any] = json.loads(report.to_json())  # non-finite floats as text: canonical JSON
    bound = (body.get("node_peer_id"), body.get("node_wallet"), body.get("job_id"))
    if bound != (assignment.get("peer_id"), assignment.get("wallet"), request.job_id):
        # the attestation would name another node or job than the one verified
        return _with_check(as_dict, "binding", False, "the request names another node or job"), "fail"
    signer = proof_signer(request.job_id, as_dict)
    if signer is not None and marks is not None:
        marks.note_signer(request.job_id, signer)
    if signer is not None and signer not in signed_later_peers(str(bound[0])):
        # The attestation names the assigned key (a slash takes its stake): it must be the key that
        # signed, or one whose signed renewal links lead to it — never a key only the coordinator ties.
        why = f"the proof is signed by {signer}, not by the assigned key {bound[0]} nor one it renewed into"
        return _with_check(as_dict, "proof-key", False, why), "fail"
    node = assigned(request.job_id, marks=marks, signer=signer)
    if node is None or bound[0] not in node.peer_ids:
        why = "the coordinator's records assign the job to another node"  # never a pass
        return _with_check(as_dict, "binding", False, why), "fail"
    # The wallet is the one the key that signed the proof stated (or the operator's config for that key),
    # never a database row, nor a statement of a key the coordinator lists beside it (issue 17; F1, I).
    paid = bound[1] == node.wallet
    why = node.wallet_reason
    if not paid:
        why = f"the release would pay {bound[1]}, not the node's wallet {node.wallet} ({why})"
    as_dict = _with_check(as_dict, "payout-wallet", paid, why)
    return as_dict, verdict_of(as_dict)


def _with_check(report: dict[str, Any], name: str, passed: bool, reason: str) -> dict[str, Any]:
    """``report`` with one more check (a failed one fails the report)."""
    checks = [*report.get("checks", []), {"name": name, "passed": passed, "reason": reason, "details": {}}]
    return {**report, "checks": checks, "passed": bool(report.get("passed")) and passed}


@dataclass(frozen=True)
class AssignedNode:
    """The node the coordinator's records assign a job to: every PeerID it held (its certificates across
    renewals: a job dispatched before a renewal is still this node's) and its payout wallet."""

    node_id: str
    peer_ids: frozenset[str]
    #: What a release may pay: the node's signed statement, else the operator's config (tasks.payout_wallet).
    wallet: str | None
    wallet_reason: str = ""


def proof_signer(job_id: str, report: dict[str, Any], channel: Any = None) -> str | None:
    """The PeerID whose key signed the completion proof this report judged (its SHA-256 is the report's),
    read from the coordinator's job record and checked here: an Ed25519 PeerID is its public key, so no
    coordinator row decides whose key it is. None: no such proof (none submitted, another one, forged)."""
    from cyxwiz.errors import CyxwizError
    from cyxwiz.pki.peerid import public_key_from_peer_id
    from cyxwiz.verification.proof import SignedProof, verify_proof_signature
    from tasks import services

    channel = channel or services.control_channel()
    try:
        doc = channel.job(job_id).get("proof")
        signed = SignedProof.from_json(json.dumps(doc)) if doc else None
        if signed is None or not report.get("proof_sha256") or signed.sha256() != report["proof_sha256"]:
            return None
        peer = signed.proof.node_peer_id
        verify_proof_signature(signed, public_key_from_peer_id(peer))
    except (CyxwizError, ValueError):
        return None
    return peer


def assigned(
    job_id: str,
    channel: Any = None,
    trust: Any = None,
    marks: StatementMarks | None = None,
    *,
    signer: str | None = None,
) -> AssignedNode | None:
    """The assigned node from the coordinator's own records, or None when there is none (F1, A7).
    ``trust``: the CA bundle and CRLs node certificates are checked against (default: the control plane's);
    ``signer``: the PeerID that signed the job's completion proof (:func:`proof_signer`), the only key
    whose wallet statement (or whose renewals' statements) the node may be paid by; None: no wallet."""
    from cyxwiz.errors import CyxwizError
    from tasks import services
    from tasks.coordinator_channel import SchedulerChannel
    from tasks.payout_wallet import payout_wallet

    channel = channel or SchedulerChannel.from_config(services.config())
    try:
        node_id = channel.job(job_id)["node_id"]
        record = channel.store.node(node_id)
        peers = {
            *channel.store.peer_ids_of(node_id),
            *(c.peer_id for c in channel.node_certificates(node_id)),
        }
        paid = payout_wallet(
            channel, record, signer=signer,
            trust=(lambda: trust) if trust is not None else lambda: services._node_trust(services.config()),
            marks=marks,
        )  # fmt: skip
        return AssignedNode(
            node_id=node_id, peer_ids=frozenset(peers), wallet=paid.wallet, wallet_reason=paid.reason
        )
    except (CyxwizError, KeyError, TypeError):
        return None


@app.callback()
def _group() -> None:
    """The verifier service with the control plane's job verification."""


@app.command("serve")
def serve_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Ledger config JSON.")],
    socket: Annotated[Path | None, typer.Option("--socket", help="Unix socket path.")] = None,
    ready_file: Annotated[Path | None, typer.Option("--ready-file", help="Written once listening.")] = None,
    socket_mode: Annotated[
        str, typer.Option("--socket-mode", help="600 (owner only) or 660 (its group: the control worker).")
    ] = "600",
) -> None:
    """Serve verification and co-signatures on a 0600 (or 0660) Unix socket until interrupted."""
    from cyxwiz.errors import ConfigError
    from cyxwiz.ledger.verifier_cli import run
    from tasks import services

    if socket_mode not in ("600", "660"):
        raise ConfigError("must be 600 or 660", field="socket_mode", rule="F1")
    marks = StatementMarks.open(_state_dir(config, socket) / "verifier-wallet-marks.db")
    hook = functools.partial(verify_hook, marks=marks)
    run(config, socket, ready_file, verify=hook, audit=services.audit(), socket_mode=int(socket_mode, 8),
        **money_rules(marks))  # fmt: skip


def money_rules(marks: StatementMarks) -> dict[str, Any]:
    """What the control plane gives the verifier's co-signing policy (issue 17; F1, A7): who a move may
    pay or take from follows the keys that signed — the proofs judged here (``marks``) and the signed
    renewal links — never the coordinator's node → certificates records alone.

    * ``payout_wallet``: an arbiter's "release to the node" pays the wallet of the key whose proof was
      judged for the job;
    * ``proof_key``: an upheld dispute slashes that key's node's stake;
    * ``node_peers``: a slash takes the stake of the attested key or of a key that renewed into it (by
      its own signed link: renewing escapes no slash; a link the fraudster's key signs names nobody);
    * ``later_peers``: a job under a key the stake's key renewed into keeps the stake locked.
    """
    from tasks.node_stake import signed_earlier_peers, signed_later_peers

    return {
        "payout_wallet": functools.partial(wallet_of_job, marks=marks),
        "proof_key": marks.signer,
        "node_peers": signed_earlier_peers,
        "later_peers": signed_later_peers,
    }


def _state_dir(config: Path, socket: Path | None) -> Path:
    """The verifier's own directory: where its verdict book is (``verifier_db``), else its socket's."""
    from cyxwiz.errors import ConfigError
    from cyxwiz.ledger.config import LedgerConfig

    ledger = LedgerConfig.from_file(config)
    own = ledger._path(ledger.verifier_db) or socket or ledger.verifier_socket_path()
    if own is None:
        raise ConfigError("the ledger config names no verifier_db or verifier_socket", field="verifier_db")
    return own.parent


if __name__ == "__main__":
    app(prog_name="cyxwiz-verifier")
