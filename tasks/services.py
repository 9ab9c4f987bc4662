"""The control plane's parts, typed, opened once each: :class:`ControlPlane` (SPEC D2, F1, H3).

A :class:`ControlPlane` is a :class:`~tasks.config.ControlPlaneConfig` plus the secrets that open its parts
(ledger passphrase, store master key), held in the object and handed to each part explicitly.
:meth:`ControlPlane.load` takes the configuration from the ``ControlPlaneBlock`` named by
``CYXWIZ_CONTROL_PLANE_BLOCK`` (the prefect-aws idiom, ``Block.load``; what ``make demo`` saves), else from
the ``CYXWIZ_CONTROL_PLANE`` file; the secrets always come from this process's environment
(``*_PASSPHRASE[_FILE]``, ``*_MASTER_KEY[_FILE]``, systemd credentials), never from a Prefect block: every
API client can read a block's secrets (issue 17). Tasks use the
process's plane through the accessors below (:func:`ledger`, :func:`audit`, ...); a caller with its own
parts passes them in with :func:`use` (tests, the embedded stack), :func:`reset` forgets them.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import tempfile
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyxwiz.errors import ConfigError, VerificationError
from tasks.config import ENV_VAR, ControlPlaneConfig, check_trusted_paths

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from solders.keypair import Keypair

    from cyxwiz.audit import AuditLog
    from cyxwiz.ledger.ledger import EscrowLedger
    from cyxwiz.ledger.rpc import RpcChain
    from cyxwiz.storage.base import BaseObjectStore
    from cyxwiz.verification.report import VerificationReport
    from cyxwiz.verification.verifier import TrustStore
    from tasks.channel import ControlChannel
    from tasks.control import JobRequest

BLOCK_ENV = "CYXWIZ_CONTROL_PLANE_BLOCK"
LEDGER_PASSPHRASE_ENV = "CYXWIZ_LEDGER_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


class ControlPlane:
    """The trusted zone's parts. Each opens on first use (a CRL refresh never unseals a ledger key)."""

    def __init__(self, *, config: ControlPlaneConfig, environ: Mapping[str, str]) -> None:
        self.config = config
        #: The settings the parts open with, secrets included (never logged, never exported).
        self._environ = dict(environ)

    def __repr__(self) -> str:
        return f"ControlPlane(home={str(self.config.home)!r})"

    @classmethod
    def load(cls, block: str | None = None, *, environ: Mapping[str, str] | None = None) -> ControlPlane:
        """``ControlPlaneBlock.load(block or $CYXWIZ_CONTROL_PLANE_BLOCK)``; with neither, the
        ``CYXWIZ_CONTROL_PLANE`` file. Secrets come from the environment either way."""
        env = dict(os.environ if environ is None else environ)
        name = block or env.get(BLOCK_ENV)
        if not name:
            path = env.get(ENV_VAR)
            if not path:
                raise ConfigError(f"set {BLOCK_ENV} or {ENV_VAR}", field=ENV_VAR)
            return cls(config=ControlPlaneConfig.from_file(Path(path)), environ=env)
        from blocks.control_plane import load_control_plane

        config = ControlPlaneConfig(**load_control_plane(name))
        check_trusted_paths(config, source=f"control-plane block {name!r}")
        return cls(config=config, environ=env)

    def setting(self, name: str) -> str | None:
        return self._environ.get(name) or None

    def ledger_passphrase(self) -> bytes | None:
        """``CYXWIZ_LEDGER_PASSPHRASE``, else the file ``..._FILE`` names (a systemd credential)."""
        from cyxwiz.ledger.keystore import passphrase_setting

        return passphrase_setting(LEDGER_PASSPHRASE_ENV, environ=self._environ)

    @functools.cached_property
    def store(self) -> BaseObjectStore:
        from tasks.control import open_store

        return open_store(self.config, environ=self._environ)

    @functools.cached_property
    def audit(self) -> AuditLog:
        from cyxwiz.audit import AuditLog, ObjectStoreArchive
        from cyxwiz.storage.config import open_store

        # Closed days are sealed with a signed digest (CYXWIZ_AUDIT_SIGNING_KEY) and archived, encrypted
        # and verified after upload, to the store the control plane is configured with: S3 when
        # CYXWIZ_STORE_URL or CYXWIZ_S3_BUCKET says so, else the local store root (H3).
        env = {**self._environ, "CYXWIZ_AUDIT_DIR": str(self.config.audit_dir)}
        archive_store = open_store(
            environ={"CYXWIZ_STORE_ROOT": str(self.config.store_root), **self._environ}
        )
        return AuditLog.from_env(env, archive=ObjectStoreArchive(store=archive_store, encrypt=True))

    @functools.cached_property
    def ledger(self) -> EscrowLedger:
        from cyxwiz.ledger.config import LedgerConfig, open_ledger

        return open_ledger(
            LedgerConfig.from_file(self.config.ledger_config),
            passphrase=self.ledger_passphrase(),
            audit=self.audit,
        )

    @functools.cached_property
    def channel(self) -> ControlChannel:
        from tasks.coordinator_channel import SchedulerChannel

        return SchedulerChannel.from_config(self.config)


