"""The verifier's co-signature: what it checks before its multisig key signs an escrow move (F1, threat I).

A settle transaction needs two of the three authority keys. The verifier's key is held by the verifier
service (its own process, its own sealed key file); the control plane sends it the transaction *message*
with the facts it claims, and the verifier signs only when the message moves exactly what its own rules
allow, read from the escrow record, never from the request:

* ``release``: a passing report attestation bound to this job, the assigned node (PeerID and wallet) and
  this escrow; the whole escrow to that node's token account; the report's SHA-256 in the memo.
* ``refund``: the whole escrow back to the wallet that funded it.
* ``dispute``: the whole escrow into this job's dispute escrow (whose owner needs the arbiter).
* ``resolve``: out of the dispute escrow to the user or the assigned node (the arbiter signs too).
* ``slash``: see :mod:`cyxwiz.ledger.stake`; ``unstake``: :mod:`cyxwiz.ledger.unstake_rule` (the
  stake account of the staking PeerID, into the wallet the node's key stated, no proven fraud unslashed).

:class:`KeyCosigner` applies these rules in-process (tests, tools); the verifier service applies the same
:class:`VerifierPolicy` behind its socket (:mod:`cyxwiz.ledger.verifier_service`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from spl.memo.constants import MEMO_PROGRAM_ID
from spl.token.constants import ASSOCIATED_TOKEN_PROGRAM_ID, TOKEN_PROGRAM_ID

from cyxwiz.errors import CyxwizError, EscrowError
from cyxwiz.ledger import txbuild
from cyxwiz.ledger.attestation import AttestationPolicy, ReportAttestation
from cyxwiz.ledger.records import EscrowRecord
from cyxwiz.ledger.store import EscrowState

SYSTEM_PROGRAM_ID = Pubkey.from_string("11111111111111111111111111111111")
_TRANSFER_CHECKED, _CLOSE_ACCOUNT, _INITIALIZE_ACCOUNT = 12, 9, 1
KINDS = ("release", "refund", "dispute", "resolve", "slash", "unstake", "unstake-request")


class CosignRefusedError(EscrowError):
    """The verifier refuses to co-sign this transaction: it does not move what the rules allow (F1)."""

    code = "escrow-cosign-refused"
    http_status = 403


@dataclass(frozen=True, kw_only=True)
class CosignRequest:
    """A settle transaction's message plus what it is for; ``report`` is the attestation JSON (release)."""

    kind: str
    job_id: str
    message: bytes
    report: str | None = None
    #: ``unstake``: the node's signed withdrawal (JSON), ``report`` the stake's landed slashes (evidence)
    statement: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        import base64

        return {
            "kind": self.kind,
            "job_id": self.job_id,
            "message": base64.b64encode(self.message).decode(),
            "report": self.report,
            "statement": self.statement,
        }

    @classmethod
    def from_dict(cls, data: object) -> CosignRequest:
        import base64

        if not isinstance(data, dict):
            raise CosignRefusedError("a co-sign request is a JSON object", field="body")
        try:
            kind, job_id, message = str(data["kind"]), str(data["job_id"]), str(data["message"])
            raw = base64.b64decode(message, validate=True)
        except (KeyError, ValueError):
            raise CosignRefusedError("kind, job_id and a base64 message are required", field="body") from None
        report, statement = data.get("report"), data.get("statement")
        return cls(
            kind=kind, job_id=job_id, message=raw, report=None if report is None else str(report),
            statement=None if statement is None else str(statement),
        )  # fmt: skip


class Cosigner(Protocol):
    """An authority key held elsewhere that signs a settle message when its rules allow it."""

    def pubkey(self) -> Pubkey: ...

    def cosign(self, request: CosignRequest) -> Signature: ...


@dataclass(frozen=True)
class _Moves:
    transfers: list[tuple[Pubkey, Pubkey, int]] = field(default_factory=list)  # source, dest, amount
    closes: list[tuple[Pubkey, Pubkey]] = field(default_factory=list)  # account, rent destination
    initialized: list[tuple[Pubkey, Pubkey]] = field(default_factory=list)  # account, owner
    memos: list[str] = field(default_factory=list)


