"""The API app in this process (uvicorn in a thread, real HTTP): settings that change its behaviour,
and the ``tradeflow api-keys`` commands."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from conftest import run_cli, settings_env
from obs_support import free_port

from api.cli.http import API_KEY_FIELDS
from api.http import create_app
from api.http.pagination import decode_cursor, encode_cursor
from api.http.problems import Problem
from storage import create_api_key, create_db_engine, list_api_keys


@contextmanager
def serving(settings, **app_options) -> Iterator[str]:
    """``create_app(settings)`` served by uvicorn in a thread; its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, **app_options), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _token(settings, role: str) -> dict[str, str]:
    _, token = create_api_key(create_db_engine(settings.database_url), name=role, role=role)
    return {"Authorization": f"Bearer {token}"}


def test_read_only_refuses_actions_for_every_role_but_serves_reads(settings):
    read_only = settings.model_copy(update={"api_read_only": True})
    with serving(read_only) as url:
        admin = _token(settings, "admin")
        response = httpx.post(f"{url}/api/v1/jobs", json={"actor": "ping"}, headers=admin)
        assert response.status_code == 403 and response.json()["type"] == "urn:tradeflow:problem:read-only"
        refused = httpx.post(f"{url}/api/v1/keys", json={"name": "x", "role": "viewer"}, headers=admin)
        assert refused.status_code == 403
        assert httpx.get(f"{url}/api/v1/jobs", headers=admin).status_code == 200
        log = httpx.get(f"{url}/api/v1/audit", headers=admin).json()["items"]
        assert {row["action"] for row in log} == {"jobs.submit", "keys.manage"}
        assert {row["status_code"] for row in log} == {403}


def test_without_a_broker_sending_is_unavailable_and_readiness_follows_redis(settings):
    with serving(settings) as url:
        operator = _token(settings, "operator")
        response = httpx.post(f"{url}/api/v1/jobs", json={"actor": "ping"}, headers=operator)
        assert response.status_code == 503 and response.json()["type"].endswith(":unavailable")
        assert httpx.get(f"{url}/readyz").status_code == 200
    unreachable = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with serving(unreachable) as url:
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["redis"] != "ok"


def test_a_body_over_the_limit_is_refused_before_parsing(settings):
    with serving(settings.model_copy(update={"api_max_payload_bytes": 2048})) as url:
        operator = _token(settings, "operator")
        big = b'{"actor": "ping", "args": ["' + b"x" * 4096 + b'"]}'
        declared = httpx.post(
            f"{url}/api/v1/jobs", content=big, headers={**operator, "content-type": "application/json"}
        )
        assert declared.status_code == 413 and declared.headers["content-type"] == "application/problem+json"

        def chunks():
            yield big[:1000]
            yield big[1000:]

        streamed = httpx.post(
            f"{url}/api/v1/jobs", content=chunks(), headers={**operator, "content-type": "application/json"}
        )
        assert streamed.status_code == 413


def test_cursors_round_trip_and_reject_forgeries():
    from datetime import datetime

    moment = datetime(2026, 1, 2, 3, 4, 5, 678000)
    assert decode_cursor(encode_cursor(moment, "id-1"), arity=2) == [moment, "id-1"]
    for forged in ("", "!!!", encode_cursor(1, 2, 3), "eyJ4IjoxfQ"):
        with pytest.raises(Problem):
            decode_cursor(forged, arity=2)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_api_keys_commands(settings):
    env = settings_env(settings)
    created = run_cli("api-keys", "create", "--role", "operator", "--name", "ci", "--expires", "30d", env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("tf_")
    engine = create_db_engine(settings.database_url)
    (key,) = list_api_keys(engine)
    assert key.role == "operator" and key.name == "ci" and key.expires_at is not None
    assert token not in (key.token_hash, key.key_id), "only a hash is stored"
    assert key.key_id in run_cli("api-keys", "list", env=env).stdout
    bad = run_cli("api-keys", "create", "--role", "root", env=env)
    assert bad.returncode == 1 and "unknown role 'root'" in bad.stderr
    assert run_cli("api-keys", "revoke", key.key_id, env=env).returncode == 0
    assert list_api_keys(engine)[0].revoked_at is not None
    listed = run_cli("api-keys", "list", "--json", env=env)
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert tuple(row) == API_KEY_FIELDS and (row["key_id"], row["name"], row["role"]) == (
        key.key_id,
        "ci",
        "operator",
    )
    assert row["revoked_at"] and row["expires_at"] and row["last_used_at"] is None
    assert token not in listed.stdout and key.token_hash not in listed.stdout
    missing = run_cli("api-keys", "revoke", "nope", env=env)
    assert missing.returncode == 1 and "no API key with id 'nope'" in missing.stderr
