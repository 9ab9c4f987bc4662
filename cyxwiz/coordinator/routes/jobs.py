"""Jobs: users submit and read theirs (C2); the assigned node reports on its job with the job token (C3)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyxwiz.audit import events as ev
from cyxwiz.coordinator.access import Access, Allow, coordinator
from cyxwiz.coordinator.schemas import (
    OBJECT_NAME,
    CompletionRequest,
    DisputeRequest,
    FundingRequest,
    ProgressRequest,
    SubmitRequest,
    UrlRequest,
)
from cyxwiz.errors import AuthorizationError, ConflictError, ValidationError

router = APIRouter(tags=["jobs"])


@router.post("/v1/jobs", status_code=201, tags=["users"])
def submit(
    body: SubmitRequest, request: Request, access: Annotated[Access, Depends(Allow("jobs.submit"))]
) -> dict[str, Any]:
    ctx, caller = coordinator(request), access.who
    spec, duration = ctx.hooks.validate_spec(body.spec, user_id=caller.principal_id)
    job = ctx.store.create_job(
        user_id=caller.principal_id, spec=spec, duration_s=duration, job_id=_funded_job_id(spec)
    )
    try:
        ctx.hooks.on_submitted(job)
    except Exception:
        ctx.store.update_job(job.job_id, status="failed")
        raise
    ctx.record(
        ev.job_submitted(
            user_id=caller.principal_id,
            job_id=job.job_id,
            job_type=str(spec.get("job_type")),
            ip_address=caller.ip,
        )
    )
    return ctx.store.job(job.job_id).public()


def _funded_job_id(spec: dict[str, Any]) -> str | None:
    """The id the user's client signed the escrow lock for (F1); a taken id is a 409, never a takeover."""
    from cyxwiz.ids import JOB_ID

    funding = spec.get("funding")
    if funding is None:
        return None
    job_id = funding.get("job_id") if isinstance(funding, dict) else None
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise ValidationError(
            "must be a job id in canonical form (job-<20 hex>, cyxwiz.ids.new_job_id)",
            field="spec.funding.job_id",
            rule="G1",
        )
    return job_id


@router.post("/v1/jobs/{job_id}/funding", tags=["users"])
def fund(
    job_id: str,
    body: FundingRequest,
    request: Request,
    access: Annotated[Access, Depends(Allow("jobs.fund"))],
) -> dict[str, Any]:
    """The owner's client hands in the escrow lock it signed for a job whose lifecycle run waits for one
    (started from the Prefect UI or Python without funding). Checked like a submission's; once only (F1)."""
    ctx, caller, job = coordinator(request), access.who, access.job
    assert job is not None
    funding = ctx.hooks.check_job_funding(job, body.funding, user_id=caller.principal_id)
    return ctx.store.attach_funding(job_id, funding).public()


@router.get("/v1/jobs", tags=["users"])
def list_jobs(
    request: Request, access: Annotated[Access, Depends(Allow("jobs.list"))]
) -> list[dict[str, Any]]:
    store, caller = coordinator(request).store, access.who
    if caller.role == "admin":
        found = store.list_jobs()
    elif caller.role == "node":
        found = store.list_jobs(node_id=caller.principal_id)
    else:
        found = store.list_jobs(user_id=caller.principal_id)
    return [j.public() for j in found]


@router.get("/v1/jobs/{job_id}", tags=["users"])
def get_job(job_id: str, access: Annotated[Access, Depends(Allow("jobs.read"))]) -> dict[str, Any]:
    assert access.job is not None
    return access.job.public()