#: This process's plane, once loaded or passed in (one slot: no module-level rebinding).
_slot: dict[str, ControlPlane] = {}
_lock = threading.Lock()


def current() -> ControlPlane:
    """This process's plane: the one passed in with :func:`use`, else :meth:`ControlPlane.load`."""
    with _lock:
        if "plane" not in _slot:
            _slot["plane"] = ControlPlane.load()
        return _slot["plane"]


def use(plane: ControlPlane | None) -> None:
    """Make ``plane`` this process's parts (None: load again on next use)."""
    with _lock:
        _slot.pop("plane", None)
        if plane is not None:
            _slot["plane"] = plane


def reset() -> None:
    """Forget the opened parts (after the control-plane config changed: tests, a new demo run)."""
    use(None)


def config() -> ControlPlaneConfig:
    return current().config


def audit() -> AuditLog:
    return current().audit


def ledger() -> EscrowLedger:
    return current().ledger


def control_channel() -> ControlChannel:
    return current().channel


def store() -> BaseObjectStore:
    return current().store


def audit_public_key() -> Ed25519PublicKey:
    """The pinned key audit verification trusts: ``CYXWIZ_AUDIT_PUBLIC_KEY`` (a PEM file), else the public
    half of the configured audit signing key; never a key found inside the log (H4)."""
    from cyxwiz.audit.digest import load_public_key

    pinned = current().setting("CYXWIZ_AUDIT_PUBLIC_KEY")
    if pinned:
        return load_public_key(Path(pinned))
    return audit().signing_key.public_key()


def anchor_wallet() -> tuple[RpcChain, Keypair]:
    """(ledger chain client, the dedicated low-value anchoring wallet) for the ``audit-anchor`` flow:
    the sealed key in ``CYXWIZ_AUDIT_ANCHOR_KEY`` (opened with the plane's ledger passphrase), the RPC
    URL of the ledger config. The wallet holds fee money only; it never touches escrow (H4)."""
    from cyxwiz.ledger.config import LedgerConfig
    from cyxwiz.ledger.keystore import load_keypair
    from cyxwiz.ledger.rpc import RpcChain

    plane = current()
    path = plane.setting("CYXWIZ_AUDIT_ANCHOR_KEY")
    if not path:
        raise ConfigError("no anchoring wallet configured", field="CYXWIZ_AUDIT_ANCHOR_KEY", rule="H4")
    secret = plane.ledger_passphrase()
    if not secret:
        raise ConfigError("no passphrase for the ledger key files", field=LEDGER_PASSPHRASE_ENV, rule="D2")
    payer = load_keypair(Path(path), passphrase=secret)
    return RpcChain(url=LedgerConfig.from_file(plane.config.ledger_config).rpc_url), payer


