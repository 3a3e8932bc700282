"""The producer examples of docs/producers.md, each run against a real worker: the job runs once.

Also what a worker does with raw messages it cannot run: an unknown actor and
a body that is not a Dramatiq message go to the dead letters with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from conftest import REPO_ROOT, run_cli, settings_env
from jobs_support import sqlite_only, wait_for
from test_e2e import start_worker, stop_worker

from storage import create_db_engine, get_task

pytestmark = [pytest.mark.e2e, sqlite_only]

EXAMPLES = REPO_ROOT / "docs" / "producers"


def _producers() -> dict[str, list[str]]:
    """The command line of each example (the interpreters it needs must be on this machine)."""
    commands = {
        "redis-cli": ["sh", str(EXAMPLES / "send.sh")],
        # -I: no PYTHONPATH, no current folder: the script imports only the redis package
        "python": [sys.executable, "-I", str(EXAMPLES / "send.py")],
        "node": ["node", str(EXAMPLES / "send.mjs")],
    }
    for tool in ("redis-cli", "node"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed to test the {tool} producer example")
    return commands


def _marker_runs(folder: Path) -> int:
    starts = folder / "starts"
    return len(starts.read_text().split()) if starts.exists() else 0


@pytest.mark.timeout(90)
def test_each_producer_example_runs_its_job_once(settings, tmp_path):
    env = settings_env(settings)
    client = redis.Redis.from_url(settings.redis_url)
    engine = create_db_engine(settings.database_url)
    sent = {}
    for name, command in _producers().items():
        folder = tmp_path / name
        folder.mkdir()
        args = json.dumps([str(folder), 0.0])
        done = subprocess.run(
            [*command, settings.redis_url, settings.namespace, "e2e", "slow_marker", args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert done.returncode == 0, f"{name}: {done.stderr}"
        sent[name] = (done.stdout.strip(), folder)
    # the messages are stored as the examples wrote them: no redis_message_id option
    for body in client.hvals(f"{settings.namespace}:e2e.msgs"):
        assert json.loads(body)["options"] == {}
    worker = start_worker(env)
    try:
        for name, (message_id, _folder) in sent.items():
            wait_for(
                lambda message_id=message_id: (
                    getattr(get_task(engine, message_id), "status", None) == "completed"
                ),
                timeout=40,
                what=f"the {name} producer's job to complete",
            )
        # acked: nothing left in Redis that could run it again (a restart, a dead-worker recovery)
        wait_for(
            lambda: client.hlen(f"{settings.namespace}:e2e.msgs") == 0,
            timeout=10,
            what="the acks of the foreign messages",
        )
        acks = list(client.scan_iter(match=f"{settings.namespace}:__acks__.*"))
        assert all(client.scard(key) == 0 for key in acks)
    finally:
        stop_worker(worker)
    for name, (message_id, folder) in sent.items():
        assert _marker_runs(folder) == 1, f"the {name} producer's job ran {_marker_runs(folder)} times"
        row = get_task(engine, message_id)
        assert (row.task_type, row.queue) == ("slow_marker", "e2e")


@pytest.mark.timeout(60)
def test_raw_messages_a_worker_cannot_run_go_to_the_dead_letters_with_the_reason(settings):
    env = settings_env(settings)
    client = redis.Redis.from_url(settings.redis_url)
    namespace = settings.namespace
    unknown = str(uuid.uuid4())
    message = {
        "queue_name": "e2e",
        "actor_name": "no_such_actor",
        "args": [1],
        "kwargs": {},
        "options": {},
        "message_id": unknown,
        "message_timestamp": int(time.time() * 1000),
    }
    client.hset(f"{namespace}:e2e.msgs", unknown, json.dumps(message))
    client.hset(f"{namespace}:e2e.msgs", "garbage-1", "this is not json")
    client.rpush(f"{namespace}:e2e", unknown, "garbage-1")
    engine = create_db_engine(settings.database_url)
    worker = start_worker(env)
    try:
        row = wait_for(
            lambda: get_task(engine, unknown), timeout=40, what="the audit row of the unknown actor's message"
        )
        wait_for(lambda: client.zcard(f"{namespace}:e2e.XQ") == 2, timeout=10, what="two dead letters")
    finally:
        stop_worker(worker)
    assert row.status == "dead_letter" and row.task_type == "no_such_actor"
    assert "ActorNotFound" in row.error_message and row.args == {"args": [1], "kwargs": {}}
    listing = run_cli("dlq", "list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    letters = {(letter := json.loads(line))["message_id"]: letter for line in listing.stdout.splitlines()}
    assert "no_such_actor" in letters[unknown]["error"]
    assert letters["garbage-1"]["actor"] == "<undecodable>"
    assert letters["garbage-1"]["error"].startswith("not a Dramatiq message")
    assert client.hlen(f"{namespace}:e2e.msgs") == 0
