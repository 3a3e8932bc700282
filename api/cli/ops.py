"""Operator commands: ``tradeflow metrics`` and ``tradeflow health``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Annotated

import typer
from rich.table import Table

from .common import CliError, console, load_settings, print_rows

ops_app = typer.Typer()

#: Seconds a scrape of a remote ``/metrics`` may take.
SCRAPE_TIMEOUT = 10.0

#: Per (queue, actor) columns of the summary: metric name -> column title.
TASK_COLUMNS = {
    "task_queue_enqueued_total": "enqueued",
    "task_queue_dequeued_total": "dequeued",
    "task_queue_completed_total": "completed",
    "task_queue_failed_total": "failed",
    "task_queue_retried_total": "retried",
    "task_queue_dlq_total": "dead letters",
    "task_queue_in_progress": "in progress",
}


def _routes(settings):
    """The Redis clients of ``settings`` (each queue's, the default one)."""
    from actors.runtime import build_redis_routes

    return build_redis_routes(settings, socket_connect_timeout=2, socket_timeout=5)


def _exposition_text(settings, url: str | None) -> str:
    if url is None:
        from prometheus_client import generate_latest

        from actors.telemetry import registry_for

        return generate_latest(registry_for(settings, _routes(settings))).decode()
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(
            f"cannot scrape {url}: {exc}; is a worker running with TRADEFLOW_METRICS_PORT set?"
        ) from None


@ops_app.command()
def metrics(
    url: Annotated[
        str | None,
        typer.Option(
            help="Scrape this /metrics URL instead of reading this host's metrics directory and Redis."
        ),
    ] = None,
    raw: Annotated[bool, typer.Option(help="Print the exposition text as it is.")] = False,
) -> None:
    """A readable summary of the task metrics, queue depths and workers."""
    from prometheus_client.parser import text_string_to_metric_families

    text = _exposition_text(load_settings(), url)
    if raw:
        console.print(text, soft_wrap=True, highlight=False, markup=False)
        return
    tasks: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    durations: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    depths: dict[str, dict[str, float]] = defaultdict(dict)
    gauges: dict[str, float] = {}
    ticks: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.labels.get("queue", ""), sample.labels.get("actor", ""))
            if sample.name in TASK_COLUMNS:
                tasks[key][TASK_COLUMNS[sample.name]] += sample.value
            elif sample.name == "task_queue_processing_duration_seconds_sum":
                durations[key][0] += sample.value
            elif sample.name == "task_queue_processing_duration_seconds_count":
                durations[key][1] += sample.value
            elif sample.name == "scheduler_ticks_total":
                ticks[sample.labels["outcome"]] = sample.value
            elif sample.name == "task_queue_depth_current":
                depths[sample.labels["queue"]][sample.labels["state"]] = sample.value
            elif not sample.labels:
                gauges[sample.name] = sample.value
    table = Table("queue", "actor", *TASK_COLUMNS.values(), "mean ms", title="tasks")
    for (queue, actor), counts in sorted(tasks.items()):
        total, count = durations[(queue, actor)]
        mean = f"{total / count * 1000:.1f}" if count else ""
        table.add_row(queue, actor, *(f"{counts.get(c, 0):.0f}" for c in TASK_COLUMNS.values()), mean)
    console.print(table)
    depth_table = Table("queue", "ready", "delayed", "dead letter", title="queue depth (Redis)")
    for queue, by_state in sorted(depths.items()):
        depth_table.add_row(
            queue, *(f"{by_state.get(s, 0):.0f}" for s in ("ready", "delayed", "dead_letter"))
        )
    console.print(depth_table)
    console.print(
        f"workers alive: {gauges.get('task_queue_workers_alive', 0):.0f}   "
        f"scheduler ticks fired: {ticks.get('fired', 0):.0f}, skipped: {ticks.get('skipped', 0):.0f}"
    )


@ops_app.command()
def health(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    record: Annotated[
        bool,
        typer.Option(help="Also store failing checks as monitoring alerts in SQL, resolve passing ones."),
    ] = False,
) -> None:
    """Broker, database, workers, scheduler and queue depths; exit code 1 when unhealthy."""
    from actors.telemetry import check_health
    from storage import create_db_engine

    settings = load_settings()
    engine = create_db_engine(settings.database_url)
    routes = _routes(settings)
    report = check_health(
        client=routes.default,
        routes=routes,
        namespace=settings.namespace,
        engine=engine,
        heartbeat_timeout=settings.heartbeat_timeout_ms / 1000,
        max_queue_depth=settings.health_max_queue_depth,
        scheduler_silence=settings.health_scheduler_silence_ms / 1000,
    )
    if record and report.check("database").ok:
        report.record(engine, severities=settings.health_severities)
    limits = _rate_limits(settings, routes.default) if report.check("broker").ok else []
    if as_json:
        console.print_json(json.dumps({**report.as_dict(), "rate_limits": limits}))
    else:
        table = Table("check", "ok", "detail", title="healthy" if report.healthy else "UNHEALTHY")
        for check in report.checks:
            table.add_row(check.name, "yes" if check.ok else "NO", check.detail)
        console.print(table)
        if limits:
            print_rows(
                limits, fields=("key", "limit", "starts", "running"), as_json=False, title="rate limits"
            )
    if not report.healthy:
        raise typer.Exit(1)


def _rate_limits(settings, client) -> list[dict]:
    """Each configured limit (``TRADEFLOW_RATE_LIMITS``) with its use now: starts in the window, running."""
    from actors.middleware import Limit, limit_usage

    rows = []
    for key, spec in settings.effective_rate_limits.items():
        limit = Limit.parse(key, spec)
        rows.append({"key": key, "limit": limit.describe(), **limit_usage(client, settings.namespace, limit)})
    return rows
