"""Bulk operations run in the operations runner that ``tradeflow api`` starts beside itself, and
outlive the process that runs them: a runner or a whole ``tradeflow api`` killed with SIGKILL
mid-operation leaves it to another runner, which resumes it (or marks it ``interrupted``).
Real uvicorn processes, a real worker, the real Redis and SQLite."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from api_support import Server, api_for_database, running_api, wait_until

from api.stack import process_alive

#: Fast enough for a test, slow enough to be killed mid-way: 4 letters a batch, 20 a second.
OVERRIDES = {"api_bulk_batch": 4, "api_bulk_rate": 20, "api_operation_orphan_s": 2.0}


@pytest.fixture(params=["sqlite"])
def first(request, redis_url, tmp_path) -> Iterator[Server]:
    with api_for_database(request, redis_url, tmp_path, overrides=OVERRIDES) as running:
        yield running


def _pid_of(owner: str) -> int:
    return int(owner.split(":")[1])


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _dead_letters(api, settings, count: int) -> tuple[str, list[str]]:
    """``count`` jobs of ``api_flaky`` dead-lettered, then fixed (a retry succeeds): key, ids."""
    key = f"{settings.namespace}:flaky:{uuid.uuid4().hex[:6]}"
    ids = [
        api.post("/api/v1/jobs", json={"actor": "api_flaky", "args": [key]}).json()["job_id"]
        for _ in range(count)
    ]
    wait_until(
        lambda: all(_status(api, job_id) == "dead_letter" for job_id in ids),
        timeout=30,
        what=f"{count} dead letters",
    )
    redis.Redis.from_url(settings.redis_url).set(f"{key}:fixed", 1)
    return key, ids


def _status(api, job_id: str) -> str | None:
    response = api.get(f"/api/v1/jobs/{job_id}")
    return response.json()["status"] if response.status_code == 200 else None


@pytest.mark.timeout(120)
def test_a_bulk_retry_whose_api_process_is_killed_is_resumed_by_another(first, tmp_path):
    api = first.client("operator")
    _, ids = _dead_letters(api, first.settings, 48)
    started = api.post("/api/v1/dead-letters:retry", json={"ids": ids})
    assert started.status_code == 202, started.text
    operation = f"/api/v1/operations/{started.json()['operation_id']}"
    wait_until(lambda: api.get(operation).json()["done"] >= 8, timeout=30, what="the operation under way")
    runner = _pid_of(api.get(operation).json()["owner"])
    # the API's own runner child runs it, not a thread of the API process
    assert runner != first.process.pid and _parent_of(runner) == first.process.pid
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    # a runner whose API is gone stops (no one would supervise it)
    wait_until(lambda: not process_alive(runner), timeout=5, what="the orphaned runner to stop")
    with running_api(first.settings, tmp_path, worker=False) as second:
        viewer = second.client("viewer")
        # another runner learns from the missing heartbeats (2 s) and goes on where the first stopped
        # (its runner boots beside it first: seconds on a loaded machine)
        wait_until(lambda: viewer.get(operation).json()["resumed"] == 1, timeout=30, what="the adoption")
        adopted = viewer.get(operation).json()
        assert adopted["status"] == "running" and _parent_of(_pid_of(adopted["owner"])) == second.process.pid
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


@pytest.mark.timeout(120)
def test_a_killed_runner_is_restarted_by_its_api_and_resumes_the_operation(first):
    api = first.client("operator")
    _, ids = _dead_letters(api, first.settings, 40)
    started = api.post("/api/v1/dead-letters:retry", json={"ids": ids})
    operation = f"/api/v1/operations/{started.json()['operation_id']}"
    wait_until(lambda: api.get(operation).json()["done"] >= 4, timeout=30, what="the operation under way")
    runner = _pid_of(api.get(operation).json()["owner"])
    os.kill(runner, signal.SIGKILL)
    wait_until(lambda: api.get(operation).json()["resumed"] == 1, timeout=30, what="the adoption")
    adopted = _pid_of(api.get(operation).json()["owner"])
    assert adopted != runner and _parent_of(adopted) == first.process.pid, "a new runner of the same API"
    wait_until(lambda: api.get(operation).json()["status"] != "running", timeout=15, what="the rest")
    finished = api.get(operation).json()
    assert finished["status"] == "succeeded" and finished["total"] == 40, finished
    assert first.process.poll() is None, "the API kept serving meanwhile"


@pytest.mark.timeout(120)
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
    # the API's runner finds it in its first sweep, once booted (seconds on a loaded machine)
    wait_until(
        lambda: viewer.get("/api/v1/operations/gone1").json()["status"] == "interrupted",
        timeout=30,
        what="the interrupted status",
    )
    operation = viewer.get("/api/v1/operations/gone1").json()
    assert "stopped (3 done, 1 skipped)" in operation["error"] and operation["finished_at"]
    assert client.zscore(f"{namespace}:api:operations:running", "gone1") is None
