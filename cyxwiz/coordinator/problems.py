"""RFC 9457 problem+json refusals, each one audited (SPEC H2: every auth/authz decision is logged).

Every refusal the API makes passes through here: library errors (the one hierarchy), request validation
(malformed JSON → 400, unknown or bad fields → 422), body caps (413) and rate limits (429).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cyxwiz.audit import AuditSink
from cyxwiz.audit import events as ev
from cyxwiz.errors import CyxwizError, RateLimitError
from cyxwiz.transport.identity import peer_from_scope

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_body(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:cyxwiz:problem:{code}",
        "title": code.replace("-", " "),
        "status": status,
        "detail": detail,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def _actor(scope: MutableMapping[str, Any]) -> tuple[str, ev.ActorType]:
    state = scope.get("state") or {}
    caller = state.get("caller")
    if caller is not None:
        return str(caller.principal_id), ev.ActorType(caller.actor_type)
    peer = peer_from_scope(scope)
    if peer is not None:
        return peer.peer_id, ev.ActorType.NODE
    ip = (scope.get("client") or ("unknown", 0))[0]
    return str(ip), ev.ActorType.ANONYMOUS


def _ip(scope: MutableMapping[str, Any]) -> str | None:
    host = (scope.get("client") or (None, 0))[0]
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None


def audit_refusal(
    audit: AuditSink | None, scope: MutableMapping[str, Any], status: int, code: str, detail: str
) -> None:
    if audit is None:
        return
    actor_id, actor_type = _actor(scope)
    ip_address = _ip(scope)
    try:
        event_kwargs: dict[str, Any] = {
            "actor_id": actor_id,
            "actor_type": actor_type,
            "ip_address": ip_address,
        }
        if status == 401:
            audit.record(
                ev.auth_attempt(success=False, method="mtls+jwt", reason=f"{code}: {detail}", **event_kwargs)
            )
        else:
            audit.record(
                ev.access_decision(
                    resource=f"{scope.get('method', 'WS')} {scope.get('path', '')}",
                    action="request",
                    allowed=False,
                    reason=f"{status} {code}: {detail}",
                    **event_kwargs,
                )
            )
    except CyxwizError:  # an audit-model refusal must not turn a 4xx into a 500
        log.exception("could not audit refusal")


async def send_problem(
    scope: dict[str, Any], send: Any, exc: Exception, *, audit: AuditSink | None = None
) -> None:
    """Refuse at the raw ASGI level (middleware, websockets before accept)."""
    status, body, headers = _render(exc)
    if not getattr(exc, "audited", False):  # a decision already recorded is not recorded twice
        audit_refusal(audit, scope, status, body["type"].rsplit(":", 1)[-1], body["detail"])
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": body["detail"][:120]})
        return
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


def _render(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers: dict[str, str] = {}
    if isinstance(exc, CyxwizError):
        status = exc.http_status
        body = problem_body(status, exc.code, exc.message, field=exc.field, rule=exc.rule, hint=exc.hint)
        if isinstance(exc, RateLimitError):
            headers["retry-after"] = "1"
        if status == 401:
            headers["www-authenticate"] = 'Bearer realm="cyxwiz"'
        return status, body, headers
    return 500, problem_body(500, "internal", "internal error"), headers


def install_handlers(app: FastAPI, *, audit: AuditSink | None) -> None:
    """Map every refusal to problem+json and audit it."""

    def respond(request: Request, exc: Exception) -> JSONResponse:
        status, body, headers = _render(exc)
        if not getattr(exc, "audited", False):
            audit_refusal(audit, request.scope, status, body["type"].rsplit(":", 1)[-1], body["detail"])
        return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)

    @app.exception_handler(CyxwizError)
    async def _cyxwiz(request: Request, exc: CyxwizError) -> JSONResponse:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        if first.get("type") == "json_invalid":
            status, code, detail = 400, "malformed-json", "request body is not valid JSON"
        elif first.get("type") == "extra_forbidden":
            status, code, detail = 422, "unknown-field", f"unknown field {field!r}"
        else:
            status, code, detail = 422, "validation", str(first.get("msg", "invalid request"))
        audit_refusal(audit, request.scope, status, code, detail)
        body = problem_body(status, code, detail, field=field, rule="G")
        return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http")
        audit_refusal(audit, request.scope, exc.status_code, code, str(exc.detail))
        body = problem_body(exc.status_code, code, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM_JSON)
