"""The verifier's rule for a stake withdrawal (``unstake``), from its own records (issue 17; F1, F2, A7, I).

The stake book and the escrow rows are the coordinator's database: a coordinator that is compromised can
rewrite them to say "slashed", "no job running" or "cool-down long past", and let a node the verifier
proved a cheat take its stake back before the slash lands. So, beside the database's rule
(:func:`cyxwiz.ledger.stake.check_unstake`, kept: it is right when the coordinator is honest), the
verifier refuses a withdrawal from what it knows itself:

* **owed slash** — every ``fraud`` verdict it signed against the staking PeerID, or a key that PeerID
  renewed into by signed links (the keys whose fraud a slash takes this stake for), and every dispute whose
  refund to the user by the arbiter it co-signed against those keys (the key whose proof it judged), needs
  a slash of that
  job whose message the verifier co-signed (recorded in its own book when it co-signed,
  :meth:`~cyxwiz.ledger.verdicts.VerdictBook.record_slash`) and that the chain shows landed: the ledger
  sends the signed slash transactions as evidence (the request's ``report``: a JSON list of base64
  transactions); a co-signature alone proves nothing, a slash that never landed took nothing;
* **running job** — every escrow it judged for those keys, and every dispute escrow it moved a job of
  theirs into, must be empty on chain (one still holding funds is a job not yet settled, whose fraud may
  still be proven).

* **cool-down** — it runs on the verifier's clock from the first signed request of the node it saw (an
  ``unstake-request`` notice the ledger sends when the node asks, :meth:`StakeLedger.request_unstake
  <cyxwiz.ledger.stake.StakeLedger.request_unstake>`, or else its first withdrawal), not from the stake
  book's ``unstake_requested_at``; a co-signed withdrawal clears it, so a re-stake's starts afresh.

What it cannot know from its own records: a job whose verification it was never asked for (the escrow
rows say which jobs a node has; a user funds the lock, the verifier signs nothing then). The cool-down
bounds that: a job running when the node asked must be verified within it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from typing import TYPE_CHECKING, Any

from solders.pubkey import Pubkey
from solders.transaction import Transaction

from cyxwiz.errors import CyxwizError
from cyxwiz.ledger.cosign import CosignRefusedError
from cyxwiz.ledger.stake import StakeLockedError
from cyxwiz.ledger.withdrawal import (
    FIELD,
    SignedStakeWithdrawal,
    StakeWithdrawal,
    StakeWithdrawalError,
    StaleWithdrawalError,
)

if TYPE_CHECKING:
    from collections.abc import Collection

    from cyxwiz.ledger.cosign import CosignRequest, VerifierPolicy, _Moves
    from cyxwiz.ledger.records import EscrowRecord

#: how many landed slash transactions an unstake request may cite (the body stays small)
MAX_EVIDENCE = 256


class CooldownStartedError(StakeLockedError):
    """The answer to an unstake notice: the verifier recorded the node's request (its cool-down runs from
    then); no co-signature is ever given for a notice."""

    code = "stake-cooldown-started"


def approve_unstake(policy: VerifierPolicy, request: CosignRequest, moves: _Moves) -> StakeWithdrawal:
    """The verifier's rule for an ``unstake`` message (the subject is the staking PeerID): the node's
    signed withdrawal, the verifier's own records (no fraud it proved left unslashed, no escrow it judged
    still holding funds), the database's rule (cool-down, no job running, no slash owed), then the
    message itself — the stake account derived from the staking PeerID emptied into the stated wallet's
    token account and closed to the rent owner — never the stake book's word about where it goes."""
    from cyxwiz.ledger import txbuild
    from cyxwiz.ledger.stake import check_unstake, stake_address
    from cyxwiz.ledger.withdrawal import check_withdrawal

    stake_peer = request.job_id
    book = policy._stakes()
    if request.statement is None:
        raise CosignRefusedError(
            "a stake goes back only to a wallet the staking node's key stated: the signed withdrawal is "
            "missing", field=FIELD, rule="F1", hint="cyxwiz escrow sign-withdrawal",
        )  # fmt: skip
    later = frozenset(policy.later_peers(stake_peer)) if policy.later_peers is not None else frozenset()
    verdicts = policy.verdicts
    signed = SignedStakeWithdrawal.parse(request.statement)
    withdrawal = check_withdrawal(
        signed, stake_peer_id=stake_peer, signers=later,
        newest_used=None if verdicts is None else verdicts.newest_withdrawal(stake_peer),
    )  # fmt: skip
    signer_certificate(policy, signed)
    now = dt.datetime.now(dt.UTC)
    # The node's signed request starts the cool-down on this verifier's clock (the first one it sees).
    started = None if verdicts is None else verdicts.unstake_requested(stake_peer, at=now)
    if request.kind == "unstake-request":  # a notice: recorded, never co-signed
        if started is None:
            raise CosignRefusedError("this verifier keeps no book of unstake requests", field="kind")
        raise CooldownStartedError(
            f"the stake's cool-down runs on the verifier's clock from {started.isoformat()}; it can be "
            f"withdrawn from {(started + policy.stake_policy.cooldown).isoformat()}", field="peer_id",
            rule="F1",
        )  # fmt: skip
    if verdicts is not None:  # before the database's rule: what the coordinator cannot rewrite
        require_settled(policy, {stake_peer, *later}, evidence=request.report)
    earlier = policy.node_peers(stake_peer) if policy.node_peers is not None else ()
    check_unstake(book.get(stake_peer), policy.stake_policy, policy.escrow_store, peers={*earlier, *later})
    if started is not None and now < started + policy.stake_policy.cooldown:
        raise StakeLockedError(
            f"the cool-down ends at {(started + policy.stake_policy.cooldown).isoformat()} on the verifier's "
            f"clock (it first saw the node's signed request at {started.isoformat()})", field="peer_id",
            rule="F1", hint="the node asks early: cyxwiz escrow unstake --node P --withdrawal FILE",
        )  # fmt: skip
    account = stake_address(policy.rent_owner, stake_peer)  # from the PeerID, not the book's row
    dest = txbuild.token_account_of(Pubkey.from_string(withdrawal.wallet), policy.mint)
    # Whatever the account holds goes back (a deposit whose record a crash lost included): the account
    # is closed in the same transaction, which the chain allows only once it is empty.
    held = moves.transfers[0][2] if len(moves.transfers) == 1 else 0
    if moves.transfers != [(account, dest, held)]:
        raise CosignRefusedError(
            f"a withdrawal moves the stake account {account} only to the wallet the node's key stated "
            f"({withdrawal.wallet})", field="message", rule="F1",
        )  # fmt: skip
    if moves.closes != [(account, policy.rent_owner)]:
        raise CosignRefusedError(
            "the withdrawal must close the emptied stake account to the rent owner",
            field="message",
            rule="F1",
        )
    if verdicts is not None and not verdicts.record_withdrawal(
        stake_peer, issued_at=withdrawal.issued_at, wallet=withdrawal.wallet
    ):
        raise StaleWithdrawalError(
            "a withdrawal of this stake as new as this one was co-signed meanwhile",
            field=f"{FIELD}.issued_at", rule="F2",
        )  # fmt: skip
    return withdrawal


