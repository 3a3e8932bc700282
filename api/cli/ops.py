"""Operator commands: ``tradeflow metrics`` and ``tradeflow health``."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import defaultdict
from typing import Annotated

import typer
from rich.table import Table

from .common import CliError, JsonOption, console, load_settings, print_record, print_rows

ops_app = typer.Typer()

#: Seconds a scrape of a remote ``/metrics`` may take.
SCRAPE_TIMEOUT = 10.0

#: Per (queue, actor) counts of the summary: metric name -> field (table column and ``--json`` key).
TASK_COLUMNS = {
    "task_queue_enqueued_total": "enqueued",
    "task_queue_dequeued_total": "dequeued",
    "task_queue_completed_total": "completed",
    "task_queue_failed_total": "failed",
    "task_queue_retried_total": "retried",
    "task_queue_dlq_total": "dead_letters",
    "task_queue_in_progress": "in_progress",
}

#: Fields of each task row of ``metrics`` (``tasks`` of ``--json``).
TASK_FIELDS = ("queue", "actor", *TASK_COLUMNS.values(), "mean_ms")

#: Fields of each queue of ``metrics`` (``queue_depths`` of ``--json``): messages per state, from Redis.
DEPTH_FIELDS = ("queue", "ready", "delayed", "dead_letter")


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
    as_json: JsonOption = False,
) -> None:
    """A readable summary of the task metrics, queue depths and workers."""
    text = _exposition_text(load_settings(), url)
    if raw:
        console.print(text, soft_wrap=True, highlight=False, markup=False)
        return
    summary = summarize_metrics(text)
    if as_json:
        print_record(summary, as_json=True)
        return
    print_rows(summary["tasks"], fields=TASK_FIELDS, as_json=False, title="tasks")
    print_rows(summary["queue_depths"], fields=DEPTH_FIELDS, as_json=False, title="queue depth (Redis)")
    ticks = summary["scheduler_ticks"]
    console.print(
        f"workers alive: {summary['workers_alive']}   "
        f"scheduler ticks fired: {ticks['fired']}, skipped: {ticks['skipped']}"
    )


def summarize_metrics(text: str) -> dict:
    """The summary of ``metrics`` from Prometheus exposition ``text``: ``tasks`` (``TASK_FIELDS``
    per queue and actor), ``queue_depths`` (``DEPTH_FIELDS`` per queue), ``workers_alive`` and
    ``scheduler_ticks`` (``fired``, ``skipped``); counts are integers, ``mean_ms`` null without runs."""
    from prometheus_client.parser import text_string_to_metric_families

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
    rows = []
    for (queue, actor), counts in sorted(tasks.items()):
        total, count = durations[(queue, actor)]
        row = {"queue": queue, "actor": actor, **{c: round(counts.get(c, 0)) for c in TASK_COLUMNS.values()}}
        rows.append({**row, "mean_ms": round(total / count * 1000, 1) if count else None})
    return {
        "tasks": rows,
        "queue_depths": [
            {"queue": queue, **{state: round(by_state.get(state, 0)) for state in DEPTH_FIELDS[1:]}}
            for queue, by_state in sorted(depths.items())
        ],
        "workers_alive": round(gauges.get("task_queue_workers_alive", 0)),
        "scheduler_ticks": {outcome: round(ticks.get(outcome, 0)) for outcome in ("fired", "skipped")},
    }


@ops_app.command()
def health(
    as_json: JsonOption = False,
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
        print_record({**report.as_dict(), "rate_limits": limits}, as_json=True)
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
