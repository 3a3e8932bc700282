"""Priority lanes: critical jumps a backlog of low, low is never starved, the audit row records the lane."""

from __future__ import annotations

import time

import dramatiq
import pytest
import redis
from broker_support import running_worker, sqlite_settings, wait_until
from conftest import run_cli, settings_env

from actors import audit_writer_of, build_broker
from actors.broker import LANES, LanePolicy, send_many
from storage import create_db_engine, get_task


@pytest.fixture
def broker_settings(redis_url, namespace, tmp_path):
    return sqlite_settings(redis_url, namespace, tmp_path)


def test_lane_policy_is_strict_but_serves_each_lower_lane_regularly():
    policy = LanePolicy(aging_every=4)
    orders = [policy.next_order() for _ in range(24)]
    assert sum(order == LANES for order in orders) == 18
    firsts = [order[0] for order in orders if order != LANES]
    assert sorted(firsts) == ["high", "high", "low", "low", "normal", "normal"]
    assert all(sorted(order) == sorted(LANES) for order in orders)
    assert all(order == LANES for order in (LanePolicy(aging_every=0).next_order() for _ in range(50)))


@pytest.mark.timeout(60)
def test_critical_job_starts_within_a_job_duration_behind_ten_thousand_low(broker_settings, redis_url):
    job_seconds, threads = 0.5, 2
    broker = build_broker(broker_settings)
    client = redis.Redis.from_url(redis_url)
    starts = f"{broker_settings.namespace}:starts"

    @dramatiq.actor(broker=broker, queue_name="lanes", max_retries=0)
    def job(tag: str) -> None:
        client.rpush(starts, f"{tag}:{time.time()}")
        time.sleep(job_seconds)

    send_many(job, [("low",)] * 10_000, priority="low")
    with running_worker(broker, threads=threads):
        assert wait_until(lambda: client.llen(starts) >= threads, timeout=10)  # the worker is busy
        sent_at, before = time.time(), client.llen(starts)
        critical = job.send_with_options(args=("critical",), priority="critical")
        assert wait_until(
            lambda: any(s.startswith(b"critical") for s in client.lrange(starts, 0, -1)), timeout=10
        )
        order = [entry.decode().split(":") for entry in client.lrange(starts, 0, -1)]
    position = [tag for tag, _ in order].index("critical")
    started_at = float(order[position][1])
    # At most one aging fetch can put a low job first; on a loaded machine give time twice the bound.
    assert position - before <= 1, order[before:]
    assert started_at - sent_at < 2 * job_seconds
    assert audit_writer_of(broker).close(10)
    assert (
        get_task(create_db_engine(broker_settings.database_url), critical.message_id).priority == "critical"
    )


@pytest.mark.timeout(60)
def test_low_jobs_run_while_a_critical_backlog_remains(broker_settings, redis_url):
    broker = build_broker(broker_settings.model_copy(update={"audit_enabled": False}))
    client = redis.Redis.from_url(redis_url)
    runs = f"{broker_settings.namespace}:runs"

    @dramatiq.actor(broker=broker, queue_name="starve", max_retries=0)
    def job(tag: str) -> None:
        client.rpush(runs, tag)
        time.sleep(0.005)

    send_many(job, [("low",)] * 20, priority="low")
    send_many(job, [("critical",)] * 400, priority="critical")
    with running_worker(broker, threads=2):
        assert wait_until(lambda: client.llen(runs) == 420, timeout=40)
    order = [tag.decode() for tag in client.lrange(runs, 0, -1)]
    first_low, last_critical = order.index("low"), len(order) - 1 - order[::-1].index("critical")
    assert first_low < 100 < last_critical, "low waited for the whole critical backlog"
    assert order[:4] == ["critical"] * 4


def test_unknown_priority_is_refused_with_the_lanes_named(broker_settings):
    broker = build_broker(broker_settings)

    @dramatiq.actor(broker=broker, queue_name="lanes")
    def job() -> None:
        pass

    with pytest.raises(
        ValueError, match=r"priority must be one of critical, high, normal, low \(got 'urgent'\)"
    ):
        job.send_with_options(priority="urgent")


@pytest.mark.timeout(60)
def test_cli_send_takes_priority_and_refuses_unknown_ones(broker_settings):
    env = settings_env(broker_settings)
    sent = run_cli("send", "ping", "--priority", "high", env=env)
    assert sent.returncode == 0, sent.stderr
    message_id = sent.stdout.strip()
    assert get_task(create_db_engine(broker_settings.database_url), message_id).priority == "high"
    lane = f"{broker_settings.namespace}:system:high"
    assert redis.Redis.from_url(broker_settings.effective_redis_url).llen(lane) == 1
    refused = run_cli("send", "ping", "--priority", "urgent", env=env)
    assert refused.returncode != 0
    assert "priority must be one of critical, high, normal, low" in refused.stdout + refused.stderr


@pytest.mark.timeout(60)
def test_delayed_messages_run_on_their_lane_when_due(broker_settings, redis_url):
    broker = build_broker(broker_settings)
    client = redis.Redis.from_url(redis_url)
    runs = f"{broker_settings.namespace}:runs"

    @dramatiq.actor(broker=broker, queue_name="later", max_retries=0)
    def job(tag: str) -> None:
        client.rpush(runs, tag)

    single = job.send_with_options(args=("single",), delay=300, priority="critical")
    send_many(job, [("batch",)] * 3, delay=300, priority="high")
    with running_worker(broker):
        assert wait_until(lambda: client.llen(runs) == 4, timeout=15)
    assert sorted(client.lrange(runs, 0, -1)) == [b"batch"] * 3 + [b"single"]
    assert audit_writer_of(broker).close(10)
    assert get_task(create_db_engine(broker_settings.database_url), single.message_id).priority == "critical"
