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


def serve(
    settings: Settings,
    *,
    broker,
    workflows,
    runner_command: list[str] | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``create_app(settings, ...)`` on ``settings.api_host:api_port`` until SIGINT/SIGTERM.

    With ``runner_command`` (``tradeflow api-operations``), a child process it starts (and
    restarts) runs the bulk operations, which the app only queues; without, the app's threads do.
    """
    import uvicorn

    from .app import create_app
    from .runner import RunnerProcess

    app = create_app(settings, broker=broker, workflows=workflows, runs_operations=runner_command is None)
    runner = RunnerProcess(command=runner_command) if runner_command else None
    if runner is not None:
        runner.start()
    try:
        uvicorn.run(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level=log_level,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            proxy_headers=False,
        )
    finally:
        if runner is not None:
            runner.stop()
