"""Wallet: a user sees their own wallet only (C1, C2)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyxwiz.coordinator.access import Access, Allow, coordinator

router = APIRouter(tags=["users"])


@router.get("/v1/wallet")
def wallet(request: Request, access: Annotated[Access, Depends(Allow("wallet.read"))]) -> dict[str, Any]:
    return coordinator(request).hooks.wallet(access.who.principal_id)