def _moves(message: Message) -> _Moves:
    """What a message does with tokens; any instruction outside the settle vocabulary is refused."""
    keys = message.account_keys
    moves = _Moves()
    for ix in message.instructions:
        program = keys[ix.program_id_index]
        accounts = [keys[i] for i in bytes(ix.accounts)]
        data = bytes(ix.data)
        if program == TOKEN_PROGRAM_ID and data[:1] == bytes([_TRANSFER_CHECKED]) and len(data) == 10:
            moves.transfers.append((accounts[0], accounts[2], int.from_bytes(data[1:9], "little")))
        elif program == TOKEN_PROGRAM_ID and data == bytes([_CLOSE_ACCOUNT]):
            moves.closes.append((accounts[0], accounts[1]))
        elif program == TOKEN_PROGRAM_ID and data == bytes([_INITIALIZE_ACCOUNT]):
            moves.initialized.append((accounts[0], accounts[2]))
        elif program == MEMO_PROGRAM_ID:
            moves.memos.append(data.decode("utf-8", errors="replace"))
        elif program == ASSOCIATED_TOKEN_PROGRAM_ID and data == bytes([1]):
            continue  # create-idempotent of a recipient's token account: moves nothing
        elif program == SYSTEM_PROGRAM_ID and data[:4] == (3).to_bytes(4, "little"):
            continue  # create_account_with_seed of a dispute escrow (its owner is checked on init)
        else:
            raise CosignRefusedError(
                f"the transaction carries an instruction a settlement never needs (program {program})",
                field="message",
                rule="F1",
            )
    return moves


