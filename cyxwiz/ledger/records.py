"""Value types and input rules of the escrow ledger (F1–F3, G1)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from solders.pubkey import Pubkey

from cyxwiz.errors import EscrowError, PaymentTooLowError, ValidationError
from cyxwiz.ledger.store import EscrowState
from cyxwiz.ledger.txbuild import U64_MAX

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_PROOF_REF = re.compile(r"^[A-Za-z0-9._:/#@+=-]{1,128}$")


class WrongRecipientError(EscrowError):
    """A release names a wallet other than the node the job was assigned to (F1, threat: payment fraud)."""

    code = "escrow-wrong-recipient"
    http_status = 403


class MissingSignatureError(EscrowError):
    """A move needs an authority signature this ledger does not hold (2-of-3 multisig, F1)."""

    code = "escrow-missing-signature"
    http_status = 403


class ProofRequiredError(EscrowError):
    """A release without a verified completion proof reference (F1)."""

    code = "escrow-proof-required"
    http_status = 422


@dataclass(frozen=True)
class EscrowRecord:
    """One job's escrow as the ledger knows it; amounts in integer base units of the mint."""

    job_id: str
    state: EscrowState
    amount: int
    mint: str
    user_wallet: str
    user_token_account: str
    escrow_account: str
    node_wallet: str | None
    node_peer_id: str | None
    proof_ref: str | None
    report: str | None
    report_sha256: str | None
    dispute_account: str | None
    deadline: datetime | None
    run_id: str | None
    dispute_reason: str | None
    resolution: str | None
    create_signature: str | None
    settle_signature: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EscrowRecord:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value if isinstance(self.state, EscrowState) else str(self.state)
        data["created_at"] = self.created_at.isoformat()
        data["updated_at"] = self.updated_at.isoformat()
        data["deadline"] = self.deadline.isoformat() if self.deadline else None
        return data

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", EscrowState(self.state))
        if self.deadline is not None and self.deadline.tzinfo is None:  # SQLite drops the zone: it was UTC
            object.__setattr__(self, "deadline", self.deadline.replace(tzinfo=UTC))


def check_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise ValidationError(
            "job id must be 1-64 characters of letters, digits, '.', '_', ':' or '-'",
            field="job_id",
            rule="G1",
        )
    return job_id


def check_amount(amount: object, *, minimum: int) -> int:
    # bool is an int subclass; True must not become a payment of 1.
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise ValidationError("amount must be an integer number of base units", field="amount", rule="F2")
    if amount <= 0:
        raise ValidationError("amount must be positive", field="amount", rule="F2")
    if amount > U64_MAX:
        raise ValidationError(
            "amount exceeds the u64 range of an SPL token amount", field="amount", rule="F2"
        )
    if amount < minimum:
        raise PaymentTooLowError(
            f"amount {amount} is below the minimum payment {minimum}", field="amount", rule="F3"
        )
    return amount


def check_wallet(value: object, *, field: str) -> Pubkey:
    if isinstance(value, Pubkey):
        return value
    if not isinstance(value, str):
        raise ValidationError("wallet must be a base58 public key", field=field, rule="F1")
    try:
        return Pubkey.from_string(value)
    except Exception:  # solders raises its own parse error types
        raise ValidationError("wallet is not a valid base58 public key", field=field, rule="F1") from None


def check_proof_ref(proof_ref: object) -> str:
    if not isinstance(proof_ref, str) or not proof_ref:
        raise ProofRequiredError(
            "a verified completion proof reference is required", field="proof_ref", rule="F1"
        )
    if not _PROOF_REF.match(proof_ref):
        raise ValidationError(
            "proof reference must be 1-128 characters of [A-Za-z0-9._:/#@+=-]", field="proof_ref", rule="F1"
        )
    return proof_ref


def check_reason(reason: object, *, field: str = "reason") -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError("a reason is required", field=field, rule="F1")
    if len(reason) > 500 or any(ord(ch) < 32 for ch in reason):
        raise ValidationError("reason must be at most 500 printable characters", field=field, rule="F1")
    return reason.strip()