def audit_verdict(report: dict[str, Any], *, node_id: str | None = None) -> dict[str, Any]:
    """Record the verification verdict (H2/F1) and return where it landed: ``event_id``, ``seq`` and
    ``leaf_hash`` (the leaf the escrow release/refund memo cites; ``cyxwiz audit prove EVENT_ID``)."""
    from cyxwiz.audit import events as ev

    checks = report.get("checks", [])
    receipt = audit().record(
        ev.verification_outcome(
            job_id=str(report["job_id"]),
            passed=bool(report["passed"]),
            failed_checks=[f"{c['name']}: {c.get('reason', '')}"[:300] for c in checks if not c["passed"]],
            checks=[str(c["name"]) for c in checks],
            node_id=node_id,
            proof_sha256=report.get("proof_sha256"),
        )
    )
    return {"event_id": receipt.event_id, "seq": receipt.seq, "leaf_hash": receipt.leaf_hash}


def require_stake(peer_id: str | None) -> None:
    """Refuse dispatch to a node whose stake is below the ledger config's minimum (F1)."""
    from cyxwiz.errors import ValidationError
    from cyxwiz.ledger.config import LedgerConfig

    ledger_config = LedgerConfig.from_file(config().ledger_config)
    if ledger_config.minimum_stake <= 0:
        return
    if not peer_id:
        raise ValidationError("the assignment names no node PeerID", field="peer_id", rule="F1")
    # The node's stake under any PeerID the coordinator links to it: a renewal changes the PeerID (A7).
    from tasks.node_stake import stake_ledger

    stake_ledger(policy=ledger_config.stake_policy()).require(peer_id=peer_id)


def staked_peers(peer_ids: Collection[str]) -> set[str]:
    """Which of ``peer_ids`` (their nodes, under any linked PeerID) hold the ledger config's minimum stake:
    dispatch chooses only among these (F1). All of them when no minimum is set."""
    from cyxwiz.ledger.config import LedgerConfig
    from cyxwiz.ledger.stake import StakeTooLowError

    ledger_config = LedgerConfig.from_file(config().ledger_config)
    if ledger_config.minimum_stake <= 0:
        return set(peer_ids)
    from tasks.node_stake import stake_ledger

    stakes = stake_ledger(policy=ledger_config.stake_policy())
    holding = set()
    for peer_id in peer_ids:
        try:
            stakes.require(peer_id=peer_id)
        except StakeTooLowError:
            continue
        holding.add(peer_id)
    return holding


def attested_verification(
    *, request: JobRequest, dispatched: dict[str, Any], escrow: str, partner: dict[str, Any] | None = None
) -> tuple[VerificationReport, str]:
    """The verifier service verifies the job and signs its verdict; returns the report and attestation.

    The report is recomputed and signed in the verifier's own process (F1): the lifecycle only carries
    the attestation on to :meth:`EscrowLedger.release`, which refuses anything but a passing one.
    """
    from cyxwiz.ledger.config import LedgerConfig
    from cyxwiz.ledger.verifier_client import RemoteCosigner
    from cyxwiz.retry import retrying
    from cyxwiz.verification.report import Check, VerificationReport

    ledger_config = LedgerConfig.from_file(config().ledger_config)
    socket_path = ledger_config.verifier_socket_path()
    if socket_path is None:
        raise VerificationError("the ledger config names no verifier service", field="verifier_socket")
    assignment = dispatched["assignment"]
    body = {
        "job_id": request.job_id,
        "node_peer_id": assignment.get("peer_id"),
        "node_wallet": assignment["wallet"],
        "escrow": escrow,
        "request": request.to_dict(),
        "dispatched": dispatched,
        # Redundant mode: the other node's share ({request, dispatched}); the verifier referees.
        "partner": partner,
    }
    client = RemoteCosigner(socket_path=socket_path)
    try:
        # Across a restart of the verifier service (issue 21): it answers a repeated request for the job
        # with the verdict it already gave, so asking again after a lost answer is safe (F2).
        answer = retrying(lambda: client.verify(body), what=f"verification of {request.job_id}")
    finally:
        client.close()
    data = answer["report"]
    report = VerificationReport(
        job_id=data["job_id"],
        checks=tuple(Check(**check) for check in data["checks"]),
        proof_sha256=data.get("proof_sha256"),
        summary=data.get("summary") or {},
    )
    return report, str(answer["attestation"])


