"""The legacy ``strategy_queue`` list: documents pushed by ``redis-cli`` become Dramatiq messages.

The producer here is ``redis-cli``, not our Python code, so the wire format
is exercised exactly as a Go or Node.js service would use it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import redis

from actors.runtime import build_broker
from actors.settings import Settings
from actors.strategies import ResultStatus, StrategyQueueRelay, TaskResultStore, dispatch_through

pytestmark = pytest.mark.timeout(60)

BACKTEST = {
    "task_id": "bt-1",
    "task_type": "backtest",
    "args": {
        "strategy_code": "def s(df):\n    return []",
        "symbols": ["AAPL", "MSFT"],
        "start_date": "2024-01-01",
        "end_date": "2024-06-30",
    },
}
SCREENING = {
    "task_id": "sc-1",
    "task_type": "screening",
    "args": {"strategy_code": "def s(df):\n    return []", "universe": ["AAPL"], "limit": 5},
}


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def broker(redis_url: str, namespace: str):
    broker = build_broker(Settings(redis_url=redis_url, namespace=namespace, audit_enabled=False))
    yield broker
    broker.close()


@pytest.fixture
def relay(client: redis.Redis, namespace: str, broker) -> StrategyQueueRelay:
    results = TaskResultStore(client=client, prefix=f"{namespace}-task_result:", ttl_seconds=60)
    return StrategyQueueRelay(
        client=client,
        source=f"{namespace}-strategy_queue",
        results=results,
        dispatch=dispatch_through(broker),
        block_seconds=0.1,
    )


def redis_cli(redis_url: str, *args: str) -> str:
    """Run ``redis-cli`` against the test database, as a non-Python producer would."""
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed")
    url = urlparse(redis_url)
    database = url.path.lstrip("/") or "0"
    command = ["redis-cli", "-h", url.hostname, "-p", str(url.port or 6379), "-n", database, *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=10).stdout.strip()


def enqueued(client: redis.Redis, namespace: str) -> Iterator[dict]:
    """The Dramatiq messages waiting on the strategy queue, oldest first."""
    ids = client.lrange(f"{namespace}:strategy", 0, -1)
    stored = client.hgetall(f"{namespace}:strategy.msgs")
    return [json.loads(stored[message_id]) for message_id in ids]


def test_pushed_tasks_become_messages_in_order(relay, client, namespace: str, redis_url: str) -> None:
    for document in (BACKTEST, SCREENING):
        redis_cli(redis_url, "LPUSH", relay.source, json.dumps(document))
    assert relay.relay_one() and relay.relay_one()
    assert not relay.relay_one()
    messages = enqueued(client, namespace)
    assert [(m["actor_name"], m["args"][0]) for m in messages] == [
        ("run_backtest", "bt-1"),
        ("run_screening", "sc-1"),
    ]
    assert messages[0]["args"][1] == BACKTEST["args"]
    assert client.llen(relay.source) == 0 and client.llen(relay.processing) == 0


MALFORMED = [
    ("{not json", None, "Invalid task: not valid JSON"),
    ("[1, 2]", None, "Invalid task: expected a JSON object, got list"),
    (json.dumps({"task_type": "backtest", "args": {}}), None, "task_id: Field required"),
    (
        json.dumps({**SCREENING, "task_type": "optimise"}),
        "sc-1",
        "task_type: Input should be 'backtest' or 'screening'",
    ),
    (json.dumps({"task_id": "x-1", "task_type": "backtest"}), "x-1", "args: Field required"),
    (
        json.dumps({**BACKTEST, "args": {**BACKTEST["args"], "start_date": "2024-13-01"}}),
        "bt-1",
        "args.start_date",
    ),
    (
        json.dumps({**BACKTEST, "args": {**BACKTEST["args"], "start_date": "2025-01-01"}}),
        "bt-1",
        "start_date 2025-01-01 is after end_date 2024-06-30",
    ),
    (
        json.dumps({**SCREENING, "args": {**SCREENING["args"], "limit": 0}}),
        "sc-1",
        "args.limit: Input should be greater",
    ),
    (json.dumps({**SCREENING, "args": {**SCREENING["args"], "universe": []}}), "sc-1", "args.universe"),
    (
        json.dumps({**SCREENING, "args": {**SCREENING["args"], "colour": "red"}}),
        "sc-1",
        "args.colour: Extra inputs",
    ),
    (
        json.dumps({**SCREENING, "task_id": "bad id with spaces"}),
        None,
        "task_id: String should match pattern",
    ),
]


@pytest.mark.parametrize(("raw", "task_id", "expected"), MALFORMED)
def test_malformed_tasks_get_a_clear_error_and_enqueue_nothing(
    raw: str, task_id: str | None, expected: str, relay, client, namespace: str, redis_url: str
) -> None:
    redis_cli(redis_url, "LPUSH", relay.source, raw)
    assert relay.relay_one()
    assert enqueued(client, namespace) == []
    assert client.llen(relay.processing) == 0
    kept = json.loads(client.lindex(relay.invalid, 0))
    assert expected in kept["error"] and kept["document"] == raw
    if task_id is not None:
        document = json.loads(redis_cli(redis_url, "GET", relay.results.key(task_id)))
        assert document["status"] == ResultStatus.ERROR == "error"
        assert expected in document["data"]["error"]
        assert set(document) == {"status", "data", "updated_at"}


def test_a_task_left_by_a_crashed_relay_is_sent_on_restart(
    relay, client, namespace: str, redis_url: str
) -> None:
    redis_cli(redis_url, "LPUSH", relay.source, json.dumps(BACKTEST))
    redis_cli(redis_url, "LPUSH", relay.source, json.dumps(SCREENING))
    # What a relay does right before it dies: the atomic move, and nothing else.
    redis_cli(redis_url, "LMOVE", relay.source, relay.processing, "RIGHT", "LEFT")
    assert enqueued(client, namespace) == []
    assert relay.recover() == 1
    assert relay.relay_one()
    assert [m["args"][0] for m in enqueued(client, namespace)] == ["bt-1", "sc-1"]
    assert client.llen(relay.processing) == 0


def test_a_relay_killed_with_sigkill_loses_nothing(client, namespace: str, redis_url: str) -> None:
    """A real relay process is SIGKILLed; tasks pushed meanwhile, and one it had moved, all get sent."""
    import signal
    import sys

    from conftest import REPO_ROOT, settings_env

    settings = Settings(
        redis_url=redis_url,
        namespace=namespace,
        audit_enabled=False,
        strategy_legacy_queue=f"{namespace}-strategy_queue",
        strategy_result_prefix=f"{namespace}-task_result:",
    )
    source, processing = settings.strategy_legacy_queue, f"{settings.strategy_legacy_queue}:processing"

    def start_relay() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "api.cli", "strategy-relay"],
            env=settings_env(settings),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )

    def wait_until(condition, what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    relay = start_relay()
    assert "relaying" in relay.stdout.readline()
    redis_cli(redis_url, "LPUSH", source, json.dumps(BACKTEST))
    wait_until(lambda: len(enqueued(client, namespace)) == 1, "the first task was not relayed")
    relay.send_signal(signal.SIGKILL)
    relay.wait(timeout=10)
    relay.stdout.close()

    redis_cli(redis_url, "LPUSH", source, json.dumps({**BACKTEST, "task_id": "bt-2"}))
    redis_cli(redis_url, "LPUSH", source, json.dumps(SCREENING))
    redis_cli(redis_url, "LMOVE", source, processing, "RIGHT", "LEFT")  # as if moved right before the kill
    relay = start_relay()
    try:
        wait_until(lambda: len(enqueued(client, namespace)) == 3, "tasks were lost across the SIGKILL")
        wait_until(lambda: client.llen(processing) == 0 and client.llen(source) == 0, "lists not drained")
    finally:
        relay.terminate()
        relay.wait(timeout=10)
        relay.stdout.close()
    assert relay.returncode == 0
    assert [m["args"][0] for m in enqueued(client, namespace)] == ["bt-1", "bt-2", "sc-1"]


def test_the_relay_waits_out_an_unreachable_redis(namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    import threading

    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    relay = StrategyQueueRelay(
        client=down,
        source=f"{namespace}-strategy_queue",
        results=TaskResultStore(client=down, prefix=f"{namespace}-task_result:"),
        dispatch=lambda task: None,
        block_seconds=0.1,
    )
    stop = threading.Event()
    runner = threading.Thread(target=relay.run, args=(stop,))
    runner.start()
    time.sleep(1.5)
    assert runner.is_alive()
    stop.set()
    runner.join(timeout=5)
    assert not runner.is_alive()
    assert "Redis unreachable" in caplog.text and "retrying" in caplog.text