@dataclass(frozen=True, kw_only=True)
class VerifierPolicy:
    """The verifier's rules over the escrow record it reads itself (``lookup``), never the caller's copy."""

    attestations: AttestationPolicy
    lookup: Callable[[str], EscrowRecord]
    mint: Pubkey
    rent_owner: Pubkey
    dispute_multisig: Pubkey | None = None
    #: node stakes (a :class:`~cyxwiz.ledger.stake.StakeBook`), their policy, and the escrow store
    stakes: Any = None
    stake_policy: Any = None
    escrow_store: Any = None
    #: the verifier's own book of verdicts (:class:`~cyxwiz.ledger.verdicts.VerdictBook`): a job that
    #: passed is never refunded nor slashed through this key, whatever the escrow store says
    verdicts: Any = None
    #: every PeerID linked to a node's (:data:`~cyxwiz.ledger.stake.NodePeers`): a slash takes the node's
    #: stake whichever of its PeerIDs the report names (a renewal changes it, A7). In-process: the
    #: coordinator's links; in the verifier service: only the keys that renewed into it (signed links)
    node_peers: Any = None
    #: the PeerIDs a stake's key renewed into (the verifier service: signed renewal links, while its
    #: ``node_peers`` follow links only back, so a fraudster's key cannot name another node's stake): a
    #: job under any of them keeps the stake from being withdrawn (A7, issue 17)
    later_peers: Any = None
    #: the key whose signed proof this verifier judged for a job (the verifier service): an upheld
    #: dispute slashes that key's stake, not the one of the PeerID the escrow record names (issue 17)
    proof_key: Callable[[str], str | None] | None = None
    #: the payout wallet of the node that did this job (by job id) as the verifier believes it: what the
    #: key that signed the job's proof stated, or the operator's config, never the coordinator's row nor
    #: the PeerID the escrow record names (issue 17): a resolve pays the node only there. None: the
    #: escrow record's wallet (in-process ledgers of tests and tools)
    payout_wallet: Callable[[str], str | None] | None = None
    #: the chain (:class:`~cyxwiz.ledger.chain.Chain`): whether the arbiter's refund an upheld-dispute
    #: slash rests on landed
    chain: Any = None

    def approve(self, request: CosignRequest) -> ReportAttestation | None:
        """Raises CosignRefusedError (or the report's own refusal); returns the checked attestation."""
        if request.kind not in KINDS:
            raise CosignRefusedError(f"unknown move {request.kind!r}", field="kind", rule="F1")
        try:
            message = Message.from_bytes(request.message)
        except Exception:  # solders raises its own parse errors
            raise CosignRefusedError("the message does not parse", field="message") from None
        moves = _moves(message)
        if request.kind in ("unstake", "unstake-request"):
            from cyxwiz.ledger.unstake_rule import approve_unstake

            approve_unstake(self, request, moves)
            return None
        record = self.lookup(request.job_id)
        if request.kind == "slash":
            return self._slash(request, record, moves)
        escrow = Pubkey.from_string(record.escrow_account)
        attestation = None
        if request.kind == "release":
            attestation = self._release(request, record)
            dest = txbuild.token_account_of(Pubkey.from_string(attestation.node_wallet), self.mint)
            source, memo = escrow, f"report={attestation.report_sha256}"
        elif request.kind == "refund":
            self._refund(record, escrow)
            dest = txbuild.token_account_of(Pubkey.from_string(record.user_wallet), self.mint)
            source, memo = escrow, f"cyxwiz:escrow:refund:{record.job_id}"
        elif request.kind == "dispute":
            self._state(record, EscrowState.LOCKED, EscrowState.SETTLING, EscrowState.DISPUTING)
            if self.dispute_multisig is None:
                raise CosignRefusedError("no dispute multisig is configured", field="dispute_multisig")
            self._funded_by(record, escrow, "a dispute")
            dest = txbuild.dispute_address(self.rent_owner, record.job_id, record.user_wallet)
            if moves.initialized != [(dest, self.dispute_multisig)]:
                raise CosignRefusedError(
                    "the dispute escrow must be owned by the dispute multisig", field="message", rule="F1"
                )
            source, memo = escrow, f"cyxwiz:escrow:dispute:{record.job_id}"
        else:  # resolve: out of the dispute escrow, to the user or the assigned node
            self._state(record, EscrowState.DISPUTED, EscrowState.RELEASING, EscrowState.REFUNDING)
            # Both accounts are derived from the user's wallet: a rewritten wallet names a dispute escrow
            # into which nothing of this job was ever moved (issue 17; F1).
            self._funded_by(record, escrow, "a resolve")
            source = txbuild.dispute_address(self.rent_owner, record.job_id, record.user_wallet)
            allowed = {txbuild.token_account_of(Pubkey.from_string(record.user_wallet), self.mint)}
            if record.node_wallet and self._nodes_own(record):
                allowed.add(txbuild.token_account_of(Pubkey.from_string(record.node_wallet), self.mint))
            dest = next((d for _s, d, _a in moves.transfers if d in allowed), Pubkey.default())
            memo = f"cyxwiz:escrow:resolve:{record.job_id}"
        self._one_transfer(moves, source=source, dest=dest, amount=record.amount)
        if not any(memo in text for text in moves.memos):
            raise CosignRefusedError(f"the memo must carry {memo!r}", field="message", rule="F1")
        self._note_upheld(request, record, dest)
        return attestation

    def _nodes_own(self, record: EscrowRecord) -> bool:
        if self.payout_wallet is None:
            return True
        return self.payout_wallet(record.job_id) == record.node_wallet

    def _note_upheld(self, request: CosignRequest, record: EscrowRecord, dest: Pubkey) -> None:
        """The arbiter's resolve refunding the user, checked and about to be co-signed: the one fact a
        slash without a fraud report may rest on, kept in the verifier's own book; a dispute escrow."""
        if self.verdicts is None or request.kind not in ("resolve", "dispute"):
            return  # a release or refund upholds nothing: no token address to derive (issue 17)
        if request.kind == "resolve" and dest == txbuild.token_account_of(
            Pubkey.from_string(record.user_wallet), self.mint
        ):
            import hashlib

            digest = hashlib.sha256(request.message).hexdigest()
            self.verdicts.record_upheld(record.job_id, escrow=record.escrow_account, message_sha256=digest)
        if request.kind == "dispute":  # the job's funds are there now
            self.verdicts.record_dispute(
                record.job_id, account=str(dest), node_peer_id=record.node_peer_id or ""
            )

    def _release(self, request: CosignRequest, record: EscrowRecord) -> ReportAttestation:
        self._state(record, EscrowState.LOCKED, EscrowState.SETTLING, EscrowState.RELEASING)
        attestation = self.attestations.check(
            request.report,
            job_id=record.job_id,
            node_peer_id=record.node_peer_id,
            node_wallet=record.node_wallet,
            escrow=record.escrow_account,
        )
        if self.verdicts is not None:  # before signing: from now on no refund of this job is co-signed
            self.verdicts.record(attestation)
        return attestation

    def _refund(self, record: EscrowRecord, escrow: Pubkey) -> None:
        self._state(record, EscrowState.LOCKED, EscrowState.REFUNDING)
        self._no_pass(record.job_id, "refund")
        self._funded_by(record, escrow, "a refund")

    def _funded_by(self, record: EscrowRecord, escrow: Pubkey, move: str) -> None:
        """The escrow store is the coordinator's: the wallet a refund pays must be the one the escrow
        account's own address was derived from, or a rewritten row would send the funds elsewhere."""
        if escrow != txbuild.escrow_address(self.rent_owner, record.job_id, record.user_wallet):
            raise CosignRefusedError(
                f"{move} goes back to the wallet that funded the escrow (its address is derived "
                "from that wallet)", field="user_wallet", rule="F1",
            )  # fmt: skip

    def _no_pass(self, job_id: str, move: str) -> None:
        if self.verdicts is not None:
            self.verdicts.require_no_pass(job_id, move=move)

    def _stakes(self) -> Any:
        if self.stakes is None or self.stake_policy is None:
            raise CosignRefusedError("this verifier keeps no stake book", field="kind", rule="F1")
        return self.stakes

    def _slash(self, request: CosignRequest, record: EscrowRecord, moves: _Moves) -> ReportAttestation | None:
        """Only on a ``fraud`` report for this job and node (or a dispute the arbiter upheld), only the
        configured share, only to its user."""
        from cyxwiz.ledger.stake import upheld_dispute
        from cyxwiz.ledger.unstake_rule import note_slash

        attestation = None
        if record.escrow_account != str(
            txbuild.escrow_address(self.rent_owner, record.job_id, record.user_wallet)
        ):  # the share goes to the wallet that funded the escrow, not to one a rewritten row names
            raise CosignRefusedError(
                "a slash pays the wallet that funded the job's escrow", field="user_wallet", rule="F1"
            )
        if request.report is None:
            upheld_dispute(record)
            if self.verdicts is not None:  # the escrow store's "upheld" is the coordinator's word
                from cyxwiz.ledger.verdicts import require_upheld

                require_upheld(
                    self.verdicts, self.chain, job_id=record.job_id, escrow=record.escrow_account,
                    evidence=request.statement,
                )  # fmt: skip
            peer, proof = record.node_peer_id or "", "dispute-upheld"
            if self.proof_key is not None:  # the key the verifier judged, not the escrow row's PeerID
                peer = self.proof_key(record.job_id) or ""
                if not peer:
                    raise CosignRefusedError(
                        "this verifier judged no signed proof of the job: whose stake the dispute "
                        "takes would be the coordinator's word", field="report", rule="F1",
                    )  # fmt: skip
        else:
            attestation = self.attestations.check(
                request.report, job_id=record.job_id, node_peer_id=record.node_peer_id,
                node_wallet=record.node_wallet, escrow=record.escrow_account, verdicts=("fraud",),
            )  # fmt: skip
            peer, proof = attestation.node_peer_id, f"report={attestation.report_sha256}"
            self._no_pass(record.job_id, "slash")  # a job that passed was not a fraud
        book = self._stakes()
        if book.slashed_for(record.job_id) is not None:
            raise CosignRefusedError("this job's fraud was already slashed", field="job_id", rule="F2")
        account, stake = self._node_stake(book, peer, moves)
        held = stake.amount if self.chain is None else self.chain.token_amount(account) or 0
        share = held * self.stake_policy.slash_bps // 10_000
        user = txbuild.token_account_of(Pubkey.from_string(record.user_wallet), self.mint)
        if moves.transfers != [(account, user, share)] or moves.closes:
            raise CosignRefusedError(
                "a slash moves exactly the configured share of the stake to the job's user",
                field="message", rule="F1",
            )  # fmt: skip
        if not any(proof in text for text in moves.memos):
            raise CosignRefusedError(f"the memo must carry {proof!r}", field="message", rule="F1")
        note_slash(self, record, request)  # in the verifier's own book: an unstake waits for it to land
        return attestation

    def _node_stake(self, book: Any, peer: str, moves: _Moves) -> tuple[Pubkey, Any]:
        """The stake the slash takes: the account derived from one of the PeerIDs linked to the node the
        proof names (not the book's ``stake_account``, a row the coordinator writes), never another
        node's; its share is of what that account holds on chain."""
        from cyxwiz.ledger.stake import stake_address

        linked = {peer, *(self.node_peers(peer) if self.node_peers is not None else ())}
        held = {
            stake_address(self.rent_owner, p): r for p in sorted(linked) if (r := book.find(p)) is not None
        }
        source = moves.transfers[0][0] if len(moves.transfers) == 1 else None
        if source not in held:
            raise CosignRefusedError(
                "a slash takes the stake of the node the proof names", field="message", rule="F1"
            )
        return source, held[source]

    @staticmethod
    def _state(record: EscrowRecord, *allowed: EscrowState) -> None:
        if record.state not in allowed:
            raise CosignRefusedError(
                f"the escrow is {record.state.value}; this move is not allowed now", field="job_id", rule="F2"
            )

    def _one_transfer(self, moves: _Moves, *, source: Pubkey, dest: Pubkey, amount: int) -> None:
        if moves.transfers != [(source, dest, amount)]:
            raise CosignRefusedError(
                "the transaction must move exactly the whole escrow to the allowed recipient",
                field="message", rule="F1",
            )  # fmt: skip
        if moves.closes != [(source, self.rent_owner)]:
            raise CosignRefusedError(
                "the transaction must close the emptied escrow to the rent owner", field="message", rule="F1"
            )