def signer_certificate(policy: VerifierPolicy, signed: SignedStakeWithdrawal) -> None:
    """The withdrawal's signer presents its certificate: chained to the CA, valid now, not revoked (the
    attestation policy's trust bundle and CRLs, re-read when they change), of role ``worker``, for the
    signing key. A key revoked after it staked (or after it renewed) states no wallet (A6).

    A key the staking key renewed into also presents the staking key's certificate (second in the PEM
    text; issued by this CA, expired or revoked since or not): the issuer renews a certificate under the
    same name only, so the two must name the same node. A link a stolen staking key signs to a thief's
    own certified key names another node, and is refused here."""
    from cyxwiz.pki.certs import parse_certificates
    from cyxwiz.pki.peerid import peer_id

    field, stated = f"{FIELD}.certificate", signed.withdrawal
    if signed.certificate is None:
        raise StakeWithdrawalError(
            "the withdrawal's signer must present its certificate (a revoked key states no wallet)",
            field=field, rule="A6", hint="cyxwiz escrow sign-withdrawal --cert CERT",
        )  # fmt: skip
    try:
        certs = parse_certificates(signed.certificate.encode())
        if not 1 <= len(certs) <= 2:
            raise StakeWithdrawalError("one or two PEM certificates", field=field, rule="A6")
        cert = policy.attestations.certificate_of(certs[0], role="worker")
        staking = certs[-1] if len(certs) == 2 else None
        if staking is not None:
            staking = policy.attestations.certificate_of(staking, role="worker", current=False)
    except CyxwizError as exc:
        raise StakeWithdrawalError(
            f"the withdrawal's signer certificate is refused: {exc.message}", field=field,
            rule=exc.rule or "A6",
        ) from None  # fmt: skip
    if peer_id(cert) != stated.peer_id:
        raise StakeWithdrawalError(
            f"the presented certificate is not {stated.peer_id}'s (another key)", field=field, rule="A6"
        )
    if stated.peer_id == stated.stake_peer_id:
        return
    if staking is None or peer_id(staking) != stated.stake_peer_id:
        raise StakeWithdrawalError(
            f"a renewed key presents the staking key's certificate ({stated.stake_peer_id}'s) after its own",
            field=field, rule="A7", hint="cyxwiz escrow sign-withdrawal --cert NEW.pem --cert OLD.pem",
        )  # fmt: skip
    if staking.subject != cert.subject:
        raise StakeWithdrawalError(
            f"the signer's certificate names {cert.subject.rfc4514_string()!r}, not the staking node "
            f"{staking.subject.rfc4514_string()!r}: a renewal keeps the name", field=field, rule="A7",
        )  # fmt: skip


