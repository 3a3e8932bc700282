"""Pausing a queue: the fetch script hands out none of its messages until it is resumed; they stay queued."""

from __future__ import annotations

import time

import dramatiq
import pytest
from broker_support import sqlite_settings

from actors import build_broker
from actors.broker import pause_queue, paused_queues, resume_queue


@pytest.fixture
def broker(redis_url, namespace, tmp_path):
    broker = build_broker(
        sqlite_settings(redis_url, namespace, tmp_path).model_copy(update={"audit_enabled": False})
    )
    yield broker
    broker.close()


def _take(consumer, seconds: float) -> list:
    """What ``consumer`` hands out within ``seconds``."""
    taken, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            taken.append(message)
            consumer.ack(message)
    return taken


@pytest.mark.timeout(30)
def test_a_paused_queue_keeps_its_messages_and_hands_out_none_until_resumed(broker, namespace):
    @dramatiq.actor(broker=broker, queue_name="pausable", max_retries=0)
    def work(i: int) -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name="other", max_retries=0)
    def elsewhere(i: int) -> None:
        pass

    assert pause_queue(broker.client, namespace, "pausable") is True
    assert pause_queue(broker.client, namespace, "pausable") is False, "already paused"
    assert paused_queues(broker.client, namespace) == {"pausable"}
    for i in range(3):
        work.send(i)
        elsewhere.send(i)
    paused, running = broker.consume("pausable", timeout=200), broker.consume("other", timeout=200)
    try:
        assert _take(paused, 1.0) == []
        assert broker.client.llen(f"{namespace}:pausable") == 3, "kept in the queue"
        assert len(_take(running, 1.0)) == 3, "other queues are not affected"
        assert resume_queue(broker.client, namespace, "pausable") is True
        assert sorted(m.args[0] for m in _take(paused, 1.0)) == [0, 1, 2]
        assert resume_queue(broker.client, namespace, "pausable") is False
    finally:
        paused.close()
        running.close()
