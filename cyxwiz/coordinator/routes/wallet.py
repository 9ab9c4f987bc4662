"""Wallet: a user sees their own wallet only (C1, C2)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyxwiz.coordinator.access import Access, Allow, coordinator

router = APIRouter(tags=["users"])


@router.get("/v1/wallet")
def wallet(request: Request, access: Annotated[Access, Depends(Allow("wallet.read"))]) -> dict[str, Any]:
    """The caller's own wallets, balances and escrows: those of the jobs the caller owns, nothing else."""
    ctx, user_id = coordinator(request), access.who.principal_id
    owned = [job.job_id for job in ctx.store.list_jobs(user_id=user_id)]
    return ctx.hooks.wallet(user_id, job_ids=owned)


@router.get("/v1/wallet/terms")
def funding_terms(
    request: Request, access: Annotated[Access, Depends(Allow("wallet.read"))]
) -> dict[str, Any]:
    """What the user's client needs to sign a job's escrow lock itself: mint, multisig, rent, blockhash."""
    del access
    return coordinator(request).hooks.funding_terms()
