"""The FastAPI application: ``create_app(settings, broker=..., workflows=...)``.

The factory reads nothing from the environment: the edge (``tradeflow api``)
builds the settings and the broker and hands them over.  Extend the app like
any FastAPI app (``app.include_router(...)``, ``app.mount("/ui", StaticFiles(...))``);
new routes get authentication by depending on :func:`api.http.access.require`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.settings import Settings

from . import docs, problems
from .access import SecurityMiddleware
from .context import ApiContext
from .routes import dead_letter_purge, dead_letters, events, jobs, operations, stats, strategies, system
from .routes import workflows as workflow_routes

#: Where the OpenAPI schema is served.
OPENAPI_URL = "/api/openapi.json"

#: Version of the API (the ``/api/v1`` prefix changes only with an incompatible change).
API_VERSION = "1.0.0"


class BodyLimitMiddleware:
    """Refuses (413 problem+json) a request whose body is over ``limit`` bytes, before it is parsed.

    A declared ``Content-Length`` is checked at once; a streamed body is counted as it arrives.
    """

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen, over = 0, False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request" and not over:
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # the app sees the body end here, with a byte no JSON has (so it acts on
                    # nothing), and its answer is replaced by ours
                    over = True
                    return {"type": "http.request", "body": b"\x00", "more_body": False}
            return message

        async def unless_over(message: Message) -> None:
            if not over:
                await send(message)

        await self.app(scope, counted, unless_over)
        if over:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.requests import Request

        kind = problems.PROBLEMS["payload-too-large"]
        detail = f"the request body is over {self.limit} bytes (TRADEFLOW_API_MAX_PAYLOAD_BYTES)"
        response = problems.problem_response(Request(scope, receive), kind, detail)
        await response(scope, receive, send)


@asynccontextmanager
async def _lifespan(app: FastAPI):
    """While serving: watch the bulk operations (heartbeats of ours, adoption of the orphans of
    API processes that stopped), from the start, not only once someone reads one."""
    from .bulk import operations_of

    operations = operations_of(app.state.tradeflow)
    operations.watch()
    try:
        yield
    finally:
        operations.stop()


def create_app(
    settings: Settings,
    *,
    broker: Any = None,
    workflows: Any = None,
    dashboard: bool = True,
    runs_operations: bool = True,
) -> FastAPI:
    """The API of the deployment ``settings`` describes.

    Parameters:
      settings: Read by nothing else; the app never reads the environment.
      broker: The process's Dramatiq broker with its actors registered (``import actors``);
        without it the routes that send messages answer 503.
      workflows: The workflow registry (``orchestration.registry``).
      dashboard: Serve the web dashboard at ``/`` (``docs/dashboard.md``).
      runs_operations: Run the bulk operations this app accepts in its own threads (True), or
        only queue them for an operations runner process (``api/http/runner.py``).
    """
    app = FastAPI(
        lifespan=_lifespan,
        title="tradeflow",
        version=API_VERSION,
        description="Jobs, workflows, queues and schedules of tradeflow. See docs/api.md.",
        openapi_url=OPENAPI_URL,
        docs_url=None,
        redoc_url=None,
    )
    app.state.tradeflow = ApiContext.build(
        settings, broker=broker, workflows=workflows, runs_operations=runs_operations
    )
    problems.install(app)
    for module in (system, jobs, dead_letters, workflow_routes, operations, strategies, events):
        if hasattr(module, "open_router"):
            app.include_router(module.open_router)
        app.include_router(module.router)
    for module in (stats, dead_letter_purge):  # the dashboard's needs
        app.include_router(module.router)
    docs.install(app, openapi_url=OPENAPI_URL)
    if dashboard:
        from .dashboard import install as install_dashboard

        install_dashboard(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.api_max_payload_bytes)
    app.add_middleware(SecurityMiddleware)
    return app
