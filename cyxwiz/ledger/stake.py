"""Node stake: tokens a node locks to be dispatched to, slashed on proven fraud (F1, threat I).

A node's stake is an SPL token account at a deterministic address (seed from its certificate PeerID),
owned by the 2-of-3 escrow multisig: the node funds it with a transfer it signs itself, and only the
coordinator + verifier can move it out — to the user of a job whose verifier report proves fraud
(``fraud`` verdict: the proof's signature was valid, its training claims failed), a configured share,
with the report's SHA-256 in the memo; or back to the node, after a cool-down, when it has no job running,
into the wallet the node's own key names in a signed withdrawal (:mod:`cyxwiz.ledger.withdrawal`).
A crash, a timeout or a cancellation is a ``fail`` verdict and slashes nothing.

API for the verification package (issue 20): :meth:`StakeLedger.slash` with the verifier's ``fraud``
attestation for a job; :meth:`StakeLedger.require` before dispatch. Both raise precise errors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from spl.token import instructions as token_ix
from spl.token.constants import ACCOUNT_LEN, TOKEN_PROGRAM_ID
from spl.token.models import InitializeAccountParams, TransferCheckedParams

from cyxwiz.errors import (
    ConflictError,
    CyxwizError,
    EscrowError,
    LedgerError,
    ValidationError,
)
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.cosign import CosignRequest
from cyxwiz.ledger.records import check_amount, check_reason
from cyxwiz.ledger.stakebook import (
    StakeBook,
    StakeRecord,
    metadata,
    owed_query,
    slashes,
    slashes_unsettled,
    stakes,
)
from cyxwiz.ledger.store import EscrowState, NewIntent

if TYPE_CHECKING:
    from cyxwiz.ledger.ledger import EscrowLedger
    from cyxwiz.ledger.withdrawal import SignedStakeWithdrawal

#: (kind, subject, report JSON, statement) of the verifier's co-signature — the statement: the node's signed
#: withdrawal of an unstake, the arbiter's landed refund of an upheld-dispute slash — or None: the node
#: alone signs
Cosign = tuple[str, str, str | None, str | None] | None
#: Every PeerID the coordinator's own records link to the same node as this one (itself included): a
#: renewed certificate is a new key, hence a new PeerID, but the stake belongs to the node (F1, A7).
NodePeers = Callable[[str], Collection[str]]
#: escrow states in which a node still has a job running (or being settled): no withdrawal then
BUSY = (EscrowState.LOCKED, EscrowState.SETTLING, EscrowState.RELEASING, EscrowState.DISPUTING,
        EscrowState.DISPUTED)  # fmt: skip


class StakeTooLowError(EscrowError):
    """The node's stake is below the minimum: it is not dispatched to (F1)."""

    code = "stake-too-low"
    http_status = 403


class StakeLockedError(EscrowError):
    """A withdrawal before the cool-down ended, or while the node has a job running."""

    code = "stake-locked"
    http_status = 409


def stake_address(payer: Pubkey, peer_id: str) -> Pubkey:
    import hashlib

    seed = "cs" + hashlib.sha256(peer_id.encode()).hexdigest()[:30]
    return Pubkey.create_with_seed(payer, seed, TOKEN_PROGRAM_ID)


@dataclass(frozen=True, kw_only=True)
class StakePolicy:
    minimum: int = 0
    #: share of the stake paid to the defrauded user, in basis points (2500 = 25 %)
    slash_bps: int = 2500
    cooldown: dt.timedelta = dt.timedelta(hours=24)


