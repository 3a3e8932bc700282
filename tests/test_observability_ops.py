"""``tradeflow health`` and ``tradeflow metrics`` against real workers, Redis and databases."""

from __future__ import annotations

import json
import re
import time

import pytest
import redis
from conftest import run_cli, settings_env
from obs_actors import IDLE_QUEUE, QUEUE, declare
from obs_support import result_of, start_workers, stop_workers, wait_until

from actors.runtime import build_broker
from actors.settings import Settings
from actors.telemetry import SCHEDULER_KEY, Metrics
from api.cli.ops import TASK_FIELDS

pytest_plugins = ["obs_fixtures"]


def _health(settings: Settings, **env: str) -> tuple[int, dict]:
    done = run_cli("health", "--json", env={**settings_env(settings), **env})
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def _check(report: dict, name: str) -> dict:
    return next(check for check in report["checks"] if check["name"] == name)


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_health_and_metrics_commands_with_a_running_worker(obs_settings: Settings) -> None:
    broker = build_broker(obs_settings)
    declared = declare(broker)
    workers = start_workers(obs_settings, processes=1, queues=(QUEUE,))
    try:
        messages = [declared["obs_step"].send(i) for i in range(5)]
        for message in messages:
            result_of(broker, message)
        metrics = next(m for m in broker.middleware if isinstance(m, Metrics))
        assert metrics.enqueue_counts.flush(), "this process's enqueues are in Redis"
        client = redis.Redis.from_url(obs_settings.effective_redis_url)
        wait_until(lambda: client.zcard(f"{obs_settings.namespace}:__workers__") == 1, what="heartbeat")
        rc, report = _health(obs_settings)
        summary = run_cli("metrics", env={**settings_env(obs_settings), "COLUMNS": "200"})
        as_json = run_cli("metrics", "--json", env=settings_env(obs_settings))
    finally:
        stop_workers(workers)

    assert rc == 0 and report["healthy"] is True, report
    assert report["workers_alive"] == 1
    assert report["queue_depths"][QUEUE] == {"ready": 0, "delayed": 0, "dead_letter": 0}
    assert summary.returncode == 0, summary.stderr
    row = next((line for line in summary.stdout.splitlines() if "obs_step" in line), summary.stdout)
    # queue, actor, then enqueued (by this process, counted in Redis), dequeued, completed, failed,
    # retried, dead letters, in progress, mean ms
    assert [cell.strip() for cell in row.split("│")[3:10]] == ["5", "5", "5", "0", "0", "0", "0"], row
    assert "workers alive: 1" in summary.stdout
    assert as_json.returncode == 0, as_json.stderr
    figures = json.loads(as_json.stdout)
    assert tuple(figures) == ("tasks", "queue_depths", "workers_alive", "scheduler_ticks")
    task = next(t for t in figures["tasks"] if t["actor"] == "obs_step")
    assert tuple(task) == TASK_FIELDS and task["queue"] == QUEUE
    counts = {field: task[field] for field in TASK_FIELDS[2:-1]}
    assert counts == {field: 5 if field in ("enqueued", "dequeued", "completed") else 0 for field in counts}
    assert isinstance(task["mean_ms"], float) and task["mean_ms"] > 0
    depth = next(d for d in figures["queue_depths"] if d["queue"] == QUEUE)
    assert depth == {"queue": QUEUE, "ready": 0, "delayed": 0, "dead_letter": 0}
    assert figures["workers_alive"] == 1 and set(figures["scheduler_ticks"]) == {"fired", "skipped"}


def test_health_fails_without_workers_and_on_deep_queues(obs_settings: Settings) -> None:
    broker = build_broker(obs_settings)
    idle = declare(broker)["obs_idle"]
    for _ in range(3):
        idle.send()
    broker.client.sadd(f"{obs_settings.namespace}:__queues__", IDLE_QUEUE)
    rc, report = _health(obs_settings, TRADEFLOW_HEALTH_MAX_QUEUE_DEPTH="2")
    assert rc == 1 and report["healthy"] is False
    assert _check(report, "workers")["ok"] is False
    assert _check(report, "queues") == {
        "name": "queues",
        "ok": False,
        "detail": f"over 2 ready: {IDLE_QUEUE}: 3",
    }
    assert _check(report, "database")["ok"] is True


def test_health_fails_when_the_scheduler_went_silent(obs_settings: Settings) -> None:
    client = redis.Redis.from_url(obs_settings.effective_redis_url)
    client.hset(f"{obs_settings.namespace}:{SCHEDULER_KEY}", "last_fired", time.time() - 3600)
    rc, report = _health(obs_settings, TRADEFLOW_HEALTH_SCHEDULER_SILENCE_MS="60000")
    assert rc == 1 and _check(report, "scheduler")["ok"] is False
    assert re.match(r"silent for 36\d\ds \(limit 60s\)", _check(report, "scheduler")["detail"])


def test_health_reports_unreachable_redis_and_database(obs_settings: Settings) -> None:
    broken = obs_settings.model_copy(
        update={"redis_url": "redis://127.0.0.1:1/0", "database_url": "postgresql://nobody@127.0.0.1:1/none"}
    )
    rc, report = _health(broken)
    assert rc == 1
    assert "cannot reach Redis" in _check(report, "broker")["detail"]
    assert "cannot query the database" in _check(report, "database")["detail"]


def test_metrics_command_names_an_unreachable_endpoint(obs_settings: Settings) -> None:
    done = run_cli("metrics", "--url", "http://127.0.0.1:1/metrics", env=settings_env(obs_settings))
    assert done.returncode == 1
    assert "cannot scrape http://127.0.0.1:1/metrics" in done.stderr
