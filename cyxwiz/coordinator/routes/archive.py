"""Archives: a job's owner (or an admin) lists and reads its archived artifacts, nobody else (C2, D3).

The resource rule is the job's (``archive.read`` = its owner, or an admin with ``job:read:all``; a node is
refused by role: it produced the outputs and has no business reading the settled record). Bodies are
streamed verified from the store: plaintext of the client-side sealed model, checked against its SHA-256
(sent in ``x-content-sha256`` for the client to re-check).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from cyxwiz.audit import events as ev
from cyxwiz.coordinator.access import Access, Allow, coordinator

router = APIRouter(tags=["users"])


@router.get("/v1/archive")
def list_archives(
    request: Request, access: Annotated[Access, Depends(Allow("archive.list"))]
) -> list[dict[str, Any]]:
    """The caller's own jobs' archives (every job's for an admin allowed to read them all)."""
    ctx, caller = coordinator(request), access.who
    jobs = (
        ctx.store.list_jobs() if caller.role == "admin" else ctx.store.list_jobs(user_id=caller.principal_id)
    )
    return [{"job_id": job.job_id, "status": job.status, "objects": ctx.hooks.archive(job)} for job in jobs]


@router.get("/v1/jobs/{job_id}/archive")
def job_archive(
    job_id: str, request: Request, access: Annotated[Access, Depends(Allow("archive.read"))]
) -> dict[str, Any]:
    job = access.job
    assert job is not None
    return {"job_id": job_id, "status": job.status, "objects": coordinator(request).hooks.archive(job)}


@router.get("/v1/jobs/{job_id}/archive/{name:path}")
def read_archived(
    job_id: str, name: str, request: Request, access: Annotated[Access, Depends(Allow("archive.read"))]
) -> StreamingResponse:
    ctx, caller, job = coordinator(request), access.who, access.job
    assert job is not None
    info, chunks = ctx.hooks.open_archived(job, name)
    ctx.record(
        ev.data_access(
            actor_id=caller.principal_id, actor_type=caller.actor_type, resource=f"job:{job_id}/{name}",
            action="archive.read", ip_address=caller.ip,
        )
    )  # fmt: skip
    headers = {"content-length": str(info["size"]), "x-content-sha256": str(info["sha256"])}
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)