class StakeLedger:
    """Stake operations over an :class:`EscrowLedger`'s chain, keys and verifier co-signer."""

    def __init__(
        self, *, ledger: EscrowLedger, policy: StakePolicy | None = None, node_peers: NodePeers | None = None
    ) -> None:
        self.ledger = ledger
        self.policy = policy or StakePolicy()
        self.book = StakeBook(ledger.store._engine)
        #: without the coordinator's links, a PeerID is its own node (the ledger-only CLI)
        self.node_peers: NodePeers = node_peers or ledger.node_peers or (lambda peer: (peer,))

    def status(self, *, peer_id: str) -> StakeRecord:
        return self.book.get(peer_id)

    def node_stake(self, *, peer_id: str, live: bool = False) -> StakeRecord | None:
        """The stake of the node this PeerID is, under whichever of its linked PeerIDs it was deposited
        (the node renews its certificate, hence its PeerID; the stake stays the node's). ``live``: only a
        stake still held for dispatch (no unstake requested). The largest such stake, or None."""
        linked = {peer_id, *self.node_peers(peer_id)}
        found = [r for p in sorted(linked) if (r := self.book.find(p)) is not None and not r.withdrawn]
        if live:
            found = [r for r in found if r.unstake_requested_at is None]
        return max(found, key=lambda r: r.amount, default=None)

    def require(self, *, peer_id: str) -> StakeRecord:
        """Refuse dispatch to a node whose stake is below the configured minimum (F1)."""
        record = self.node_stake(peer_id=peer_id, live=True)
        held = 0 if record is None or record.withdrawn or record.unstake_requested_at else record.amount
        if held < self.policy.minimum:
            raise StakeTooLowError(
                f"the node's stake {held} is below the minimum {self.policy.minimum}",
                field="peer_id", rule="F1", hint="cyxwiz escrow stake --amount N",
            )  # fmt: skip
        assert record is not None or self.policy.minimum == 0
        return record if record is not None else StakeRecord(peer_id, "", "", 0, 0, None, False)

    def stake(self, *, peer_id: str, node: Keypair, amount: int) -> StakeRecord:
        """Lock ``amount`` of the node's tokens in its stake account (the node signs the transfer)."""
        check_reason(peer_id, field="peer_id")
        check_amount(amount, minimum=1)
        led = self.ledger
        payer = led._payer
        account = stake_address(payer.pubkey(), peer_id)
        instructions = []
        fresh = led.chain.get_account(account) is None
        if fresh:
            import hashlib

            from solders.system_program import CreateAccountWithSeedParams, create_account_with_seed

            seed = "cs" + hashlib.sha256(peer_id.encode()).hexdigest()[:30]
            instructions += [
                create_account_with_seed(CreateAccountWithSeedParams(
                    from_pubkey=payer.pubkey(), to_pubkey=account, base=payer.pubkey(), seed=seed,
                    lamports=led.chain.minimum_rent(ACCOUNT_LEN), space=ACCOUNT_LEN, owner=TOKEN_PROGRAM_ID,
                )),
                token_ix.initialize_account(InitializeAccountParams(
                    program_id=TOKEN_PROGRAM_ID, account=account, mint=led.mint, owner=led.multisig
                )),
            ]  # fmt: skip
        instructions += [
            token_ix.transfer_checked(TransferCheckedParams(
                program_id=TOKEN_PROGRAM_ID, source=txbuild.token_account_of(node.pubkey(), led.mint),
                mint=led.mint, dest=account, owner=node.pubkey(), amount=amount, decimals=led.decimals,
            )),
            txbuild.memo(payer.pubkey(), f"cyxwiz:stake:deposit:{peer_id}"),
        ]  # fmt: skip
        self._send(instructions, [node], cosign=None)
        self.book.upsert(
            peer_id=peer_id, node_wallet=str(node.pubkey()), stake_account=str(account), add=amount,
            fresh=fresh,
        )  # fmt: skip
        return self.book.get(peer_id)

    def slash(self, *, job_id: str, report: object = None, reason: str | None = None) -> StakeRecord:
        """Pay the job's user the configured share of the assigned node's stake, on proven fraud.

        Proof is either the verifier's attestation for this job with verdict ``fraud`` (``report``: the
        ledger checks it as the verifier does; its SHA-256 and audit leaf go into the memo), or, with no
        report, a dispute the arbiter upheld (the escrow was moved into the dispute escrow and refunded
        from it by the arbiter's key; ``reason`` is audited). This matches the verification package's
        ``Slasher`` (``slash(job_id=, reason=)``). A job is slashed at most once; a ``fail`` verdict
        (crash, timeout, cancellation) is refused.
        """
        led = self.ledger
        record = led.status(job_id=job_id)
        if self.book.slashed_for(job_id) is not None:
            raise ConflictError("this job's fraud was already slashed", field="job_id", rule="F2")
        cited = resolved = None
        if report is None:
            upheld_dispute(record)
            resolved = settle_tx(led, record)
            peer, report_hash, proof = record.node_peer_id or "", "dispute-upheld", "dispute-upheld"
        else:
            attestation = led._trust().check(
                report, job_id=record.job_id, node_peer_id=record.node_peer_id,
                node_wallet=record.node_wallet, escrow=record.escrow_account, verdicts=("fraud",),
            )  # fmt: skip
            cited, peer, report_hash = (
                attestation.to_json(),
                attestation.node_peer_id,
                attestation.report_sha256,
            )
            leaf = f":audit={attestation.audit_leaf}" if attestation.audit_leaf else ""
            proof = f"report={report_hash}{leaf}"
        # Whatever PeerID signed (a renewal gives the node a new one), the node's staked account pays.
        stake = self.node_stake(peer_id=peer) or self.book.get(peer)
        # The account and the share follow from the PeerID and the chain, as the verifier checks them:
        # the stake book's row is the coordinator's word (issue 17).
        account = stake_address(led.payer_key, stake.peer_id)
        share = (led.chain.token_amount(account) or 0) * self.policy.slash_bps // 10_000
        if share <= 0:
            raise StakeTooLowError("nothing to slash: the node's stake is empty", field="peer_id", rule="F1")
        user = Pubkey.from_string(record.user_wallet)
        instructions = [
            token_ix.create_idempotent_associated_token_account(led._payer.pubkey(), user, led.mint),
            token_ix.transfer_checked(TransferCheckedParams(
                program_id=TOKEN_PROGRAM_ID, source=account, mint=led.mint,
                dest=txbuild.token_account_of(user, led.mint), owner=led.multisig, amount=share,
                decimals=led.decimals, signers=[*(k.pubkey() for k in led._keys("coordinator")),
                                                led._cosigner().pubkey()],
            )),
            txbuild.memo(led._payer.pubkey(), f"cyxwiz:stake:slash:{job_id}:{proof}"),
        ]  # fmt: skip
        tx, last_valid = self._build(
            instructions, led._keys("coordinator"), cosign=("slash", job_id, cited, resolved)
        )
        intent = NewIntent(
            kind="slash", signature=str(tx.signatures[0]), tx=bytes(tx), last_valid_height=last_valid,
            target_state=record.state, recipient_wallet=str(user),
        )  # fmt: skip
        claim = {"job_id": job_id, "peer_id": stake.peer_id, "amount": share, "report_sha256": report_hash,
                 "signature": intent.signature}  # fmt: skip
        try:
            # The claim and the signed transaction are on disk before it is sent: a crash from here on is
            # finished by the reconciler, and the stake book changes in the same commit as the intent's
            # confirmation (_conclude_slash), exactly once (F2).
            moved = led.store.record_side_move(
                job_id, intent=intent, claim=lambda conn: conn.execute(slashes.insert().values(**claim))
            )
        except sa.exc.IntegrityError:
            raise ConflictError("this job's fraud was already slashed", field="job_id", rule="F2") from None
        if not led._driver.drive(moved, rebuild=None).concluded:  # the sweep concluded it first: its record
            return self.book.get(stake.peer_id)
        led._record_audit(
            "stake.slash", job_id, success=True, amount=share, source=stake.stake_account,
            destination=str(user), tx_signature=str(tx.signatures[0]),
            reason=f"fraud {report_hash}{': ' + reason if reason else ''}"[:500],
        )  # fmt: skip
        return self.book.get(stake.peer_id)

    def request_unstake(
        self, *, peer_id: str, withdrawal: SignedStakeWithdrawal | str | None = None
    ) -> StakeRecord:
        """Start the cool-down; the node is not dispatched to from now on. With the node's signed
        ``withdrawal``, the verifier's cool-down starts now too (its own clock, which the coordinator
        cannot backdate); without, it starts at the node's first withdrawal the verifier sees."""
        self.book.get(peer_id)
        self.book.update(peer_id, unstake_requested_at=dt.datetime.now(dt.UTC))
        if withdrawal is not None:
            from cyxwiz.ledger.unstake_rule import CooldownStartedError

            statement = withdrawal if isinstance(withdrawal, str) else withdrawal.to_json()
            led = self.ledger
            notice = [txbuild.memo(led._payer.pubkey(), f"cyxwiz:stake:unstake-request:{peer_id}")]
            try:  # the verifier records it and answers with its cool-down; it never signs a notice
                self._build(notice, [], cosign=("unstake-request", peer_id, None, statement))
            except CooldownStartedError as started:
                led._record_audit(
                    "stake.unstake-request", peer_id, success=True, amount=0, reason=started.message
                )
        return self.book.get(peer_id)

    def withdraw(
        self,
        *,
        peer_id: str,
        withdrawal: SignedStakeWithdrawal | str | None = None,
        now: dt.datetime | None = None,
    ) -> StakeRecord:
        """Return the stake, once the cool-down passed and no job of the node is running, to the wallet
        ``withdrawal`` names: the node's own signed request (:mod:`cyxwiz.ledger.withdrawal`), never the
        stake book's ``node_wallet`` (a row a compromised coordinator could rewrite; issue 17). Without
        one: :class:`~cyxwiz.ledger.withdrawal.StakeWithdrawalError`, nothing moved."""
        from cyxwiz.ledger.withdrawal import withdraw_stake

        return withdraw_stake(self, peer_id=peer_id, withdrawal=withdrawal, now=now)

    # -- internals --------------------------------------------------------------------------------

    def _build(
        self, instructions: list[Any], signers: list[Any], *, cosign: Cosign
    ) -> tuple[Transaction, int]:
        led = self.ledger
        blockhash, last_valid = led.latest_blockhash()
        message = Message.new_with_blockhash(instructions, led._payer.pubkey(), blockhash)
        signatures = {k.pubkey(): txbuild.sign_message(k, message) for k in (led._payer, *signers)}
        if cosign is not None:
            kind, subject, report, statement = cosign
            cosigner = led._cosigner()
            request = CosignRequest(
                kind=kind, job_id=subject, message=bytes(message), report=report, statement=statement
            )
            signatures[cosigner.pubkey()] = cosigner.cosign(request)
        required = message.account_keys[: message.header.num_required_signatures]
        return Transaction.populate(message, [signatures[k] for k in required]), last_valid

    def _send(self, instructions: list[Any], signers: list[Any], *, cosign: Cosign) -> str:
        return self._submit(self._build(instructions, signers, cosign=cosign)[0])

    def _submit(self, tx: Transaction) -> str:
        from cyxwiz.ledger.provision import wait_landed

        signature = self.ledger.chain.send_raw(bytes(tx))
        status = wait_landed(self.ledger.chain, signature)
        if status.err is not None:
            raise LedgerError(f"stake transaction failed on chain: {status.err}", rule="F2")
        return signature


