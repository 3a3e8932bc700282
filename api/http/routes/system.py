"""Open endpoints (``/healthz``, ``/readyz``, ``/metrics``), the browser session, API keys, the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from ..access import (
    SESSION_COOKIE,
    Principal,
    Viewer,
    close_session,
    note_target,
    open_session,
    require,
)
from ..context import context_of
from ..models import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyView,
    Health,
    OperatorActionView,
    SessionInfo,
)
from ..pagination import Page, decode_cursor, naive_utc, page_of
from ..problems import API_PROBLEMS, Problem

open_router = APIRouter(tags=["health"])
router = APIRouter(prefix="/api/v1", tags=["access"], responses=API_PROBLEMS)


@open_router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@open_router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: Redis and the database answer",
    responses={503: {"model": Health, "description": "Redis or the database does not answer"}},
)
def readyz(request: Request):
    context = context_of(request)
    checks = {}
    try:
        context.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"{type(exc).__name__}: {exc}"
    try:
        with context.database.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"{type(exc).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    body = Health(status="ok" if healthy else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


@open_router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus exposition")
def metrics(request: Request) -> PlainTextResponse:
    """The workers' metrics (this host's multiprocess directory) and Redis state,
    as ``tradeflow metrics --raw`` prints them."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from actors.broker import RedisRoutes, routes_of
    from actors.telemetry import registry_for

    context = context_of(request)
    routes = routes_of(context.broker) if context.broker is not None else RedisRoutes(default=context.redis)
    body = generate_latest(registry_for(context.settings, routes))
    return PlainTextResponse(body.decode(), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/session",
    response_model=SessionInfo,
    summary="Open a browser session with a key (sets an HttpOnly, SameSite=Strict cookie)",
)
def create_session(request: Request, response: Response, principal: Viewer) -> SessionInfo:
    if principal.via_session:
        raise Problem("bad-request", "open a session with an API key, not with another session")
    context = context_of(request)
    ttl = context.settings.api_session_ttl_s
    response.set_cookie(
        SESSION_COOKIE,
        open_session(context, principal),
        max_age=ttl,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return SessionInfo(
        key_id=principal.key_id, key_name=principal.key_name, role=principal.role, expires_in_s=ttl
    )


@router.delete("/session", status_code=204, summary="Close the browser session")
def delete_session(request: Request, principal: Viewer) -> Response:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        close_session(context_of(request), session_id)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _key_view(key) -> ApiKeyView:
    return ApiKeyView.model_validate(key, from_attributes=True)


@router.get("/keys", response_model=list[ApiKeyView], summary="Every API key (admin)")
def list_keys(request: Request, principal: Annotated[Principal, require("keys.manage")]) -> list[ApiKeyView]:
    from storage import list_api_keys

    return [_key_view(key) for key in list_api_keys(context_of(request).database)]


@router.post("/keys", response_model=ApiKeyCreated, status_code=201, summary="Create an API key (admin)")
def create_key(
    request: Request, body: ApiKeyCreate, principal: Annotated[Principal, require("keys.manage")]
) -> ApiKeyCreated:
    from storage import create_api_key

    expires = naive_utc(body.expires_at) if body.expires_at else None
    try:
        key, token = create_api_key(
            context_of(request).database, name=body.name, role=body.role, expires_at=expires
        )
    except ValueError as exc:
        raise Problem("validation-error", str(exc)) from None
    note_target(request, f"key={key.key_id}", role=key.role)
    return ApiKeyCreated(**_key_view(key).model_dump(), token=token)


@router.delete("/keys/{key_id}", response_model=ApiKeyView, summary="Revoke an API key (admin)")
def revoke_key(
    request: Request, key_id: str, principal: Annotated[Principal, require("keys.manage")]
) -> ApiKeyView:
    from storage import UnknownApiKey, revoke_api_key

    try:
        return _key_view(revoke_api_key(context_of(request).database, key_id))
    except UnknownApiKey as exc:
        raise Problem("not-found", str(exc)) from None


@router.get(
    "/audit",
    response_model=Page[OperatorActionView],
    summary="The operator audit log: every action taken over the API, newest first",
)
def audit_log(
    request: Request,
    principal: Annotated[Principal, require("audit.read")],
    key_id: str | None = None,
    action: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[OperatorActionView]:
    from storage import list_operator_actions

    before = decode_cursor(cursor, arity=1)[0] if cursor else None
    if before is not None and not isinstance(before, int):
        raise Problem("invalid-cursor", "not an audit-log cursor")
    rows = list_operator_actions(
        context_of(request).database, before_id=before, key_id=key_id, action=action, limit=limit + 1
    )
    page, next_cursor = page_of(rows, limit=limit, key=lambda row: (row.id,))
    return Page[OperatorActionView](
        items=[OperatorActionView.model_validate(row, from_attributes=True) for row in page],
        next_cursor=next_cursor,
    )
