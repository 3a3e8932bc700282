"""Serving the API with uvicorn: what ``tradeflow api`` (and ``tradeflow up``'s child) runs."""

from __future__ import annotations

from actors.settings import Settings

#: Seconds uvicorn gives open connections (event streams) to finish on shutdown.
GRACEFUL_SHUTDOWN_S = 5


def url_of(settings: Settings) -> str:
    """The address the API serves at, as a user types it."""
    host = settings.api_host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{settings.api_port}/api/v1"


def serve(settings: Settings, *, broker, workflows, log_level: str = "info") -> None:
    """Serve ``create_app(settings, ...)`` on ``settings.api_host:api_port`` until SIGINT/SIGTERM."""
    import uvicorn

    from .app import create_app

    app = create_app(settings, broker=broker, workflows=workflows)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        proxy_headers=False,
    )
