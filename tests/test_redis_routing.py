"""Per-queue Redis routing: two private redis-server processes, one queue on each."""

from __future__ import annotations

import json
import time

import dramatiq
import pytest
from broker_support import running_worker, sqlite_settings, wait_until
from dramatiq.results import Results
from redis_servers import start_redis

from actors import build_broker
from actors.broker import RedisRoutes, check_redis_url, parse_sentinel_url, send_many
from actors.middleware import cancel_job, list_dead_letters, recover_stalled
from actors.settings import Settings
from actors.telemetry import RedisStateCollector

#: Queue on the default Redis (server A) and queue routed to server B.
HOME, AWAY = "routing-home", "routing-away"


@pytest.fixture
def servers(tmp_path):
    a = start_redis(tmp_path)
    b = start_redis(tmp_path)
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def routed(servers, tmp_path):
    a, b = servers
    settings = sqlite_settings(
        a.url,
        "routing",
        tmp_path,
        redis_queue_urls={AWAY: b.url},
        min_backoff_ms=10,
        max_backoff_ms=20,
    )
    return settings, a, b


def _keys(server, pattern: str) -> set[str]:
    return {key.decode() for key in server.client.scan_iter(match=pattern, count=1000)}


def test_each_queue_its_messages_results_delays_and_dead_letters_on_its_own_redis(routed):
    settings, a, b = routed
    broker = build_broker(settings)

    @dramatiq.actor(broker=broker, queue_name=HOME, store_results=True, max_retries=0)
    def home(x: int) -> int:
        return x * 2

    @dramatiq.actor(broker=broker, queue_name=AWAY, store_results=True, max_retries=0)
    def away(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x * 3

    homes = [home.send(i) for i in range(5)]
    aways = [away.send_with_options(args=(i,), priority="critical") for i in range(5)]
    send_many(away, [(i,) for i in range(5, 10)], priority="low")
    send_many(home, [(i,) for i in range(5, 10)])
    delayed = away.send_with_options(args=(100,), delay=300)
    failing = away.send(-1)

    # before any worker runs: each queue's lists on its own server only
    assert a.client.llen(f"routing:{HOME}") == 10 and b.client.llen(f"routing:{HOME}") == 0
    assert b.client.llen(f"routing:{AWAY}:critical") == 5 and b.client.llen(f"routing:{AWAY}:low") == 5
    assert not _keys(a, f"routing:{AWAY}*")
    assert b.client.llen(f"routing:{AWAY}.DQ") == 1 and not a.client.exists(f"routing:{AWAY}.DQ")
    depths = RedisStateCollector(
        client=a.client, namespace="routing", queues=[HOME, AWAY], heartbeat_timeout=1, routes=broker.routes
    ).depths()
    assert depths[HOME]["ready"] == 10 and depths[AWAY]["ready"] == 11 and depths[AWAY]["delayed"] == 1

    backend = next(m for m in broker.middleware if isinstance(m, Results)).backend

    def result(message):
        return backend.get_result(message, block=True, timeout=10_000)

    with running_worker(broker, threads=4):
        assert [result(m) for m in homes] == [i * 2 for i in range(5)]
        assert [result(m) for m in aways] == [i * 3 for i in range(5)]
        assert result(delayed) == 300
        assert wait_until(lambda: list_dead_letters(broker, queue=AWAY), timeout=10)
        # each result on the server of its message's queue, and only there
        for messages, server, other in ((homes, a, b), ([*aways, delayed], b, a)):
            keys = [backend.build_message_key(message) for message in messages]
            assert server.client.exists(*keys) == len(keys) and other.client.exists(*keys) == 0

    # dead letter (with its reason) on B, found through the broker
    [letter] = list_dead_letters(broker)
    assert letter.message_id == failing.message_id and letter.queue == AWAY and "negative" in letter.reason
    assert b.client.zcard(f"routing:{AWAY}.XQ") == 1 and not _keys(a, "*.XQ")
    # each server saw heartbeats of the worker that consumed its queue
    assert a.client.zcard("routing:__heartbeats__") == 1 and b.client.zcard("routing:__heartbeats__") == 1


def test_cancel_and_recovery_reach_the_routed_redis(routed):
    settings, _, b = routed
    settings = settings.model_copy(update={"heartbeat_timeout_ms": 400})
    broker = build_broker(settings)

    @dramatiq.actor(broker=broker, queue_name=AWAY, max_retries=0)
    def away(x: int) -> None:
        b.client.rpush("routing:ran", x)

    # a cancelled job is skipped by admission on B
    cancelled = away.send(1)
    assert cancel_job(broker, cancelled.message_id).message_id == cancelled.message_id
    assert b.client.exists(f"routing:cancel:{cancelled.message_id}")

    # a consumer that fetched a message from B and died: its message comes back on B
    held = away.send(2)
    consumer = broker.consume(AWAY, prefetch=4, timeout=100)  # scaled to 2
    fetched = []
    deadline = time.monotonic() + 5
    while len(fetched) < 2 and time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            fetched.append(message.message_id)
    assert held.message_id in fetched
    assert b.client.llen(f"routing:{AWAY}") == 0
    survivor = build_broker(settings)  # another worker, its heartbeat fresh
    time.sleep(settings.heartbeat_timeout_ms / 1000 + 0.2)
    recovered = recover_stalled(survivor)
    assert recovered == {AWAY: 2}
    assert b.client.llen(f"routing:{AWAY}") == 2

    dramatiq.actor(away.fn, broker=survivor, queue_name=AWAY, max_retries=0, actor_name="away")
    with running_worker(survivor):
        assert wait_until(lambda: b.client.llen("routing:ran") >= 1, timeout=10)
        time.sleep(0.3)
    assert [int(x) for x in b.client.lrange("routing:ran", 0, -1)] == [2]  # the cancelled one never ran
    broker.close()


def test_routes_come_from_the_environment_and_bad_urls_are_refused(monkeypatch):
    monkeypatch.setenv("TRADEFLOW_REDIS_QUEUE_URLS", json.dumps({AWAY: "redis://10.1.2.3:6380/0"}))
    settings = Settings()
    assert settings.redis_queue_urls == {AWAY: "redis://10.1.2.3:6380/0"}
    routes = RedisRoutes.from_urls("redis://127.0.0.1:1/0", settings.redis_queue_urls)
    assert routes.client_for(f"{AWAY}.DQ") is routes.client_for(AWAY) is not routes.default
    assert routes.client_for(HOME) is routes.default and len(routes.clients()) == 2
    with pytest.raises(ValueError, match="must start with one of"):
        Settings(redis_queue_urls={AWAY: "http://x"})
    with pytest.raises(ValueError, match="service"):
        check_redis_url("redis+sentinel://127.0.0.1:26379")
    address = parse_sentinel_url("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2/trading/2")
    assert address.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (address.service, address.db, address.password) == ("trading", 2, "pw")
    with pytest.raises(ValueError, match="need tradeflow's broker"):
        build_broker(Settings(redis_queue_urls={AWAY: "redis://127.0.0.1:1/0"}, stock_broker=True))
