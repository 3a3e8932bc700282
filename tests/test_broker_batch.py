"""send_many: one round trip, every message run once with its audit row, exact report of a broken batch."""

from __future__ import annotations

import dramatiq
import pytest
import redis
from broker_support import running_worker, sqlite_settings, wait_until
from dramatiq.middleware import CurrentMessage, MiddlewareError
from tcp_proxy import proxied_redis

from actors import audit_writer_of, build_broker
from actors.broker import (
    DISPATCH_SCRIPT,
    ENQUEUE_CHUNK,
    EnqueueBatch,
    SendManyError,
    WakeupRedisBroker,
    enqueue_messages,
    send_many,
)
from storage import create_db_engine, status_counts


def _recording_actor(broker, client: redis.Redis, namespace: str) -> dramatiq.Actor:
    @dramatiq.actor(broker=broker, queue_name="fanout", max_retries=0)
    def record(index: int) -> None:
        message_id = CurrentMessage.get_current_message().message_id
        pipeline = client.pipeline()
        pipeline.hincrby(f"{namespace}:runs", index, 1)
        pipeline.hset(f"{namespace}:ids", index, message_id)
        pipeline.execute()

    return record


@pytest.mark.timeout(120)
def test_send_many_ten_thousand_run_once_in_order_with_audit_rows(settings, redis_url):
    count = 10_000
    broker = build_broker(settings)
    client = redis.Redis.from_url(redis_url)
    record = _recording_actor(broker, client, settings.namespace)

    ids = send_many(record, [(index,) for index in range(count)])

    assert len(ids) == count == len(set(ids))
    with running_worker(broker, threads=8):
        assert wait_until(lambda: client.hlen(f"{settings.namespace}:runs") == count, timeout=90)
        broker.join(record.queue_name, timeout=30_000)
    runs = client.hgetall(f"{settings.namespace}:runs")
    assert {int(value) for value in runs.values()} == {1}, "some message ran twice"
    stored = {
        int(index): message_id.decode()
        for index, message_id in client.hgetall(f"{settings.namespace}:ids").items()
    }
    assert [stored[index] for index in range(count)] == ids, "ids not returned in order"
    assert audit_writer_of(broker).close(30)
    assert status_counts(create_db_engine(settings.database_url), task_ids=ids) == {"completed": count}


def test_send_many_rejects_bad_items_and_priorities_before_sending(redis_url, namespace, tmp_path):
    broker = build_broker(sqlite_settings(redis_url, namespace, tmp_path))
    record = _recording_actor(broker, redis.Redis.from_url(redis_url), namespace)

    with pytest.raises(TypeError, match=r"item 1 is a int .*written \(5,\)"):
        send_many(record, [(1,), 5])
    with pytest.raises(ValueError, match="priority must be one of critical, high, normal, low"):
        send_many(record, [(1,)], priority="urgent")
    assert broker.client.hlen(f"{namespace}:fanout.msgs") == 0


def test_send_many_falls_back_to_single_sends_on_stock_broker(redis_url, namespace, tmp_path):
    broker = build_broker(sqlite_settings(redis_url, namespace, tmp_path, stock_broker=True))
    client = redis.Redis.from_url(redis_url)
    record = _recording_actor(broker, client, namespace)

    ids = send_many(record, [(index,) for index in range(20)])

    with running_worker(broker):
        assert wait_until(lambda: client.hlen(f"{namespace}:ids") == 20, timeout=20)
    stored = {int(index): value.decode() for index, value in client.hgetall(f"{namespace}:ids").items()}
    assert [stored[index] for index in range(20)] == ids


