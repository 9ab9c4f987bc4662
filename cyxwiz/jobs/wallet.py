"""The user's own wallet: a sealed key file (0600, Argon2id + AES-256-GCM) that only the user's client opens.

The client signs each job's escrow lock with it (:func:`cyxwiz.ledger.client_funding.sign_funding`) and sends
only the signed bytes; the control plane never sees this key (F1, C2, D2). The passphrase comes from
``CYXWIZ_WALLET_PASSPHRASE`` or a 0600 file named by ``CYXWIZ_WALLET_PASSPHRASE_FILE``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from solders.keypair import Keypair

from cyxwiz.errors import ConfigError, KeyPermissionError, ValidationError
from cyxwiz.ids import new_job_id
from cyxwiz.ledger.client_funding import Funding, FundingTerms, sign_funding
from cyxwiz.ledger.keystore import KdfParams, load_keypair, read_pubkey, write_keypair

ENV_WALLET = "CYXWIZ_WALLET"
ENV_PASSPHRASE = "CYXWIZ_WALLET_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
ENV_PASSPHRASE_FILE = "CYXWIZ_WALLET_PASSPHRASE_FILE"  # noqa: S105


def passphrase_from(env: Mapping[str, str]) -> bytes:
    value = env.get(ENV_PASSPHRASE)
    if value:
        return value.encode()
    file = env.get(ENV_PASSPHRASE_FILE)
    if file:
        path = Path(file).expanduser()
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ConfigError(
                "wallet passphrase file not found", path=str(path), field=ENV_PASSPHRASE_FILE
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyPermissionError(
                "wallet passphrase file is readable by group or others", path=str(path), rule="D2"
            )
        return path.read_bytes().strip()
    raise ConfigError(
        "no passphrase for the wallet key",
        field=ENV_PASSPHRASE,
        rule="D2",
        hint=f"set {ENV_PASSPHRASE} or {ENV_PASSPHRASE_FILE}",
    )


@dataclass(frozen=True, kw_only=True)
class UserWallet:
    """A wallet key file plus the passphrase that opens it (opened only when signing)."""

    path: Path
    passphrase: bytes

    @classmethod
    def create(cls, path: Path, *, passphrase: bytes, kdf: KdfParams | None = None) -> UserWallet:
        """A new wallet key, sealed at ``path`` (refuses to overwrite an existing one)."""
        write_keypair(path, Keypair(), passphrase=passphrase, params=kdf)
        return cls(path=path, passphrase=passphrase)

    @classmethod
    def from_options(
        cls, *, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
    ) -> UserWallet:
        env = os.environ if env is None else env
        chosen = path or env.get(ENV_WALLET)
        if not chosen:
            raise ConfigError(
                "no wallet: the user's client signs the escrow lock with the user's own key",
                field=ENV_WALLET,
                rule="F1",
                hint=f"pass --wallet or set {ENV_WALLET}",
            )
        wallet = cls(path=Path(chosen).expanduser(), passphrase=passphrase_from(env))
        wallet.address  # fail early on a missing or group-readable file  # noqa: B018
        return wallet

    @property
    def address(self) -> str:
        return read_pubkey(self.path)

    def keypair(self) -> Keypair:
        return load_keypair(self.path, passphrase=self.passphrase)

    def fund(self, terms: FundingTerms, *, job_id: str, amount: int, user: str) -> Funding:
        return sign_funding(terms, wallet=self.keypair(), job_id=job_id, amount=amount, user=user)

    def fund_spec(self, spec: Mapping[str, Any], terms: FundingTerms, *, user: str) -> dict[str, Any]:
        """``spec`` with a fresh job id and this wallet's signed lock of its payment for ``user`` (the
        submitter's id: the certificate's CN through the coordinator, ``spec.user`` from Python)."""
        job_id = new_job_id()
        payment = spec.get("payment")
        if not isinstance(payment, int) or isinstance(payment, bool):
            raise ValidationError("must be an integer of base units", field="payment", rule="F3")
        funding = self.fund(terms, job_id=job_id, amount=payment, user=user)
        funded = {**dict(spec), "job_id": job_id, "funding": funding.to_dict()}
        verification = spec.get("verification")
        if isinstance(verification, Mapping) and verification.get("mode") == "redundant":
            # Refereed delegation pays each of two nodes from its own escrow: a second lock, same amount.
            replica = self.fund(terms, job_id=new_job_id(), amount=payment, user=user)
            funded["replica_funding"] = replica.to_dict()
        return funded
