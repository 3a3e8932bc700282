"""The HTTP API through real HTTP: a ``tradeflow api`` uvicorn server and a real worker, on the real
Redis and on SQLite and PostgreSQL (one server per database for the whole module)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from api_support import Server, api_for_database, read_events, wait_until

PROBLEM = "application/problem+json"


def problem_type(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith(PROBLEM), response.text
    body = response.json()
    assert body["status"] == response.status_code
    return body["type"].removeprefix("urn:tradeflow:problem:")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, redis_url, tmp_path_factory) -> Iterator[Server]:
    with api_for_database(request, redis_url, tmp_path_factory.mktemp("api")) as running:
        yield running


def queued(server: Server, queue: str) -> int:
    client = redis.Redis.from_url(server.settings.redis_url)
    return client.hlen(f"{server.settings.namespace}:{queue}.msgs")


def job_status(api: httpx.Client, job_id: str) -> str | None:
    response = api.get(f"/api/v1/jobs/{job_id}")
    return response.json()["status"] if response.status_code == 200 else None


# -- the door: health, schema, docs, headers ----------------------------------------------------


def test_open_endpoints_schema_and_local_docs(server):
    plain = server.client(role=None)
    assert plain.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = plain.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "database": "ok"}
    assert plain.get("/metrics").status_code == 200
    schema = plain.get("/api/openapi.json").json()
    assert all(path.startswith(("/api/v1/", "/healthz", "/readyz", "/metrics")) for path in schema["paths"])
    page = plain.get("/api/docs")
    assert page.status_code == 200 and "http" not in page.text.split("<body>")[1], "assets are local"
    assert plain.get("/api/docs/assets/swagger-ui-bundle.js").status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert plain.get("/api/docs/init.js").text.count("/api/openapi.json") == 1


def test_every_api_route_needs_a_key(server):
    plain = server.client(role=None)
    schema = plain.get("/api/openapi.json").json()
    for path, operations in schema["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        concrete = path.replace("{", "x").replace("}", "")
        for method in operations:
            response = plain.request(method.upper(), concrete)
            assert response.status_code == 401, (method, path, response.text)
            assert problem_type(response) == "unauthorized"
    bad = server.client(role=None, headers={"Authorization": "Bearer tf_nope_nope"})
    assert problem_type(bad.get("/api/v1/jobs")) == "unauthorized"


# -- producers ------------------------------------------------------------------------------------


def test_submit_a_job_that_a_worker_runs(server):
    api = server.client("operator")
    response = api.post("/api/v1/jobs", json={"actor": "api_echo", "args": ["RUN1"], "priority": "high"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["queue"] == "api_work" and job["replayed"] is False
    wait_until(lambda: job_status(api, job["job_id"]) == "completed", timeout=30, what="the job to complete")
    detail = api.get(f"/api/v1/jobs/{job['job_id']}").json()
    assert (
        detail["args"] == ["RUN1"] and detail["priority"] == "high" and detail["user_id"] == "test-operator"
    )
    assert detail["ip_address"] == "127.0.0.1" and detail["worker_id"]


def test_job_detail_lists_every_attempt_with_error_traceback_worker_and_timings(server):
    api = server.client("viewer")
    key = f"{server.settings.namespace}:third:{uuid.uuid4().hex[:6]}"
    job = server.client("operator").post("/api/v1/jobs", json={"actor": "api_third_time", "args": [key]})
    job_id = job.json()["job_id"]
    wait_until(lambda: job_status(api, job_id) == "completed", timeout=30, what="the third attempt")
    detail = api.get(f"/api/v1/jobs/{job_id}").json()
    attempts = detail["attempts"]
    assert [(a["number"], a["retry_count"], a["status"]) for a in attempts] == [
        (1, 0, "retrying"),
        (2, 1, "retrying"),
        (3, 2, "completed"),
    ]
    assert [a["error"] for a in attempts] == ["ValueError: attempt 1", "ValueError: attempt 2", None]
    assert [a["error_type"] for a in attempts] == ["ValueError", "ValueError", None]
    assert (
        'raise ValueError(f"attempt {attempt}")' in attempts[1]["traceback"] and not attempts[2]["traceback"]
    )
    workers = {(a["worker_id"], a["worker_host"], a["worker_pid"]) for a in attempts}
    assert len(workers) == 1 and detail["worker_id"] == attempts[2]["worker_id"], "the one worker process"
    assert all(a["started_at"] <= a["finished_at"] and a["duration_ms"] >= 0 for a in attempts)
    schema = api.get("/api/openapi.json").json()["components"]["schemas"]
    assert schema["JobDetail"]["properties"]["attempts"]["items"] == {
        "$ref": "#/components/schemas/JobAttempt"
    }


def test_idempotency_key_returns_the_first_job_and_sends_one_message(server):
    api = server.client("operator")
    key = uuid.uuid4().hex
    body = {"actor": "api_hold", "args": ["IDEM"], "priority": "high"}
    before = queued(server, "api_idle")
    first = api.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 202
    wait_until(lambda: job_status(api, first.json()["job_id"]) == "pending", timeout=10, what="the audit row")
    other = {**body, "args": ["OTHER"], "priority": "low"}
    second = api.post("/api/v1/jobs", json=other, headers={"Idempotency-Key": key})
    assert second.status_code == 200
    assert second.json() == {**first.json(), "replayed": True}, "the first job, as it was sent"
    assert queued(server, "api_idle") == before + 1


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"actor": "no_such_actor"}, 422, "unknown-actor"),
        ({"actor": "api_hold", "args": [1, 2, 3, 4]}, 422, "bad-arguments"),
        ({"actor": "api_hold", "kwargs": {"nope": 1}}, 422, "bad-arguments"),
        ({"actor": "api_hold", "args": ["X"], "priority": "urgent"}, 422, "validation-error"),
        (
            {"actor": "api_hold", "args": ["X"], "delay_ms": 5, "run_at": "2030-01-01T00:00:00Z"},
            422,
            "validation-error",
        ),
        ({"actor": "api_hold", "args": ["X" * 5000]}, 413, "payload-too-large"),
    ],
    ids=["unknown-actor", "too-many-args", "unknown-kwarg", "bad-priority", "delay-and-run-at", "oversize"],
)
def test_refused_submissions_enqueue_nothing(server, body, status, kind):
    api = server.client("operator")
    before = queued(server, "api_idle")
    response = api.post("/api/v1/jobs", json=body)
    assert response.status_code == status and problem_type(response) == kind
    batch = api.post("/api/v1/jobs:batch", json={"jobs": [{"actor": "api_hold", "args": ["OK"]}, body]})
    assert batch.status_code == status
    assert queued(server, "api_idle") == before


def test_batch_and_delayed_submission(server):
    api = server.client("operator")
    jobs = [{"actor": "api_hold", "args": [f"B{i}"], "priority": "low"} for i in range(3)]
    response = api.post("/api/v1/jobs:batch", json={"jobs": jobs})
    assert response.status_code == 202 and len(set(response.json()["job_ids"])) == 3
    delayed = api.post("/api/v1/jobs", json={"actor": "api_hold", "args": ["LATER"], "delay_ms": 600_000})
    client = redis.Redis.from_url(server.settings.redis_url)
    assert client.hlen(f"{server.settings.namespace}:api_idle.DQ.msgs") >= 1
    assert delayed.status_code == 202


def test_viewer_cannot_act_and_refusals_are_audited(server):
    viewer = server.client("viewer")
    before = queued(server, "api_idle")
    response = viewer.post("/api/v1/jobs", json={"actor": "api_hold", "args": ["V"]})
    assert response.status_code == 403 and problem_type(response) == "forbidden"
    assert queued(server, "api_idle") == before
    assert viewer.get("/api/v1/jobs").status_code == 200
    assert problem_type(viewer.get("/api/v1/audit")) == "forbidden"
    log = server.client("operator").get("/api/v1/audit", params={"action": "jobs.submit"}).json()["items"]
    refused = [row for row in log if row["key_name"] == "test-viewer"]
    assert refused and refused[0]["status_code"] == 403 and refused[0]["address"] == "127.0.0.1"


# -- reads ----------------------------------------------------------------------------------------


def test_job_list_keyset_pages_and_filters(server):
    api = server.client("operator")
    tag = uuid.uuid4().hex[:8]
    symbols = ["AAPL", "MSFT", "AAPL", "TSLA", "AAPL"]
    for symbol in symbols:
        api.post("/api/v1/jobs", json={"actor": "api_hold", "args": [symbol], "kwargs": {"note": tag}})
    wanted = {"actor": "api_hold", "args.note": tag}
    wait_until(
        lambda: len(api.get("/api/v1/jobs", params={**wanted, "limit": 10}).json()["items"]) == 5,
        timeout=10,
        what="the audit rows",
    )
    seen, cursor = [], None
    while True:
        page = api.get(
            "/api/v1/jobs", params={**wanted, "limit": 2, **({"cursor": cursor} if cursor else {})}
        )
        assert page.status_code == 200
        seen += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and len({job["job_id"] for job in seen}) == 5
    keys = [(job["created_at"], job["job_id"]) for job in seen]
    assert keys == sorted(keys, reverse=True), "newest first, no repeats across pages"
    # a JSON path on the arguments is a keyword argument here: positional ones are by index
    aapl = api.get("/api/v1/jobs", params={"args.note": tag, "status": "pending", "queue": "api_idle"}).json()
    assert len(aapl["items"]) == 5
    assert api.get("/api/v1/jobs", params={"args.note": "no-such-tag"}).json()["items"] == []
    assert problem_type(api.get("/api/v1/jobs", params={"cursor": "garbage"})) == "invalid-cursor"
    assert problem_type(api.get("/api/v1/jobs/does-not-exist")) == "not-found"


def test_catalog_queues_workers_schedules_alerts(server):
    server.client("operator").post("/api/v1/jobs", json={"actor": "api_hold", "args": ["Q"]})
    api = server.client("viewer")
    catalog = api.get("/api/v1/actors").json()
    echo = next(actor for actor in catalog["actors"] if actor["name"] == "api_echo")
    assert echo["queue"] == "api_work" and echo["max_retries"] == 0
    system_check = next(w for w in catalog["workflows"] if w["name"] == "system_check")
    assert len(system_check["version"]) == 12 and system_check["steps"] == ["health", "ping"]
    queues = {queue["name"]: queue for queue in api.get("/api/v1/queues").json()}
    assert queues["api_idle"]["ready"]["normal"] >= 1 and queues["api_idle"]["oldest_age_s"] is not None
    wait_until(
        lambda: any(worker["alive"] for worker in api.get("/api/v1/workers").json()),
        timeout=20,
        what="a live worker",
    )
    (worker,) = [w for w in api.get("/api/v1/workers").json() if w["alive"]]
    assert {"api_work", "system"} <= set(worker["queues"]) and "api_idle" not in worker["queues"]
    sleeper = server.client("operator").post("/api/v1/jobs", json={"actor": "api_sleep", "args": [3]})
    wait_until(lambda: job_status(api, sleeper.json()["job_id"]) == "running", timeout=20, what="the sleeper")
    busy = next(w for w in api.get("/api/v1/workers").json() if w["alive"])
    assert busy["in_flight"] >= 1
    assert {q["name"]: q for q in api.get("/api/v1/queues").json()}["api_work"]["in_flight"] >= 1
    schedules = api.get("/api/v1/schedules").json()
    assert schedules and all(schedule["description"] for schedule in schedules)
    assert api.get("/api/v1/alerts", params={"state": "open"}).status_code == 200
    assert problem_type(api.get("/api/v1/alerts", params={"state": "bogus"})) == "validation-error"


# -- actions --------------------------------------------------------------------------------------


def test_dead_letter_grouped_then_retried_by_an_operator(server):
    api = server.client("operator")
    key = f"{server.settings.namespace}:flaky:{uuid.uuid4().hex[:6]}"
    job_id = api.post("/api/v1/jobs", json={"actor": "api_flaky", "args": [key]}).json()["job_id"]
    wait_until(lambda: job_status(api, job_id) == "dead_letter", timeout=30, what="the job to die")
    letters = api.get("/api/v1/dead-letters", params={"queue": "api_work"}).json()["items"]
    letter = next(item for item in letters if item["job_id"] == job_id)
    assert "ValueError: not fixed yet" in letter["error"] and "not fixed yet" in letter["traceback"]
    groups = api.get("/api/v1/dead-letters/groups").json()
    group = next(g for g in groups if g["fingerprint"] == letter["fingerprint"])
    assert group["exception"] == "ValueError" and group["top_frame"] == "api_actors.py:api_flaky"
    detail = api.get(f"/api/v1/jobs/{job_id}").json()
    assert detail["dead_letter"]["fingerprint"] == letter["fingerprint"]
    viewer = server.client("viewer")
    assert problem_type(viewer.post(f"/api/v1/dead-letters/{job_id}/retry")) == "forbidden"
    redis.Redis.from_url(server.settings.redis_url).set(f"{key}:fixed", 1)
    retried = api.post(f"/api/v1/dead-letters/{job_id}/retry")
    assert retried.status_code == 202, retried.text
    wait_until(lambda: job_status(api, job_id) == "completed", timeout=30, what="the retried job")
    attempts = api.get(f"/api/v1/jobs/{job_id}").json()["attempts"]
    assert [(a["status"], a["error"]) for a in attempts] == [
        ("dead_letter", "ValueError: not fixed yet"),
        ("completed", None),
    ], "the attempt before the dead letter and the one after its retry"
    assert problem_type(api.post(f"/api/v1/dead-letters/{job_id}/retry")) == "not-found"
    assert problem_type(api.delete("/api/v1/dead-letters")) == "forbidden", "purging is for admins"
    assert (
        server.client("admin").delete("/api/v1/dead-letters", params={"older_than": "7d"}).status_code == 200
    )


def test_retry_with_edited_arguments_cancel_and_delete(server):
    api = server.client("operator")
    key = f"{server.settings.namespace}:flaky:{uuid.uuid4().hex[:6]}"
    job_id = api.post("/api/v1/jobs", json={"actor": "api_flaky", "args": [key]}).json()["job_id"]
    wait_until(lambda: job_status(api, job_id) == "dead_letter", timeout=30, what="the job to die")
    fixed = f"{key}-edited"
    redis.Redis.from_url(server.settings.redis_url).set(f"{fixed}:fixed", 1)
    bad = api.post(f"/api/v1/jobs/{job_id}/retry", json={"args": [1, 2, 3]})
    assert problem_type(bad) == "bad-arguments"
    response = api.post(f"/api/v1/jobs/{job_id}/retry", json={"args": [fixed]})
    assert response.status_code == 202 and response.json()["job_id"] == job_id
    wait_until(lambda: job_status(api, job_id) == "completed", timeout=30, what="the edited retry")
    assert api.get(f"/api/v1/jobs/{job_id}").json()["args"] == [fixed]
    assert problem_type(api.post(f"/api/v1/jobs/{job_id}/retry")) == "conflict", "completed: nothing to retry"
    waiting = api.post("/api/v1/jobs", json={"actor": "api_hold", "args": ["C"]}).json()["job_id"]
    wait_until(lambda: job_status(api, waiting) == "pending", timeout=10, what="the audit row")
    assert api.post(f"/api/v1/jobs/{waiting}/cancel").json()["outcome"] == "cancelled"
    assert job_status(api, waiting) == "cancelled"
    assert problem_type(api.delete(f"/api/v1/jobs/{waiting}")) == "forbidden"
    assert server.client("admin").delete(f"/api/v1/jobs/{waiting}").status_code == 204
    assert api.get(f"/api/v1/jobs/{waiting}").status_code == 404


def test_paused_queue_keeps_its_messages_until_resumed(server):
    api = server.client("operator")
    assert problem_type(server.client("viewer").post("/api/v1/queues/api_work/pause")) == "forbidden"
    assert api.post("/api/v1/queues/api_work/pause").json() == {"queue": "api_work", "paused": True}
    try:
        job_id = api.post("/api/v1/jobs", json={"actor": "api_echo", "args": ["PAUSED"]}).json()["job_id"]
        wait_until(lambda: job_status(api, job_id) == "pending", timeout=10, what="the audit row")
        import time

        time.sleep(2.5)  # > the consumers' 1 s poll: they looked, and took nothing
        assert job_status(api, job_id) == "pending"
        queues = {queue["name"]: queue for queue in api.get("/api/v1/queues").json()}
        assert queues["api_work"]["paused"] and queues["api_work"]["ready"]["normal"] == 1
    finally:
        assert api.post("/api/v1/queues/api_work/resume").json()["paused"] is False
    wait_until(lambda: job_status(api, job_id) == "completed", timeout=20, what="the job after the resume")
    assert problem_type(api.post("/api/v1/queues/no_such_queue/pause")) == "not-found"


def test_schedule_controls(server):
    api = server.client("operator")
    name = api.get("/api/v1/schedules").json()[0]["name"]
    assert problem_type(server.client("viewer").post(f"/api/v1/schedules/{name}/disable")) == "forbidden"
    assert api.post(f"/api/v1/schedules/{name}/disable").status_code == 200
    row = next(s for s in api.get("/api/v1/schedules").json() if s["name"] == name)
    assert row["enabled"] is False and row["next_run_at"] is None
    assert api.post(f"/api/v1/schedules/{name}/enable").status_code == 200
    assert next(s for s in api.get("/api/v1/schedules").json() if s["name"] == name)["enabled"] is True
    assert problem_type(api.post("/api/v1/schedules/nope/run")) == "not-found"


def test_workflows_registered_and_ad_hoc(server):
    api = server.client("operator")
    key = uuid.uuid4().hex
    first = api.post("/api/v1/workflows/system_check/runs", json={}, headers={"Idempotency-Key": key})
    again = api.post("/api/v1/workflows/system_check/runs", json={}, headers={"Idempotency-Key": key})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json() == {**first.json(), "replayed": True}
    run_id = first.json()["run_id"]
    wait_until(
        lambda: api.get(f"/api/v1/workflow-runs/{run_id}").json()["status"] == "succeeded",
        timeout=30,
        what="the registered run",
    )
    run = api.get(f"/api/v1/workflow-runs/{run_id}").json()
    assert [step["name"] for step in run["steps"]] == ["health", "ping"]
    assert run["edges"] == [{"from": "health", "to": "ping"}]
    assert run["timeline"][0]["event"] == "run created" and run["timeline"][-1]["event"] == "run succeeded"
    inline = {
        "name": "adhoc_echo",
        "steps": [
            {"name": "a", "actor": "api_echo", "args": ["WF-A"]},
            {"name": "b", "actor": "api_echo", "args": ["WF-B"], "depends_on": ["a"]},
        ],
    }
    adhoc = api.post("/api/v1/workflows:run", json=inline)
    assert adhoc.status_code == 202, adhoc.text
    adhoc_id = adhoc.json()["run_id"]
    wait_until(
        lambda: api.get(f"/api/v1/workflow-runs/{adhoc_id}").json()["status"] == "succeeded",
        timeout=30,
        what="the ad-hoc run",
    )
    listed = api.get("/api/v1/workflow-runs", params={"workflow": "adhoc_echo"}).json()["items"]
    assert [item["run_id"] for item in listed] == [adhoc_id]
    bad = {**inline, "steps": [{"name": "a", "actor": "no_such_actor"}]}
    assert problem_type(api.post("/api/v1/workflows:run", json=bad)) == "invalid-workflow"
    cyclic = {**inline, "steps": [{"name": "a", "actor": "api_echo", "depends_on": ["a"]}]}
    assert problem_type(api.post("/api/v1/workflows:run", json=cyclic)) == "invalid-workflow"
    assert problem_type(api.post("/api/v1/workflows/no_such/runs", json={})) == "not-found"
    assert problem_type(api.post(f"/api/v1/workflow-runs/{run_id}/cancel")) == "conflict"
    assert api.get(f"/api/v1/workflow-runs/{run_id}/compensation-preview").json()["compensations"] == []
    fork = api.post(f"/api/v1/workflow-runs/{run_id}/fork")
    assert fork.status_code == 202 and fork.json()["run_id"] != run_id
    assert problem_type(server.client("viewer").post(f"/api/v1/workflow-runs/{run_id}/resume")) == "forbidden"


# -- access: keys, sessions -------------------------------------------------------------------------


def test_keys_are_managed_by_admins_and_revocation_is_immediate(server):
    operator, admin = server.client("operator"), server.client("admin")
    assert problem_type(operator.post("/api/v1/keys", json={"name": "x", "role": "viewer"})) == "forbidden"
    created = admin.post("/api/v1/keys", json={"name": "dash", "role": "viewer"})
    assert created.status_code == 201
    token, key_id = created.json()["token"], created.json()["key_id"]
    fresh = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})
    assert fresh.get("/api/v1/jobs").status_code == 200
    listed = {key["key_id"]: key for key in admin.get("/api/v1/keys").json()}
    assert listed[key_id]["last_used_at"] is not None and "token" not in listed[key_id]
    assert admin.delete(f"/api/v1/keys/{key_id}").json()["revoked_at"] is not None
    assert problem_type(fresh.get("/api/v1/jobs")) == "unauthorized"
    past = admin.post(
        "/api/v1/keys", json={"name": "old", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}
    )
    assert problem_type(past) == "validation-error"


def test_browser_session_cookie_and_cross_site_writes(server):
    browser = httpx.Client(base_url=server.url)
    opened = browser.post("/api/v1/session", headers={"Authorization": f"Bearer {server.tokens['operator']}"})
    assert opened.status_code == 200
    cookie = opened.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert browser.get("/api/v1/jobs").status_code == 200, "the cookie authenticates"
    body = {"actor": "api_hold", "args": ["S"]}
    cross = browser.post("/api/v1/jobs", json=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert problem_type(cross) == "cross-site-request"
    other_origin = browser.post("/api/v1/jobs", json=body, headers={"Origin": "https://evil.example"})
    assert problem_type(other_origin) == "cross-site-request"
    assert problem_type(browser.post("/api/v1/jobs", json=body)) == "cross-site-request", "no header: refused"
    same = browser.post("/api/v1/jobs", json=body, headers={"Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 202
    assert browser.delete("/api/v1/session", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 204
    assert problem_type(browser.get("/api/v1/jobs")) == "unauthorized"


# -- a producer in another language ------------------------------------------------------------------


def test_curl_producer_job_runs_on_a_dramatiq_worker(server, tmp_path: Path):
    """What a Go or Node service does: a plain HTTP POST from another process, no Python client."""
    body = json.dumps({"actor": "api_echo", "args": ["CURL"], "kwargs": {"qty": 7}})
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            f"{server.url}/api/v1/jobs",
            "-H",
            f"Authorization: Bearer {server.tokens['operator']}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job_id = json.loads(result.stdout)["job_id"]
    api = server.client("viewer")
    wait_until(lambda: job_status(api, job_id) == "completed", timeout=30, what="the curl job")
    listed = api.get("/api/v1/jobs", params={"actor": "api_echo", "status": "completed", "limit": 500}).json()
    assert job_id in [job["job_id"] for job in listed["items"]]
    runs = redis.Redis.from_url(server.settings.redis_url).hget(
        f"{server.settings.namespace}:api-test:runs", "CURL"
    )
    assert runs == b"1"


# -- live events ----------------------------------------------------------------------------------


def test_live_events_follow_a_job_and_resume_after_a_disconnect(server):
    api = server.client("operator")
    job_id = None
    with api.stream("GET", "/api/v1/events", params={"kind": "job.*", "queue": "api_work"}) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == ": connected"
        job_id = api.post("/api/v1/jobs", json={"actor": "api_echo", "args": ["SSE"]}).json()["job_id"]
        seen = read_events(
            lines,
            until=lambda events: (
                {"job.pending", "job.completed"} <= {e["event"] for e in events if e["data"]["job"] == job_id}
            ),
            timeout=30,
        )
    mine = [event for event in seen if event["data"]["job"] == job_id]
    # the producer's and the worker's writers commit independently: data.seq orders a job's events
    in_order = sorted(mine, key=lambda event: event["data"]["data"]["seq"])
    assert in_order[0]["event"] == "job.pending" and in_order[-1]["event"] == "job.completed"
    assert all(event["data"]["queue"] == "api_work" for event in seen), "filtered by queue"
    # resume: everything after the first event of the job, without new activity
    with api.stream(
        "GET", "/api/v1/events", params={"job": job_id}, headers={"Last-Event-ID": mine[0]["id"]}
    ) as again:
        replayed = read_events(
            again.iter_lines(), until=lambda events: len(events) == len(mine) - 1, timeout=10
        )
    assert mine[0]["id"] not in [event["id"] for event in replayed]
    assert [event["id"] for event in replayed] == [event["id"] for event in mine[1:]]
    assert problem_type(api.get("/api/v1/events", params={"kind": "job;drop"})) == "validation-error"
    assert (
        problem_type(api.get("/api/v1/events", headers={"Last-Event-ID": "yesterday"})) == "validation-error"
    )


def test_operator_actions_and_workflow_runs_are_events(server):
    api = server.client("operator")
    with api.stream("GET", "/api/v1/events", params={"kind": "operator.*,run.*"}) as stream:
        lines = stream.iter_lines()
        assert next(lines) == ": connected"
        run_id = api.post("/api/v1/workflows/system_check/runs", json={}).json()["run_id"]
        seen = read_events(
            lines,
            until=lambda events: any(
                e["event"] == "run.succeeded" and e["data"]["run"] == run_id for e in events
            ),
            timeout=30,
        )
    kinds = [event["event"] for event in seen]
    assert "operator.workflows.start" in kinds and "run.running" in kinds
    assert kinds.index("run.running") < kinds.index("run.succeeded")


def test_bulk_retry_of_dead_letters_is_a_tracked_operation(server):
    api = server.client("operator")
    key = f"{server.settings.namespace}:bulk:{uuid.uuid4().hex[:6]}"
    ids = [
        api.post("/api/v1/jobs", json={"actor": "api_flaky", "args": [key]}).json()["job_id"]
        for _ in range(3)
    ]
    for job_id in ids:
        wait_until(
            lambda job_id=job_id: job_status(api, job_id) == "dead_letter", timeout=30, what="dead jobs"
        )
    preview = api.post("/api/v1/dead-letters:retry", json={"ids": [*ids, "not-dead"], "dry_run": True})
    assert preview.status_code == 200 and preview.json() == {
        "dry_run": True,
        "count": 3,
        "operation_id": None,
    }
    fingerprint = api.get(f"/api/v1/jobs/{ids[0]}").json()["dead_letter"]["fingerprint"]
    grouped = api.post("/api/v1/dead-letters:retry", json={"fingerprint": fingerprint, "dry_run": True})
    assert grouped.json()["count"] >= 3
    assert job_status(api, ids[0]) == "dead_letter", "a dry run retries nothing"
    viewer = server.client("viewer")
    assert problem_type(viewer.post("/api/v1/dead-letters:retry", json={"ids": ids})) == "forbidden"
    redis.Redis.from_url(server.settings.redis_url).set(f"{key}:fixed", 1)
    started = api.post("/api/v1/dead-letters:retry", json={"ids": ids})
    assert started.status_code == 202
    operation_id = started.json()["operation_id"]
    done = wait_until(
        lambda: (
            (op := viewer.get(f"/api/v1/operations/{operation_id}").json())["status"] == "succeeded" and op
        ),
        timeout=20,
        what="the operation",
    )
    assert (
        done["total"] == 3
        and done["done"] == 3
        and done["skipped"] == 0
        and done["requested_by"] == "test-operator"
    )
    for job_id in ids:
        wait_until(
            lambda job_id=job_id: job_status(api, job_id) == "completed", timeout=30, what="retried jobs"
        )
    assert problem_type(viewer.get("/api/v1/operations/nope")) == "not-found"


def test_run_time_schedules_over_the_api(server):
    api = server.client("operator")
    name = f"echo-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "actor": "api_echo", "cron": "*/10 * * * *", "args": ["SCHED"]}
    assert problem_type(server.client("viewer").post("/api/v1/schedules", json=body)) == "forbidden"
    assert problem_type(api.post("/api/v1/schedules", json={**body, "cron": "1 2 3"})) == "validation-error"
    assert problem_type(api.post("/api/v1/schedules", json={**body, "actor": "nope"})) == "unknown-actor"
    assert problem_type(api.post("/api/v1/schedules", json={**body, "args": [1, 2, 3]})) == "bad-arguments"
    assert problem_type(api.post("/api/v1/schedules", json={**body, "name": "api_echo"})) == "conflict"
    created = api.post("/api/v1/schedules", json=body)
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert schedule["source"] == "runtime" and schedule["description"] == "every 10 minutes"
    assert schedule["next_run_at"] is not None and schedule["args"] == ["SCHED"]
    assert problem_type(api.post("/api/v1/schedules", json=body)) == "conflict"
    changed = api.patch(f"/api/v1/schedules/{name}", json={"cron": "@daily", "kwargs": {"qty": 3}})
    assert changed.json()["spec"] == "@daily" and changed.json()["kwargs"] == {"qty": 3}
    job_id = api.post(f"/api/v1/schedules/{name}/run").json()["job_id"]
    wait_until(lambda: job_status(api, job_id) == "completed", timeout=30, what="the schedule's run")
    assert api.get(f"/api/v1/jobs/{job_id}").json()["kwargs"] == {"qty": 3}
    code = next(s for s in api.get("/api/v1/schedules").json() if s["source"] == "code")
    assert problem_type(api.delete(f"/api/v1/schedules/{code['name']}")) == "conflict"
    assert api.delete(f"/api/v1/schedules/{name}").status_code == 204
    assert name not in [s["name"] for s in api.get("/api/v1/schedules").json()]
    assert problem_type(api.patch(f"/api/v1/schedules/{name}", json={"cron": "@daily"})) == "not-found"


def test_bulk_cancel_by_filter(server):
    api = server.client("operator")
    tag = uuid.uuid4().hex[:8]
    ids = [
        api.post("/api/v1/jobs", json={"actor": "api_hold", "args": ["X"], "kwargs": {"note": tag}}).json()[
            "job_id"
        ]
        for _ in range(3)
    ]
    for job_id in ids:
        wait_until(lambda job_id=job_id: job_status(api, job_id) == "pending", timeout=10, what="audit rows")
    selection = {"queue": "api_idle", "args": {"note": tag}}
    preview = api.post("/api/v1/jobs:cancel", json={**selection, "dry_run": True})
    assert preview.status_code == 200 and preview.json()["count"] == 3
    assert job_status(api, ids[0]) == "pending", "a dry run cancels nothing"
    assert problem_type(server.client("viewer").post("/api/v1/jobs:cancel", json=selection)) == "forbidden"
    operation_id = api.post("/api/v1/jobs:cancel", json=selection).json()["operation_id"]
    done = wait_until(
        lambda: (op := api.get(f"/api/v1/operations/{operation_id}").json())["status"] != "running" and op,
        timeout=20,
        what="the operation",
    )
    assert (done["status"], done["total"], done["done"]) == ("succeeded", 3, 3)
    assert {job_status(api, job_id) for job_id in ids} == {"cancelled"}
    assert api.post("/api/v1/jobs:cancel", json={**selection, "dry_run": True}).json()["count"] == 0


def test_a_runs_history_and_signals(server):
    api = server.client("operator")
    run_id = api.post("/api/v1/workflows/system_check/runs", json={}).json()["run_id"]
    wait_until(
        lambda: api.get(f"/api/v1/workflow-runs/{run_id}").json()["status"] == "succeeded",
        timeout=30,
        what="the run",
    )
    history = api.get(f"/api/v1/workflow-runs/{run_id}/history").json()
    kinds = [(entry["kind"], entry["step"]) for entry in history]
    assert kinds[0] == ("started", None) and kinds[-1] == ("run_succeeded", None)
    assert kinds.index(("succeeded", "health")) < kinds.index(("dispatched", "ping"))
    finished = api.post(f"/api/v1/workflow-runs/{run_id}/signals/go", json={"payload": 1})
    assert finished.status_code == 409 and "only a running run takes signals" in finished.json()["detail"]
    assert problem_type(api.post("/api/v1/workflow-runs/nope/signals/go")) == "not-found"
    # A run that stays running here (no worker consumes the orders queue): its signal is kept.
    order = {"order": {"symbol": "SYM1", "action": "BUY", "quantity": 1}}
    waiting = api.post("/api/v1/workflows/order_with_prerequisites/runs", json={"inputs": order}).json()[
        "run_id"
    ]
    sent = api.post(f"/api/v1/workflow-runs/{waiting}/signals/filled", json={"payload": {"price": 1}})
    assert sent.status_code == 202 and sent.json() == {"run_id": waiting, "signal": "filled", "woke": 0}
    assert ("signal_received", None) in [
        (e["kind"], e["step"]) for e in api.get(f"/api/v1/workflow-runs/{waiting}/history").json()
    ]
    viewer = server.client("viewer")
    assert problem_type(viewer.post(f"/api/v1/workflow-runs/{waiting}/signals/filled")) == "forbidden"
    api.post(f"/api/v1/workflow-runs/{waiting}/cancel", params={"compensate": "false"})
