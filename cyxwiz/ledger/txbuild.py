"""Instruction builders for the escrow's on-chain shape (F1, F2).

* One SPL token account per job at a deterministic address (``create_with_seed`` from the fee payer and
  a hash of the job id), owned by the SPL multisig (default 2-of-3: coordinator, verifier, arbiter).
* ``create`` is one atomic transaction: allocate + initialize the escrow account and move the user's
  funds in (the user signs the transfer; the payer signs for rent and fees).
* ``settle`` (release / refund) is one atomic transaction: move the whole balance out with two multisig
  signatures and close the account. Closing is the on-chain half of "each escrow moves at most once": a
  second settle transaction, however it was built, finds no account to move from.
* Every transaction carries a memo naming the job and the action so the chain itself shows why funds moved.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import (
    CreateAccountParams,
    CreateAccountWithSeedParams,
    create_account,
    create_account_with_seed,
)
from solders.transaction import Transaction
from spl.memo.constants import MEMO_PROGRAM_ID
from spl.memo.instructions import create_memo
from spl.memo.models import MemoParams
from spl.token import instructions as token_ix
from spl.token.constants import ACCOUNT_LEN, MINT_LEN, MULTISIG_LEN, TOKEN_PROGRAM_ID
from spl.token.models import (
    CloseAccountParams,
    InitializeAccountParams,
    InitializeMintParams,
    InitializeMultisigParams,
    MintToParams,
    TransferCheckedParams,
)

from cyxwiz.keys.solana import SourceSigner

U64_MAX = 2**64 - 1


def escrow_seed(job_id: str, user: Pubkey | str) -> str:
    """32-character seed (the system program's limit) derived from the job id and the funding wallet.

    The wallet is part of the address so that the escrow itself says whom a refund returns to: the
    verifier, which co-signs refunds but cannot trust the control plane's database, derives the account
    from the wallet it is asked to refund, and a made-up wallet names an account that holds nothing (F1).
    """
    return "cx" + hashlib.sha256(f"{job_id}:{user}".encode()).hexdigest()[:30]


def escrow_address(payer: Pubkey, job_id: str, user: Pubkey | str) -> Pubkey:
    return Pubkey.create_with_seed(payer, escrow_seed(job_id, user), TOKEN_PROGRAM_ID)


def dispute_seed(job_id: str, user: Pubkey | str) -> str:
    """Like :func:`escrow_seed`: the funding wallet is part of the address, so the dispute escrow too
    says whom the arbiter's refund returns to — a rewritten wallet names an account that holds nothing."""
    return "cd" + hashlib.sha256(f"{job_id}:{user}".encode()).hexdigest()[:30]


def dispute_address(payer: Pubkey, job_id: str, user: Pubkey | str) -> Pubkey:
    """The job's dispute escrow: owned by the dispute multisig, which needs the arbiter (F1)."""
    return Pubkey.create_with_seed(payer, dispute_seed(job_id, user), TOKEN_PROGRAM_ID)


@functools.lru_cache(maxsize=4096)
def token_account_of(owner: Pubkey, mint: Pubkey) -> Pubkey:
    """The owner's associated token account for ``mint``: where a wallet receives tokens. A pure function
    of its arguments (a program-derived address: a dozen SHA-256 and a curve check), so remembered: every
    escrow move of a user or node derives the same one."""
    return token_ix.get_associated_token_address(owner, mint)


def memo(signer: Pubkey, text: str) -> Instruction:
    return create_memo(MemoParams(program_id=MEMO_PROGRAM_ID, signer=signer, message=text.encode()))


#: A key that signs Solana messages: an in-memory keypair, or a key source (file or PKCS#11 token, A7)
#: whose Ed25519 signature over the message is handed to solders as a presigned signature.
Signer = Keypair | SourceSigner


def sign(
    instructions: Sequence[Instruction], *, payer: Signer, signers: Sequence[Signer], blockhash: Hash
) -> Transaction:
    unique: dict[Pubkey, Signer] = {payer.pubkey(): payer}
    for keypair in signers:
        unique.setdefault(keypair.pubkey(), keypair)
    message = Message.new_with_blockhash(list(instructions), payer.pubkey(), blockhash)
    ready = [s if isinstance(s, Keypair) else s.presigner(message) for s in unique.values()]
    return Transaction(ready, message, blockhash)


def sign_message(signer: Signer, message: Message, raw: bytes | None = None) -> Signature:
    """One signer's signature over a message (for transactions whose signatures come from several places).

    ``raw``: ``bytes(message)`` when the caller has it already (serialising is not free, and a move's
    message is signed by several keys)."""
    data = bytes(message) if raw is None else raw
    if isinstance(signer, Keypair):
        return signer.sign_message(data)
    return signer.presigner(message).sign_message(data)


def create_escrow(
    *,
    payer: Pubkey,
    user: Pubkey,
    user_token: Pubkey,
    mint: Pubkey,
    decimals: int,
    multisig: Pubkey,
    job_id: str,
    amount: int,
    rent: int,
    owner: str | None = None,
) -> list[Instruction]:
    """``owner`` (the submitting user's id) goes into the memo when the user signs the lock, so signed
    bytes cannot be passed off as another user's submission (C2)."""
    escrow = escrow_address(payer, job_id, user)
    note = f"cyxwiz:escrow:create:{job_id}" + (f":user={owner}" if owner is not None else "")
    return [
        create_account_with_seed(
            CreateAccountWithSeedParams(
                from_pubkey=payer,
                to_pubkey=escrow,
                base=payer,
                seed=escrow_seed(job_id, user),
                lamports=rent,
                space=ACCOUNT_LEN,
                owner=TOKEN_PROGRAM_ID,
            )
        ),
        token_ix.initialize_account(
            InitializeAccountParams(program_id=TOKEN_PROGRAM_ID, account=escrow, mint=mint, owner=multisig)
        ),
        token_ix.transfer_checked(
            TransferCheckedParams(
                program_id=TOKEN_PROGRAM_ID,
                source=user_token,
                mint=mint,
                dest=escrow,
                owner=user,
                amount=amount,
                decimals=decimals,
            )
        ),
        memo(payer, note),
    ]


def settle_escrow(
    *,
    payer: Pubkey,
    escrow: Pubkey,
    mint: Pubkey,
    decimals: int,
    multisig: Pubkey,
    recipient_wallet: Pubkey,
    amount: int,
    authority_signers: Sequence[Pubkey],
    memo_text: str,
    rent_owner: Pubkey | None = None,
) -> list[Instruction]:
    """Move ``amount`` (the whole escrow) to the recipient wallet's token account, then close the escrow.

    The escrow's rent goes back to ``rent_owner`` (default: the fee payer, who paid it).
    """
    dest = token_account_of(recipient_wallet, mint)
    signers = list(authority_signers)
    return [
        token_ix.create_idempotent_associated_token_account(payer, recipient_wallet, mint),
        *_move_and_close(
            escrow=escrow,
            mint=mint,
            decimals=decimals,
            multisig=multisig,
            dest=dest,
            amount=amount,
            signers=signers,
            rent_owner=rent_owner or payer,
        ),
        memo(payer, memo_text),
    ]


def dispute_escrow(
    *,
    payer: Pubkey,
    escrow: Pubkey,
    mint: Pubkey,
    decimals: int,
    multisig: Pubkey,
    dispute_multisig: Pubkey,
    job_id: str,
    user: Pubkey | str,
    amount: int,
    rent: int,
    authority_signers: Sequence[Pubkey],
) -> list[Instruction]:
    """Move the whole escrow into the job's dispute escrow (owned by ``dispute_multisig``) and close it."""
    target = dispute_address(payer, job_id, user)
    return [
        create_account_with_seed(
            CreateAccountWithSeedParams(
                from_pubkey=payer,
                to_pubkey=target,
                base=payer,
                seed=dispute_seed(job_id, user),
                lamports=rent,
                space=ACCOUNT_LEN,
                owner=TOKEN_PROGRAM_ID,
            )
        ),
        token_ix.initialize_account(
            InitializeAccountParams(
                program_id=TOKEN_PROGRAM_ID, account=target, mint=mint, owner=dispute_multisig
            )
        ),
        *_move_and_close(
            escrow=escrow,
            mint=mint,
            decimals=decimals,
            multisig=multisig,
            dest=target,
            amount=amount,
            signers=list(authority_signers),
            rent_owner=payer,
        ),
        memo(payer, f"cyxwiz:escrow:dispute:{job_id}"),
    ]


def _move_and_close(
    *,
    escrow: Pubkey,
    mint: Pubkey,
    decimals: int,
    multisig: Pubkey,
    dest: Pubkey,
    amount: int,
    signers: list[Pubkey],
    rent_owner: Pubkey,
) -> list[Instruction]:
    return [
        token_ix.transfer_checked(
            TransferCheckedParams(
                program_id=TOKEN_PROGRAM_ID,
                source=escrow,
                mint=mint,
                dest=dest,
                owner=multisig,
                amount=amount,
                decimals=decimals,
                signers=signers,
            )
        ),
        token_ix.close_account(
            CloseAccountParams(
                program_id=TOKEN_PROGRAM_ID, account=escrow, dest=rent_owner, owner=multisig, signers=signers
            )
        ),
    ]


# -- provisioning (demo / tests / first-time setup on a cluster) -------------------------------------


def create_mint(
    *, payer: Pubkey, mint: Pubkey, authority: Pubkey, decimals: int, rent: int
) -> list[Instruction]:
    return [
        create_account(
            CreateAccountParams(
                from_pubkey=payer, to_pubkey=mint, lamports=rent, space=MINT_LEN, owner=TOKEN_PROGRAM_ID
            )
        ),
        token_ix.initialize_mint(
            InitializeMintParams(
                decimals=decimals, program_id=TOKEN_PROGRAM_ID, mint=mint, mint_authority=authority
            )
        ),
    ]


def create_multisig(
    *, payer: Pubkey, multisig: Pubkey, signers: Sequence[Pubkey], threshold: int, rent: int
) -> list[Instruction]:
    return [
        create_account(
            CreateAccountParams(
                from_pubkey=payer,
                to_pubkey=multisig,
                lamports=rent,
                space=MULTISIG_LEN,
                owner=TOKEN_PROGRAM_ID,
            )
        ),
        token_ix.initialize_multisig(
            InitializeMultisigParams(
                program_id=TOKEN_PROGRAM_ID, multisig=multisig, m=threshold, signers=list(signers)
            )
        ),
    ]


def fund_wallet(
    *, payer: Pubkey, wallet: Pubkey, mint: Pubkey, mint_authority: Pubkey, amount: int
) -> list[Instruction]:
    """Create the wallet's token account (if needed) and mint ``amount`` into it."""
    instructions = [token_ix.create_idempotent_associated_token_account(payer, wallet, mint)]
    if amount:
        instructions.append(
            token_ix.mint_to(
                MintToParams(
                    program_id=TOKEN_PROGRAM_ID,
                    mint=mint,
                    dest=token_account_of(wallet, mint),
                    mint_authority=mint_authority,
                    amount=amount,
                )
            )
        )
    return instructions


RENT_SIZES = {"mint": MINT_LEN, "account": ACCOUNT_LEN, "multisig": MULTISIG_LEN}
