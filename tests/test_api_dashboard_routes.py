"""The API routes the dashboard added: throughput per minute, purge of a dead-letter selection,
and dead-letter groups of several letters; through real HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from api_support import Server, api_for_database, wait_until


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, redis_url, tmp_path_factory) -> Iterator[Server]:
    with api_for_database(
        request,
        redis_url,
        tmp_path_factory.mktemp("api-dash"),
        modules=("tests.api_actors", "tests.dashboard_actors"),
    ) as running:
        yield running


def test_throughput_groups_and_group_purge(server):
    api = server.client("operator")
    admin = server.client("admin")
    key = f"{server.settings.namespace}:tp:{uuid.uuid4().hex[:6]}"
    done = [
        api.post("/api/v1/jobs", json={"actor": "api_echo", "args": [f"T{i}"]}).json()["job_id"]
        for i in range(3)
    ]
    dead = [
        api.post("/api/v1/jobs", json={"actor": "dash_flaky", "args": [key]}).json()["job_id"]
        for _ in range(2)
    ]

    def status(job_id):
        return api.get(f"/api/v1/jobs/{job_id}").json()["status"]

    wait_until(
        lambda: all(status(j) == "completed" for j in done) and all(status(j) == "dead_letter" for j in dead),
        timeout=30,
        what="three jobs to complete and two to die",
    )
    stats = api.get("/api/v1/stats/throughput", params={"minutes": 5}).json()
    assert stats["minutes"] == 5 and len(stats["buckets"]) == 5
    starts = [datetime.fromisoformat(b["start"]) for b in stats["buckets"]]
    assert starts == sorted(starts) and starts[-1] <= datetime.now(UTC)
    assert sum(b["completed"] for b in stats["buckets"]) == 3
    assert sum(b["failed"] for b in stats["buckets"]) == 2
    assert api.get("/api/v1/stats/throughput", params={"minutes": 0}).status_code == 422

    groups = api.get("/api/v1/dead-letters/groups").json()  # a group of two letters
    group = next(g for g in groups if g["exception"] == "RuntimeError")
    assert group["count"] == 2 and group["top_frame"] == "dashboard_actors.py:dash_flaky"

    selection = {"fingerprint": group["fingerprint"]}
    assert api.post("/api/v1/dead-letters:purge", json=selection).status_code == 403, "purging is for admins"
    preview = admin.post("/api/v1/dead-letters:purge", json={**selection, "dry_run": True})
    assert preview.status_code == 200 and preview.json()["count"] == 2
    started = admin.post("/api/v1/dead-letters:purge", json=selection)
    assert started.status_code == 202
    operation = f"/api/v1/operations/{started.json()['operation_id']}"
    wait_until(lambda: api.get(operation).json()["status"] == "succeeded", timeout=10, what="the purge")
    assert api.get(operation).json()["done"] == 2
    left = api.get("/api/v1/dead-letters", params={"fingerprint": group["fingerprint"]}).json()["items"]
    assert left == []
    assert api.post(f"/api/v1/dead-letters/{dead[0]}/retry").status_code == 404, "a purged letter is gone"