def refund_if_locked(job_id: str | None, *, reason: str) -> None:
    if not job_id:
        return
    from cyxwiz.errors import NotFoundError
    from cyxwiz.ledger.store import EscrowState

    try:
        record = ledger().status(job_id=job_id)
    except NotFoundError:
        return
    if record.state in (EscrowState.LOCKED,):
        ledger().refund(job_id=job_id, reason=reason)


def verify_job(*, request: JobRequest, dispatched: dict[str, Any]) -> VerificationReport:
    """Fetch the proof the node submitted and its outputs from the archive, then run every check."""
    from cyxwiz.storage import layout
    from cyxwiz.training.spec import parse_training_job
    from cyxwiz.verification.proof import SignedProof
    from cyxwiz.verification.report import Check, VerificationReport
    from cyxwiz.verification.verifier import Expectations, JobData
    from cyxwiz.verification.verifier import verify_job as run_checks

    cfg = config()
    record = control_channel().job(request.job_id)
    proof_doc = record.get("proof")
    if not proof_doc:
        return VerificationReport(
            job_id=request.job_id,
            checks=(
                Check(
                    "proof", False, f"no completion proof was submitted (job status {record.get('status')})"
                ),
            ),
        )
    # The coordinator stored the proof object exactly as the node sent it; parsing it is a check too.
    signed = SignedProof.from_json(json.dumps(proof_doc))
    st = store()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "output"
        for name in signed.proof.artifacts:
            key = layout.job_output(request.job_id, name)
            try:
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                st.get_file(key, out / name)
            except Exception as exc:  # a missing or tampered artifact fails the job, it does not crash
                return VerificationReport(
                    job_id=request.job_id,
                    checks=(Check("artifacts", False, f"{name}: {exc}"),),
                    proof_sha256=signed.sha256(),
                )
        train = Path(tmp) / "train.npz"
        holdout = Path(tmp) / "holdout.npz"
        st.get_file(dispatched["dataset_key"], train)
        st.get_file(dispatched["holdout_key"], holdout)
        node_cert, peers = node_certificate(record.get("node_id"), signed.proof.node_peer_id)
        if node_cert is None or dispatched["assignment"].get("peer_id") not in peers:
            why = (
                f"the proof is signed as {signed.proof.node_peer_id}, no certificate the coordinator "
                "holds for the assigned node"
                if node_cert is None
                else "the dispatch names a PeerID that is not the assigned node's"
            )
            return VerificationReport(
                job_id=request.job_id, checks=(Check("identity", False, why),), proof_sha256=signed.sha256()
            )
        received = record.get("proof_received_at")
        return run_checks(
            proof=signed,
            node_certificate=node_cert,
            job=parse_training_job(dispatched["training_doc"], allow_file_uris=True),
            output_dir=out,
            data=JobData(train=train, holdout=holdout, holdout_sha256=dispatched["holdout_sha256"]),
            trust=_node_trust(cfg),
            expect=Expectations(
                node_peer_ids=peers,
                renewal_links=node_renewal_links(peers),
                token_jti=dispatched["assignment"].get("jti"),
                received_at=dt.datetime.fromisoformat(received) if received else None,
            ),
        )


