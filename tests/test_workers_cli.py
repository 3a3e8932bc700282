"""``tradeflow workers list|quiet|stop`` against a real worker process."""

from __future__ import annotations

import json
import os
import time

import dramatiq
import pytest
import redis
from conftest import children_of, run_cli, settings_env
from jobs_support import sqlite_only, wait_for
from test_e2e import start_worker, stop_worker

from actors import audit_writer_of, build_broker
from actors.middleware import list_workers

pytestmark = [pytest.mark.e2e, sqlite_only]


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _starts(folder) -> int:
    path = folder / "starts"
    return len(path.read_text().split()) if path.exists() else 0


@pytest.mark.timeout(100)
def test_workers_list_shows_what_each_runs_and_quiet_then_stop_control_it(settings, tmp_path):
    env = settings_env(settings)
    client = redis.Redis.from_url(settings.redis_url)
    producer = build_broker(settings)
    slow_marker = dramatiq.actor(
        lambda folder, seconds: None, broker=producer, queue_name="e2e", actor_name="slow_marker"
    )
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    worker = start_worker(env)
    try:
        [record] = wait_for(
            lambda: list_workers(client, settings.namespace), timeout=40, what="the worker's record"
        )
        message = slow_marker.send(str(first), 8.0)
        wait_for(lambda: _starts(first) == 1, timeout=20, what="the slow message to start")
        # the record is refreshed every 2 s: wait for the one written since it started
        wait_for(
            lambda: list_workers(client, settings.namespace)[0]["running"], timeout=10, what="a fresh record"
        )

        listed = run_cli("workers", "list", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        [shown] = _lines(listed.stdout)
        assert shown["id"] == record["id"] and shown["pid"] in children_of(worker.pid)
        assert "e2e" in shown["queues"] and shown["state"] == "running" and shown["version"]
        assert shown["heartbeat_age_s"] < 10
        assert [(r["message_id"], r["actor"]) for r in shown["running"]] == [
            (message.message_id, "slow_marker")
        ]
        assert shown["running"][0]["age_s"] >= 0
        table = run_cli("workers", "list", env=env).stdout
        assert shown["id"] in table and "e2e" in table

        quiet = run_cli("workers", "quiet", shown["id"], env=env)
        assert quiet.returncode == 0, quiet.stderr
        wait_for(
            lambda: [w["state"] for w in list_workers(client, settings.namespace)] == ["quiet"],
            timeout=10,
            what="the worker to be quiet",
        )
        slow_marker.send(str(second), 0.0)
        # the message it held finishes; the new one does not start while it is quiet
        wait_for(lambda: (first / "finishes").exists(), timeout=20, what="the held message to finish")
        time.sleep(2.0)
        assert _starts(second) == 0

        stop = run_cli("workers", "stop", shown["id"], env=env)
        assert stop.returncode == 0, stop.stderr
        wait_for(
            lambda: not os.path.exists(f"/proc/{shown['pid']}") or _zombie(shown["pid"]),
            timeout=30,
            what="the worker process to stop",
        )
        assert (
            _starts(second) == 0 and client.hlen(f"{settings.namespace}:e2e.msgs") == 1
        )  # still queued, not lost

        unknown = run_cli("workers", "stop", "nohost:1", env=env)
        assert unknown.returncode == 1 and "no live worker 'nohost:1'" in unknown.stderr
    finally:
        stop_worker(worker)
        audit_writer_of(producer).close(5)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