@dataclass(frozen=True)
class KeyCosigner:
    """The verifier's rules and key in this process (tests, single-host tools)."""

    keypair: txbuild.Signer
    policy: VerifierPolicy

    def pubkey(self) -> Pubkey:
        return self.keypair.pubkey()

    def cosign(self, request: CosignRequest) -> Signature:
        self.policy.approve(request)
        return txbuild.sign_message(self.keypair, Message.from_bytes(request.message), request.message)

    def passing(self, job_id: str) -> str | None:
        """The passing attestation the verifier recorded for the job (the sweep releases it)."""
        book = self.policy.verdicts
        return None if book is None else book.passing(job_id)


def refusal_from(payload: object) -> CyxwizError:
    """Rebuild the precise refusal a remote co-signer sent (its ``code``) on this side."""
    from cyxwiz.ledger import attestation as att
    from cyxwiz.ledger.records import ProofRequiredError, WrongRecipientError
    from cyxwiz.ledger.stake import StakeLockedError
    from cyxwiz.ledger.unstake_rule import CooldownStartedError
    from cyxwiz.ledger.verdicts import ReleaseOwedError
    from cyxwiz.ledger.withdrawal import StakeWithdrawalError, StaleWithdrawalError

    known: list[type[CyxwizError]] = [
        CosignRefusedError, ReleaseOwedError, att.ReportRefusedError, att.ReportSignatureError,
        att.ReportSignerError, att.ReportBindingError, att.ReportVerdictError, ProofRequiredError,
        WrongRecipientError, StakeWithdrawalError, StaleWithdrawalError, StakeLockedError,
        CooldownStartedError,
    ]  # fmt: skip
    data = payload if isinstance(payload, dict) else {}
    cls = next((k for k in known if k.code == data.get("code")), CosignRefusedError)
    return cls(
        str(data.get("message") or "the verifier refused to co-sign"),
        field=data.get("field"),
        rule=data.get("rule") or "F1",
    )
