"""Who may do what: API keys and browser sessions, roles, permissions, the operator audit log.

A request is authenticated by ``Authorization: Bearer <key>`` (or ``X-API-Key``),
or by the session cookie a browser obtained with a key (``POST /api/v1/session``).
Each route names the permission it needs; :data:`PERMISSIONS` maps a permission to
the least role that holds it.  Every action (any permission but ``read``) is
written to the operator audit log with its outcome, refused ones included.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import ApiContext, context_of
from .problems import Problem

logger = logging.getLogger(__name__)

#: Rank of each role: a role holds every permission of the roles below it.
ROLE_RANK = {"viewer": 0, "operator": 1, "admin": 2}

#: Permission -> least role holding it.  ``read`` is the only one that is not an action.
PERMISSIONS = {
    "read": "viewer",
    "jobs.submit": "operator",
    "jobs.cancel": "operator",
    "jobs.retry": "operator",
    "dlq.retry": "operator",
    "queues.pause": "operator",
    "schedules.control": "operator",
    "workflows.start": "operator",
    "workflows.control": "operator",
    "strategies.submit": "operator",
    "audit.read": "operator",
    "jobs.delete": "admin",
    "dlq.purge": "admin",
    "keys.manage": "admin",
}

#: Permissions that change nothing: allowed when the API is read-only, and not audited.
READS = frozenset({"read", "audit.read"})

#: Name of the browser session cookie.
SESSION_COOKIE = "tradeflow_session"

#: Redis key (under the namespace) of a session: its value is the key id it was opened with.
SESSION_KEY = "{namespace}:api:session:{session_id}"

#: Methods that change state: a session cookie may make them only from the same site.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: ``Sec-Fetch-Site`` values of a request the page itself made (or the user typed).
SAME_SITE_FETCH = frozenset({"same-origin", "none"})

#: Sent with every response: nothing from other origins, no inline script, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

#: Headers every response carries.
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the key (directly or through a session), its role, and from where."""

    key_id: str
    key_name: str
    role: str
    address: str | None
    via_session: bool = False

    def holds(self, permission: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[PERMISSIONS[permission]]


@dataclass(slots=True)
class PendingAction:
    """An action a route is about to take, written to the audit log once its response is known."""

    permission: str
    principal: Principal
    target: str | None = None
    detail: dict | None = None


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def session_key(namespace: str, session_id: str) -> str:
    return SESSION_KEY.format(namespace=namespace, session_id=session_id)


def open_session(context: ApiContext, principal: Principal) -> str:
    """A new session of ``principal``'s key; the cookie's value."""
    session_id = secrets.token_urlsafe(32)
    context.redis.set(
        session_key(context.namespace, session_id), principal.key_id, ex=context.settings.api_session_ttl_s
    )
    return session_id


def close_session(context: ApiContext, session_id: str) -> None:
    context.redis.delete(session_key(context.namespace, session_id))


def authenticate_request(request: Request, context: ApiContext) -> Principal:
    from storage import authenticate, get_api_key

    token = bearer_token(request)
    if token is not None:
        key = authenticate(context.database, token)
        if key is None:
            raise Problem("unauthorized", "the API key is unknown, revoked or expired")
        return Principal(key.key_id, key.name, key.role, client_address(request))
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        key_id = context.redis.get(session_key(context.namespace, session_id))
        key = get_api_key(context.database, key_id.decode()) if key_id else None
        if key is not None and key.usable(_now()):
            return Principal(key.key_id, key.name, key.role, client_address(request), via_session=True)
        raise Problem("unauthorized", "the session has expired or its key was revoked")
    raise Problem("unauthorized", "send an API key: Authorization: Bearer <key> (or X-API-Key)")


def _now():
    from storage import utc_now

    return utc_now()


def _check_same_site(request: Request) -> None:
    """A cookie-authenticated write must come from this site (``Sec-Fetch-Site``, else ``Origin``)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site not in SAME_SITE_FETCH:
            raise Problem("cross-site-request", f"Sec-Fetch-Site is {site!r}")
        return
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is None:
        raise Problem("cross-site-request", "a session may act only with a Sec-Fetch-Site or Origin header")
    if origin != own:
        raise Problem("cross-site-request", f"Origin {origin!r} is not {own!r}")


def require(permission: str):
    """A dependency: the request's principal, when it holds ``permission`` (else 401/403)."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    def dependency(request: Request) -> Principal:
        context = context_of(request)
        principal = authenticate_request(request, context)
        request.state.principal = principal
        if principal.via_session and request.method in UNSAFE_METHODS:
            _check_same_site(request)
        if permission not in READS:
            request.state.pending_action = PendingAction(permission, principal)
            if context.settings.api_read_only:
                raise Problem("read-only", "the API is read-only (TRADEFLOW_API_READ_ONLY)")
        if not principal.holds(permission):
            raise Problem(
                "forbidden",
                f"{permission} needs the {PERMISSIONS[permission]} role; this key is {principal.role}",
            )
        return principal

    return Depends(dependency)


Viewer = Annotated[Principal, require("read")]


def note_target(request: Request, target: str, **detail) -> None:
    """Name what the pending action acts on (and any detail) for its audit row."""
    pending: PendingAction | None = getattr(request.state, "pending_action", None)
    if pending is not None:
        pending.target = target
        if detail:
            pending.detail = {**(pending.detail or {}), **detail}


class SecurityMiddleware:
    """Adds :data:`SECURITY_HEADERS` to every response, and writes each action's audit row
    (with the response's status) once the route has answered.

    A plain ASGI middleware: it does not buffer bodies, so event streams pass through.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                message["headers"] = headers + list(SECURITY_HEADERS)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            pending = scope.get("state", {}).get("pending_action")
            if pending is not None:
                await _record(scope, pending, status[0] if status else 500)


_OURS = frozenset(name for name, _ in SECURITY_HEADERS)


async def _record(scope: Scope, pending: PendingAction, status_code: int) -> None:
    from starlette.concurrency import run_in_threadpool

    from storage import OperatorAction, record_operator_action, utc_now

    context: ApiContext = scope["app"].state.tradeflow
    params = scope.get("path_params") or {}
    target = pending.target or ",".join(f"{name}={value}" for name, value in params.items()) or None
    action = OperatorAction(
        at=utc_now(),
        key_id=pending.principal.key_id,
        key_name=pending.principal.key_name,
        role=pending.principal.role,
        action=pending.permission,
        target=target,
        address=pending.principal.address,
        status_code=status_code,
        detail={"method": scope["method"], "path": scope["path"], **(pending.detail or {})},
    )
    try:
        await run_in_threadpool(record_operator_action, context.database, action)
    except Exception:  # the action happened; a lost audit row is logged, never a failed request
        logger.exception("Could not write the operator audit row of %s", pending.permission)
    events = context.extras.get("events")
    if events is not None:
        await run_in_threadpool(
            events.append,
            f"operator.{pending.permission}",
            key=pending.principal.key_name,
            target=target,
            status=status_code,
        )
