"""The metrics exposition process: ``/metrics`` served from a fork of the worker master.

Dramatiq starts it by import path in a process of its own; importing this
module imports ``actors`` first, which configured the broker and settings
that :func:`serve_metrics` reads.
"""

from __future__ import annotations

from http.server import ThreadingHTTPServer
from typing import Any

import dramatiq
import redis
from dramatiq.logging import get_logger

from actors.broker import routes_of
from actors.telemetry import registry_for

from .process import process_settings


def serve_metrics() -> int:
    """Fork function of the exposition process: serve ``/metrics`` until stopped."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.exposition import MetricsHandler

    logger = get_logger(__name__, "serve_metrics")
    settings, broker = process_settings(), dramatiq.get_broker()

    class Handler(MetricsHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404, "try /metrics")
                return
            try:
                output = generate_latest(
                    registry_for(settings, routes_of(broker), broker.get_declared_queues())
                )
            except redis.RedisError as exc:
                self.send_error(503, f"cannot read Redis: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.end_headers()
            self.wfile.write(output)

        def log_message(self, fmt: str, *args: Any) -> None:
            logger.debug(fmt, *args)

    try:
        server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), Handler)
    except OSError as exc:
        logger.error(
            "Cannot serve metrics on %s:%d (%s); set TRADEFLOW_METRICS_PORT (0 disables).",
            settings.metrics_host,
            settings.metrics_port,
            exc,
        )
        return 1
    logger.info("Serving metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    server.serve_forever()
    return 0
