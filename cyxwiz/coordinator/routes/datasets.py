"""Datasets: a user uploads a local file into their own area of the object store (G1, D3, C2)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyxwiz.coordinator.access import Access, Allow, coordinator
from cyxwiz.coordinator.schemas import DatasetUploadRequest

router = APIRouter(tags=["users"])


@router.post("/v1/datasets", status_code=201)
def upload(
    body: DatasetUploadRequest, request: Request, access: Annotated[Access, Depends(Allow("datasets.upload"))]
) -> dict[str, Any]:
    """A presigned PUT bound to the file's SHA-256 and size, into ``users/{caller}/datasets/``; the answer's
    ``uri`` and ``sha256`` are what a job then names. Nothing is stored until the PUT arrives."""
    return coordinator(request).hooks.presign_dataset_upload(
        access.who.principal_id, sha256=body.sha256, size=body.size, suffix=body.suffix
    )