@router.post("/v1/jobs/{job_id}/dispute", tags=["users"])
def dispute(
    job_id: str,
    body: DisputeRequest,
    request: Request,
    access: Annotated[Access, Depends(Allow("jobs.dispute"))],
) -> dict[str, Any]:
    """The owner disputes a verified job while its release is held (issue 20, F1): strictly inside the
    window, once; the control plane then moves the escrow into the dispute escrow for the arbiter."""
    import datetime as dt

    from cyxwiz.coordinator.holds import HoldBook
    from cyxwiz.errors import CyxwizError

    ctx, caller = coordinator(request), access.who
    evidence = body.model_dump(exclude_none=True)
    try:
        hold = HoldBook(ctx.store.engine).file_dispute(
            job_id=job_id, user_id=caller.principal_id, evidence=evidence, now=dt.datetime.now(dt.UTC)
        )
    except CyxwizError as exc:
        ctx.record(
            _dispute_event(job_id, caller, success=False, reason=f"refused: {exc.code}: {exc.message}")
        )
        raise
    ctx.record(_dispute_event(job_id, caller, success=True, reason=f"{body.kind}: {body.reason}"))
    return hold.public()


def _dispute_event(job_id: str, caller: Any, *, success: bool, reason: str) -> ev.SecurityEvent:
    return ev.payment(
        action="escrow.dispute-filed", job_id=job_id, amount_lamports=0, actor_id=caller.principal_id,
        actor_type=caller.actor_type, success=success, reason=reason[:300],
    )  # fmt: skip


@router.post("/v1/jobs/{job_id}/progress", tags=["nodes"])
def progress(
    job_id: str,
    body: ProgressRequest,
    request: Request,
    access: Annotated[Access, Depends(Allow("jobs.progress"))],
) -> dict[str, Any]:
    job = access.job
    assert job is not None
    if job.status not in ("assigned", "running"):
        raise ConflictError(f"job is {job.status}", field="job_id")
    coordinator(request).store.update_job(job_id, progress=body.model_dump())
    return {"job_id": job_id, "accepted": True}


@router.post("/v1/jobs/{job_id}/completion", tags=["nodes"])
def completion(
    job_id: str,
    body: CompletionRequest,
    request: Request,
    access: Annotated[Access, Depends(Allow("jobs.completion"))],
) -> dict[str, Any]:
    ctx, caller, job = coordinator(request), access.who, access.job
    assert job is not None and caller.peer is not None
    if access.resend_only:
        # Past its proof the job token may only re-send that same proof: the answer to its first send was
        # lost (a coordinator restart, issue 21). It is in already and nothing is stored twice (F2).
        same = job.proof is not None and job.proof == dict(body.proof)
        access.decide_resend(ctx, same=same)
        return {"job_id": job_id, "status": job.status}
    if job.status != "running":
        raise ConflictError(f"job is {job.status}", field="job_id")
    status = ctx.hooks.verify_completion(job, body.proof, caller.peer)
    ctx.store.update_job(job_id, proof=dict(body.proof), status=status)
    return {"job_id": job_id, "status": status}


@router.post("/v1/jobs/{job_id}/urls", tags=["nodes"])
def urls(
    job_id: str, body: UrlRequest, request: Request, access: Annotated[Access, Depends(Allow("jobs.urls"))]
) -> dict[str, Any]:
    job = access.job
    assert job is not None
    if not OBJECT_NAME.fullmatch(body.name) or ".." in body.name.split("/"):
        raise ValidationError("object name must be a relative path without '..'", field="name", rule="E5")
    if body.kind == "input" and body.method != "GET":
        raise AuthorizationError("inputs are read-only", field="method", rule="C3")
    ctx = coordinator(request)
    url = ctx.hooks.presign(
        job, kind=body.kind, name=body.name, method=body.method, sha256=body.sha256, size=body.size
    )
    from cyxwiz.coordinator.fencing import url_grant_id

    link = url.get("url") if isinstance(url, dict) else url
    grant = url_grant_id(str(link)) if link else None
    if grant is not None:  # dies with this assignment: refused at our object mount after a re-dispatch (C3)
        ctx.store.record_grant(grant, job=job, kind="url")
    who = access.who
    ctx.record(
        ev.presigned_url_issued(
            actor_id=who.principal_id, actor_type=who.actor_type, key=f"{body.kind}/{body.name}",
            method=body.method, job_id=job_id, sha256=body.sha256, ip_address=who.ip,
        )
    )  # fmt: skip
    return {"job_id": job_id, "url": url, "method": body.method}