def slash_owed(
    ledger: EscrowLedger, *, node_peers: NodePeers | None = None
) -> tuple[list[str], dict[str, str]]:
    """Slash every refunded job whose refund rests on a ``fraud`` report, or on a dispute the arbiter
    upheld, and that has no slash yet: the decision is on disk with the refund, so a process that died
    before slashing loses nothing (the sweep runs this). Returns (jobs slashed, job -> why not)."""
    policy = ledger.stake_policy or StakePolicy()
    staking = StakeLedger(ledger=ledger, policy=policy, node_peers=node_peers)
    with ledger.store._engine.connect() as conn:
        owed = [(r.job_id, r.report, r.node_peer_id) for r in conn.execute(owed_query())]
    done: list[str] = []
    failed: dict[str, str] = {}
    for job_id, report, peer in owed:
        # The node's stake under any of its PeerIDs: one that renewed after the fraud still pays (A7).
        stake = staking.node_stake(peer_id=peer or "")
        if stake is None or stake.amount * policy.slash_bps // 10_000 <= 0:
            continue  # no stake, or nothing left to take
        proof = report if report and '"verdict":"fraud"' in report else None
        try:
            staking.slash(job_id=job_id, report=proof, reason="owed: found by the sweep")
        except CyxwizError as exc:
            failed[job_id] = f"slash still owed: {exc.code}"
            continue
        done.append(job_id)
    return done, failed