def require_settled(policy: VerifierPolicy, peers: Collection[str], *, evidence: str | None) -> None:
    """Refuse (:class:`~cyxwiz.ledger.stake.StakeLockedError`) while a fraud this verifier proved against
    one of ``peers`` — a ``fraud`` verdict, or a dispute whose refund to the user by the arbiter it
    co-signed, against the key whose proof it judged — has no slash it co-signed that landed, or an escrow
    it judged for them holds funds."""
    judged = policy.verdicts.judged(peers)
    upheld = [job for job in policy.verdicts.upheld_jobs() if _proof_key(policy, job) in peers]
    ours = {a.job_id for a in judged}
    disputed = [
        (job, account) for job, account, peer in policy.verdicts.disputes()
        if job in ours or peer in peers or _proof_key(policy, job) in peers
    ]  # fmt: skip
    if not judged and not upheld and not disputed:
        return
    chain = policy.chain
    if chain is None:
        raise StakeLockedError(
            "this verifier has no chain to ask whether the node's jobs and slashes settled",
            field="peer_id", rule="F1",
        )  # fmt: skip
    held = [(a.job_id, a.escrow) for a in judged] + disputed  # the job's escrow, or its dispute escrow
    running = sorted({job for job, account in held if chain.token_amount(Pubkey.from_string(account)) or 0})
    if running:
        raise StakeLockedError(
            f"the verifier judged job(s) {', '.join(running)} of this node whose escrow still holds funds on "
            "chain: not settled", field="peer_id", rule="F1",
        )  # fmt: skip
    landed = _landed(chain, evidence)
    proven = {a.job_id for a in judged if a.verdict == "fraud"} | set(upheld)
    owed = sorted(job for job in proven if not policy.verdicts.slash_messages(job) & landed)
    if owed:
        raise StakeLockedError(
            f"the verifier proved fraud in job(s) {', '.join(owed)} of this node and no slash of it that "
            "it co-signed has landed on chain: the stake stays until it does", field="peer_id", rule="F1",
            hint="the escrow sweep sends owed slashes",
        )  # fmt: skip


def _proof_key(policy: VerifierPolicy, job_id: str) -> str | None:
    """The key whose proof the verifier judged for the job (the service), else the escrow record's node
    (an in-process verifier: the ledger's own process)."""
    if policy.proof_key is not None:
        return policy.proof_key(job_id)
    try:
        return policy.lookup(job_id).node_peer_id
    except CyxwizError:
        return None


def _landed(chain: Any, evidence: str | None) -> frozenset[str]:
    """The message SHA-256 of each cited transaction the chain shows landed without error, signed by its
    fee payer (whose signature is the transaction's id)."""
    try:
        cited = json.loads(evidence) if evidence else []
    except ValueError:
        cited = None
    if not isinstance(cited, list) or len(cited) > MAX_EVIDENCE:
        raise CosignRefusedError(
            f"an unstake's evidence is a JSON list of at most {MAX_EVIDENCE} base64 transactions",
            field="report", rule="F1",
        )  # fmt: skip
    found = set()
    for text in cited:
        try:
            tx = Transaction.from_bytes(base64.b64decode(str(text), validate=True))
            signature, payer, message = tx.signatures[0], tx.message.account_keys[0], bytes(tx.message)
        except Exception:  # noqa: S112 - solders raises its own parse errors; a bad entry proves nothing
            continue
        status = chain.signature_status(str(signature))
        if signature.verify(payer, message) and status is not None and status.err is None:
            found.add(hashlib.sha256(message).hexdigest())
    return frozenset(found)


def note_slash(policy: VerifierPolicy, record: EscrowRecord, request: CosignRequest) -> None:
    """A slash about to be co-signed: its message, in the verifier's own book, before the signature leaves."""
    if policy.verdicts is not None:
        digest = hashlib.sha256(request.message).hexdigest()
        policy.verdicts.record_slash(record.job_id, escrow=record.escrow_account, message_sha256=digest)