def _send_through_cut(redis_url: str, namespace: str, tmp_path, *, refuse_later: bool):
    """enqueue_many of three chunks through a proxy that cuts the pipeline half way through chunk two."""
    settings = sqlite_settings(redis_url, namespace, tmp_path, audit_enabled=False)
    direct = redis.Redis.from_url(redis_url)
    direct.script_load(DISPATCH_SCRIPT)
    probe = build_broker(settings)
    record = _recording_actor(probe, direct, namespace)
    messages = [record.message(index) for index in range(3 * ENQUEUE_CHUNK)]
    chunks = EnqueueBatch(probe, messages, delay=None)._chunks(
        [probe._prepare(message, None) for message in messages], ["normal"] * len(messages)
    )
    sha = probe.scripts["dispatch"].sha
    packer = redis.connection.Connection()
    sizes = [
        len(b"".join(packer.pack_command("EVALSHA", sha, 1, namespace, *chunk.argv))) for chunk in chunks
    ]
    proxy, proxied = proxied_redis(redis_url)
    proxy.cut_after(sizes[0] + sizes[1] // 2, stay_down=refuse_later)
    no_retry = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
    client = redis.Redis.from_url(proxied, retry=no_retry)
    broker = WakeupRedisBroker(client=client, namespace=namespace)
    try:
        with pytest.raises(SendManyError) as caught:
            broker.enqueue_many(messages)
    finally:
        proxy.close()
    return messages, caught.value


def _ids(messages) -> list[str]:
    return [message.message_id for message in messages]


def test_broken_batch_reports_exactly_which_messages_were_enqueued(redis_url, namespace, tmp_path):
    messages, error = _send_through_cut(redis_url, namespace, tmp_path, refuse_later=False)

    assert error.enqueued_ids == _ids(messages[:ENQUEUE_CHUNK])
    assert _ids(error.not_enqueued) == _ids(messages[ENQUEUE_CHUNK:])
    assert error.unknown == []
    assert f"{ENQUEUE_CHUNK} of {len(messages)} messages enqueued" in str(error)
    direct = redis.Redis.from_url(redis_url)
    assert direct.llen(f"{namespace}:fanout") == ENQUEUE_CHUNK
    assert direct.hlen(f"{namespace}:fanout.msgs") == ENQUEUE_CHUNK


def test_broken_batch_with_redis_still_away_reports_unknown(redis_url, namespace, tmp_path):
    messages, error = _send_through_cut(redis_url, namespace, tmp_path, refuse_later=True)

    assert error.enqueued == [] and error.not_enqueued == []
    assert _ids(error.unknown) == _ids(messages)
    assert f"0 of {len(messages)} messages enqueued" in str(error) and f"{len(messages)} unknown" in str(
        error
    )


class Gate(dramatiq.Middleware):
    """Counts enqueue hooks; refuses the message whose first argument is ``refuse``."""

    def __init__(self, refuse: int | None = None) -> None:
        self.refuse = refuse
        self.before: list[str] = []
        self.after: list[str] = []

    def before_enqueue(self, broker, message, delay) -> None:
        if message.args and message.args[0] == self.refuse:
            raise MiddlewareError(f"refused {self.refuse}")  # the one error Dramatiq lets through
        self.before.append(message.message_id)

    def after_enqueue(self, broker, message, delay) -> None:
        self.after.append(message.message_id)


def test_send_many_runs_enqueue_hooks_per_message_and_a_refusal_sends_nothing(redis_url, namespace, tmp_path):
    broker = build_broker(sqlite_settings(redis_url, namespace, tmp_path, audit_enabled=False))
    gate = Gate()
    broker.add_middleware(gate)
    record = _recording_actor(broker, redis.Redis.from_url(redis_url), namespace)

    ids = send_many(record, [(index,) for index in range(1_200)])
    assert gate.before == gate.after == ids

    gate.refuse = 7
    with pytest.raises(SendManyError, match="0 of 10 messages enqueued, 10 not enqueued") as caught:
        send_many(record, [(index,) for index in range(10)])
    assert isinstance(caught.value.cause, MiddlewareError)
    assert broker.client.llen(f"{namespace}:fanout") == 1_200


@pytest.mark.parametrize("stock", [False, True], ids=["tradeflow", "stock"])
def test_enqueue_messages_sends_a_group_of_several_actors(redis_url, namespace, tmp_path, stock):
    broker = build_broker(
        sqlite_settings(redis_url, namespace, tmp_path, audit_enabled=False, stock_broker=stock)
    )
    client = redis.Redis.from_url(redis_url)
    runs = f"{namespace}:group"

    @dramatiq.actor(broker=broker, queue_name="group-a", max_retries=0)
    def first(index: int) -> None:
        client.rpush(runs, f"first:{index}")

    @dramatiq.actor(broker=broker, queue_name="group-b", max_retries=0)
    def second(index: int) -> None:
        client.rpush(runs, f"second:{index}")

    group = [first.message(0), second.message(1), first.message(2)]
    enqueued = enqueue_messages(broker, group)

    assert [message.message_id for message in enqueued] == [message.message_id for message in group]
    assert [message.queue_name for message in enqueued] == ["group-a", "group-b", "group-a"]
    with running_worker(broker):
        assert wait_until(lambda: client.llen(runs) == 3, timeout=20)
    assert sorted(client.lrange(runs, 0, -1)) == [b"first:0", b"first:2", b"second:1"]