def settle_tx(ledger: EscrowLedger, record: Any) -> str | None:
    """The signed transaction (base64) that settled the escrow: for an upheld dispute, the arbiter's refund
    the verifier asks the chain about before it co-signs a slash resting on it."""
    import base64

    found = [i.tx for i in ledger.store.intents(record.job_id) if i.signature == record.settle_signature]
    return base64.b64encode(found[0]).decode() if found else None


def upheld_dispute(record: Any) -> None:
    """A dispute the arbiter upheld: funds went to the dispute escrow and were refunded from it."""
    if not (
        record.dispute_account and record.state is EscrowState.REFUNDED and record.resolution == "refund"
    ):
        raise ValidationError(
            "slashing needs the verifier's fraud report or a dispute the arbiter upheld (refunded)",
            field="report", rule="F1",
        )  # fmt: skip


def check_unstake(
    stake: StakeRecord,
    policy: StakePolicy,
    store: Any,
    *,
    now: dt.datetime | None = None,
    peers: Collection[str] = (),
) -> None:
    """The withdrawal rule, shared by the ledger and the verifier's co-signing policy."""
    moment = now or dt.datetime.now(dt.UTC)
    if stake.withdrawn or stake.amount <= 0:
        raise StakeLockedError("nothing staked to withdraw", field="peer_id", rule="F1")
    if stake.unstake_requested_at is None:
        raise StakeLockedError("request the unstake first (cool-down)", field="peer_id", rule="F1")
    if moment < stake.unstake_requested_at + policy.cooldown:
        raise StakeLockedError(
            f"the cool-down ends at {(stake.unstake_requested_at + policy.cooldown).isoformat()}",
            field="peer_id", rule="F1",
        )  # fmt: skip
    node = {stake.peer_id, *peers}
    busy = [r for r in store.list_escrows(states=BUSY) if r.get("node_peer_id") in node]
    if busy:
        raise StakeLockedError(
            f"the node has {len(busy)} job(s) running or unsettled", field="peer_id", rule="F1"
        )
    owed = slashes_unsettled(store, stake.peer_id, peers)
    if owed:  # a node proven to cheat does not take its stake back before the slash lands
        raise StakeLockedError(
            f"the node owes {owed} slash(es) not yet settled", field="peer_id", rule="F1",
            hint="the escrow sweep sends owed slashes",
        )  # fmt: skip


def parse_share(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10_000:
        raise ValidationError("slash share must be 0..10000 basis points", field="slash_bps", rule="F1")
    return value


# The book's rows live in cyxwiz.ledger.stakebook; these names stay importable from here (public API).
__all__ = [
    "BUSY", "NodePeers", "StakeBook", "StakeLedger", "StakeLockedError", "StakePolicy", "StakeRecord",
    "StakeTooLowError", "check_unstake", "metadata", "parse_share", "slash_owed", "slashes", "stake_address",
    "stakes", "upheld_dispute",
]  # fmt: skip
