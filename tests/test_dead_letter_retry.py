"""Retrying dead letters in bulk: batch by batch, each letter retried exactly once, none lost, and a
retry killed part way leaves every letter either still dead or enqueued once (the rest can be
retried).  Real Redis, and the audit trail on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter

import pytest
import redis
from conftest import REPO_ROOT, settings_env
from dramatiq.message import Message
from jobs_support import sqlite_only, wait_for

from actors import audit_writer_of, build_broker
from actors.broker import LANES, dead_letter_reasons_key
from actors.middleware import iter_dead_letters, retry_dead_letters
from storage import create_db_engine, status_counts


def bury(
    client: redis.Redis, namespace: str, queue: str, count: int, *, priority: str | None = None
) -> list[str]:
    """``count`` dead letters of ``queue`` as Dramatiq and ``DeadLetterLog`` leave them (body in
    ``<queue>.XQ.msgs``, death time as the score in ``<queue>.XQ``, reason beside); their job ids."""
    xq = f"{namespace}:{queue}.XQ"
    ids = []
    now = time.time() * 1000
    with client.pipeline(transaction=False) as pipe:
        for i in range(count):
            redis_id = uuid.uuid4().hex
            options = {
                "redis_message_id": redis_id,
                "retries": 3,
                **({"priority": priority} if priority else {}),
            }
            message = Message(
                queue_name=queue,
                actor_name="ping",
                args=(i,),
                kwargs={},
                options=options,
                message_id=str(uuid.uuid4()),
            )
            pipe.hset(f"{xq}.msgs", redis_id, message.encode())
            pipe.zadd(xq, {redis_id: now - count + i})
            pipe.hset(
                dead_letter_reasons_key(namespace), redis_id, json.dumps({"reason": "boom", "attempts": 4})
            )
            ids.append(message.message_id)
        pipe.execute()
    return ids


def where(client: redis.Redis, namespace: str, queue: str) -> tuple[set[str], Counter]:
    """The job ids still dead in ``queue``, and how many times each is enqueued in it; checks that
    each dead letter is whole (entry, body) and each enqueued one is on one lane once."""
    xq = f"{namespace}:{queue}.XQ"
    bodies = client.hgetall(f"{xq}.msgs")
    entries = {key.decode() for key in client.zrange(xq, 0, -1)}
    assert {key.decode() for key in bodies} == entries, "a dead letter half gone (lost: retried by no one)"
    dead = {Message.decode(body).message_id for body in bodies.values()}
    stored = client.hgetall(f"{namespace}:{queue}.msgs")
    pushed = []
    for lane in LANES:
        key = f"{namespace}:{queue}" + ("" if lane == "normal" else f":{lane}")
        pushed += [entry.decode() for entry in client.lrange(key, 0, -1)]
    assert sorted(pushed) == sorted(key.decode() for key in stored), "a stored message on no lane, or twice"
    live = Counter(Message.decode(body).message_id for body in stored.values())
    return dead, live


@pytest.fixture
def broker(settings):
    broker = build_broker(settings)
    yield broker
    audit_writer_of(broker).close(5)


def retry_all(broker, *, queue: str | None = None, batch: int = 500) -> list[str]:
    """What the API's bulk operation does: read the letters a chunk at a time (the next chunks
    while it retries this one), retry each chunk."""
    from api.http.bulk import batches, read_ahead

    retried = []
    for chunk in read_ahead(batches(iter_dead_letters(broker, queue=queue), batch)):
        retried += retry_dead_letters(broker, chunk)
    return retried


def test_a_bulk_retry_moves_each_letter_once_with_its_pending_row(broker, settings):
    client = redis.Redis.from_url(settings.redis_url)
    ids = {queue: bury(client, settings.namespace, queue, 700) for queue in ("bulk_a", "bulk_b")}
    urgent = bury(client, settings.namespace, "bulk_a", 30, priority="high")
    retried = retry_all(broker, batch=300)  # batches straddle both queues
    everyone = [*ids["bulk_a"], *urgent, *ids["bulk_b"]]
    assert sorted(retried) == sorted(everyone)
    for queue, expected in (("bulk_a", [*ids["bulk_a"], *urgent]), ("bulk_b", ids["bulk_b"])):
        dead, live = where(client, settings.namespace, queue)
        assert not dead and set(live) == set(expected) and set(live.values()) == {1}
    assert client.llen(f"{settings.namespace}:bulk_a:high") == len(urgent)
    assert not client.hlen(dead_letter_reasons_key(settings.namespace)), "reasons outlived their letters"
    fresh = Message.decode(client.hvals(f"{settings.namespace}:bulk_b.msgs")[0])
    assert "retries" not in fresh.options, "a retried letter starts with a fresh retry budget"
    assert retry_all(broker) == [], "nothing is left to retry"
    engine = create_db_engine(settings.database_url)
    try:
        wait_for(
            lambda: status_counts(engine, task_ids=everyone) == {"pending": len(everyone)},
            timeout=15,
            what="a pending audit row per retried letter",
        )
    finally:
        engine.dispose()


@sqlite_only
def test_two_concurrent_bulk_retries_enqueue_each_letter_once(broker, settings):
    client = redis.Redis.from_url(settings.redis_url)
    ids = bury(client, settings.namespace, "bulk_race", 2_000)
    results: list[list[str]] = [[], []]

    def run(index: int) -> None:
        results[index] = retry_all(broker, queue="bulk_race", batch=100)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not set(results[0]) & set(results[1]), "a letter retried by both"
    assert sorted(results[0] + results[1]) == sorted(ids)
    dead, live = where(client, settings.namespace, "bulk_race")
    assert not dead and set(live) == set(ids) and set(live.values()) == {1}


#: A bulk retry in a process of its own, batch by batch, saying after each batch how far it is.
RETRIER = textwrap.dedent(
    """
    import sys, time
    from actors import build_broker
    from actors.middleware import iter_dead_letters, retry_dead_letters
    from actors.settings import Settings
    from api.http.bulk import batches

    broker = build_broker(Settings())
    done = 0
    for chunk in batches(iter_dead_letters(broker, queue=sys.argv[1]), int(sys.argv[2])):
        done += len(retry_dead_letters(broker, chunk))
        print(done, flush=True)
        time.sleep(0.02)  # a throttled operation's pause
    """
)


def kill_part_way(settings, queue: str, *, after: int) -> None:
    """Run :data:`RETRIER` on ``queue`` and SIGKILL it once it retried ``after`` letters, at a
    random moment of its pause or its next batch."""
    child = subprocess.Popen(
        [sys.executable, "-c", RETRIER, queue, "200"],
        env=settings_env(settings),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: int(child.stdout.readline() or 0) >= after, timeout=30, what=f"{after} letters retried"
        )
        time.sleep(random.uniform(0, 0.08))  # in the pause or in the next batch
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@sqlite_only
def test_a_bulk_retry_killed_part_way_loses_nothing_and_the_rest_can_be_retried(broker, settings):
    client = redis.Redis.from_url(settings.redis_url)
    ids = bury(client, settings.namespace, "bulk_kill", 6_000)
    for _ in range(3):  # each kill lands somewhere else in a batch
        kill_part_way(settings, "bulk_kill", after=200)
        dead, live = where(client, settings.namespace, "bulk_kill")
        assert not dead & set(live), "a letter both dead and enqueued"
        assert dead | set(live) == set(ids), f"{len(set(ids) - dead - set(live))} letters lost"
        assert set(live.values()) == {1}, "a letter enqueued twice"
    assert dead, "the kills came after the whole operation"
    assert sorted(retry_all(broker, queue="bulk_kill")) == sorted(dead), "the rest retried"
    dead, live = where(client, settings.namespace, "bulk_kill")
    assert not dead and set(live) == set(ids) and set(live.values()) == {1}


@sqlite_only
def test_dramatiqs_stock_broker_retries_each_letter_once_too(settings):
    """Without ``revive_many`` (``STOCK_BROKER``): take, enqueue, forget, per batch."""
    broker = build_broker(settings.model_copy(update={"stock_broker": True}))
    try:
        assert not hasattr(broker, "revive_many")
        client = redis.Redis.from_url(settings.redis_url)
        ids = bury(client, settings.namespace, "bulk_stock", 1_200)
        assert sorted(retry_all(broker, batch=500)) == sorted(ids)
        dead, live = where(client, settings.namespace, "bulk_stock")
        assert not dead and set(live) == set(ids) and set(live.values()) == {1}
    finally:
        audit_writer_of(broker).close(5)