def node_renewal_links(peers: frozenset[str]) -> tuple[object, ...]:
    """The renewal links the coordinator holds from the node's keys, beside those the proof carries: the
    verifier follows one only when the older key signed it, so a stored row adds no trust (A7, F1)."""
    store = getattr(control_channel(), "store", None)
    links_from = getattr(store, "renewal_links_from", None)
    return tuple(links_from(sorted(peers))) if links_from is not None and peers else ()


def node_certificate(
    node_id: str | None, proof_peer_id: str
) -> tuple[x509.Certificate | None, frozenset[str]]:
    """(the certificate the proof names, every PeerID of the node) from the coordinator's records of the
    certificates it accepted or issued for the assigned node, never from a PKI directory: a proof signed
    before a renewal is judged by the certificate it was signed with (A7, F1). The certificate is None when
    the proof names no certificate of this node (another node's); chain, revocation and validity at receipt
    are the verifier's certificate check."""
    from cryptography import x509

    if not node_id:
        return None, frozenset()
    records = control_channel().node_certificates(node_id)
    peers = frozenset(r.peer_id for r in records)
    for r in records:
        if r.peer_id == proof_peer_id:
            return x509.load_pem_x509_certificate(r.pem.encode()), peers
    return None, peers


def _node_trust(cfg: ControlPlaneConfig) -> TrustStore:
    """What node certificates are judged against: every organization of the federation's trust policy
    (its CAs and its CRL file in force) when the control plane runs one, else its own PKI (A7)."""
    from cyxwiz.verification.verifier import TrustStore

    if cfg.trust_policy is None:
        pki = cfg.pki_root
        return TrustStore.from_files(pki / "bundle.pem", crls=[pki / "ca" / "ca-crl.pem"])
    from cyxwiz.pki.trust_policy import TrustPolicy

    policy = TrustPolicy.load(cfg.trust_policy)
    return TrustStore(
        trusted=policy.all_cas(), crls=[c for state in policy.load_crls().values() for c in state.crls]
    )


def check_outputs_against_proof(st: BaseObjectStore, job_id: str, proof_doc: Any) -> list[str]:
    """Outputs are frozen by the proof (issue 18, D3): every stored object must be one the proof lists,
    with the proof's SHA-256 (its body re-hashed). An object the proof does not list is refused: removed,
    never archived; one whose content differs (overwritten after the proof) fails the archive. Returns
    the keys removed."""
    from cyxwiz.errors import IntegrityError
    from cyxwiz.verification.proof import SignedProof

    listed = SignedProof.from_json(json.dumps(proof_doc)).proof.artifacts if proof_doc else {}
    prefix = f"jobs/{job_id}/outputs/"
    unlisted, changed = [], []
    for info in st.list(prefix):
        name = info.key.removeprefix(prefix)
        if name not in listed:
            unlisted.append(info.key)
        elif st.check(info.key).sha256 != listed[name]:
            changed.append(name)
    if changed:
        raise IntegrityError(f"outputs differ from the completion proof: {sorted(changed)[:5]}", rule="D3")
    for key in unlisted:
        st.delete(key)
    return unlisted


def archive(*, request: JobRequest, report: dict[str, Any], settlement: dict[str, Any]) -> list[str]:
    from cyxwiz.storage import layout

    st = store()
    proof_doc = control_channel().job(request.job_id).get("proof")
    check_outputs_against_proof(st, request.job_id, proof_doc)
    # Model weights are archived encrypted client-side (D2): the node uploaded them in the clear through
    # its presigned PUTs (it has no master key); verified reads, then re-stored sealed under the same key.
    for info in st.list(f"jobs/{request.job_id}/outputs/"):
        if info.key.endswith(".safetensors") and not info.encrypted:
            st.put_bytes(info.key, st.get_bytes(info.key), encrypt=True)
    st.put_bytes(layout.job_verification(request.job_id), json.dumps(report, sort_keys=True).encode())
    st.put_bytes(f"jobs/{request.job_id}/settlement.json", json.dumps(settlement, sort_keys=True).encode())
    return sorted(info.key for info in st.list(f"jobs/{request.job_id}/"))
