"""Bulk operations outlive the API process that runs them: a ``tradeflow api`` killed with SIGKILL
mid-operation leaves it to another API process, which resumes it (or marks it ``interrupted``).
Real uvicorn processes, a real worker, the real Redis and SQLite."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from api_support import Server, api_for_database, running_api, wait_until

#: Fast enough for a test, slow enough to be killed mid-way: 4 letters a batch, 20 a second.
OVERRIDES = {"api_bulk_batch": 4, "api_bulk_rate": 20, "api_operation_orphan_s": 2.0}


@pytest.fixture(params=["sqlite"])
def first(request, redis_url, tmp_path) -> Iterator[Server]:
    with api_for_database(request, redis_url, tmp_path, overrides=OVERRIDES) as running:
        yield running


def _status(api, job_id: str) -> str | None:
    response = api.get(f"/api/v1/jobs/{job_id}")
    return response.json()["status"] if response.status_code == 200 else None


@pytest.mark.timeout(60)
def test_a_bulk_retry_whose_api_process_is_killed_is_resumed_by_another(first, tmp_path):
    api = first.client("operator")
    key = f"{first.settings.namespace}:flaky:{uuid.uuid4().hex[:6]}"
    ids = [
        api.post("/api/v1/jobs", json={"actor": "api_flaky", "args": [key]}).json()["job_id"]
        for _ in range(48)
    ]
    wait_until(
        lambda: all(_status(api, job_id) == "dead_letter" for job_id in ids),
        timeout=30,
        what="48 dead letters",
    )
    redis.Redis.from_url(first.settings.redis_url).set(f"{key}:fixed", 1)
    started = api.post("/api/v1/dead-letters:retry", json={"ids": ids})
    assert started.status_code == 202, started.text
    operation = f"/api/v1/operations/{started.json()['operation_id']}"
    wait_until(lambda: api.get(operation).json()["done"] >= 8, timeout=10, what="the operation under way")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    killed_at = time.monotonic()
    owner = first.process.pid
    with running_api(first.settings, tmp_path, worker=False) as second:
        viewer = second.client("viewer")
        # another API process learns from the missing heartbeats and goes on where the first stopped
        wait_until(lambda: viewer.get(operation).json()["resumed"] == 1, timeout=10, what="the adoption")
        adopted = viewer.get(operation).json()
        assert adopted["status"] == "running" and f":{second.process.pid}:" in adopted["owner"]
        assert f":{owner}:" not in adopted["owner"]
        assert time.monotonic() - killed_at < 2.0 + 5, "adopted soon after the heartbeats stopped"
        wait_until(lambda: viewer.get(operation).json()["status"] != "running", timeout=15, what="the rest")
        finished = viewer.get(operation).json()
        assert finished["status"] == "succeeded" and finished["total"] == 48, finished
        # the batch the killed process retried but could not count is gone from the selection
        assert 48 - OVERRIDES["api_bulk_batch"] <= finished["done"] <= 48 and finished["skipped"] == 0
        wait_until(
            lambda: all(_status(viewer, job_id) == "completed" for job_id in ids),
            timeout=20,
            what="every retried job to complete",
        )
        assert viewer.get("/api/v1/dead-letters", params={"queue": "api_work"}).json()["items"] == []


@pytest.mark.timeout(60)
def test_an_operation_that_cannot_be_resumed_is_marked_interrupted(first):
    """An operation whose kind no API process can plan (e.g. from a newer version) is not left
    running forever: the process that finds it stale says how far it got."""
    client = redis.Redis.from_url(first.settings.redis_url)
    namespace = first.settings.namespace
    stale = time.time() - 60
    record = {
        "id": "gone1",
        "kind": "something.new",
        "status": "running",
        "total": 10,
        "done": 3,
        "skipped": 1,
        "requested_by": "test",
        "started_at": stale,
        "owner": "elsewhere:1:abc",
        "heartbeat": stale,
        "resumed": 0,
        "params": json.dumps({}),
    }
    client.hset(f"{namespace}:api:operation:gone1", mapping=record)
    client.zadd(f"{namespace}:api:operations:running", {"gone1": stale})
    viewer = first.client("viewer")
    wait_until(
        lambda: viewer.get("/api/v1/operations/gone1").json()["status"] == "interrupted",
        timeout=5,
        what="the interrupted status",
    )
    operation = viewer.get("/api/v1/operations/gone1").json()
    assert "stopped (3 done, 1 skipped)" in operation["error"] and operation["finished_at"]
    assert client.zscore(f"{namespace}:api:operations:running", "gone1") is None
