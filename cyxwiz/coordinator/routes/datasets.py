"""Datasets: a user uploads a local file into their own area of the object store (G1, D3, C2)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyxwiz.audit import events as ev
from cyxwiz.coordinator.access import Access, Allow, coordinator
from cyxwiz.coordinator.schemas import DatasetUploadRequest

router = APIRouter(tags=["users"])


@router.post("/v1/datasets", status_code=201)
def upload(
    body: DatasetUploadRequest, request: Request, access: Annotated[Access, Depends(Allow("datasets.upload"))]
) -> dict[str, Any]:
    """A presigned PUT bound to the file's SHA-256 and size, into ``users/{caller}/datasets/``; the answer's
    ``uri`` and ``sha256`` are what a job then names. Nothing is stored until the PUT arrives."""
    ctx, caller = coordinator(request), access.who
    grant = ctx.hooks.presign_dataset_upload(
        caller.principal_id, sha256=body.sha256, size=body.size, suffix=body.suffix
    )
    ctx.record(
        ev.presigned_url_issued(
            actor_id=caller.principal_id, actor_type=caller.actor_type, key=str(grant.get("uri", "dataset")),
            method="PUT", sha256=body.sha256, ip_address=caller.ip,
        )
    )  # fmt: skip
    return grant
