"""Dead letters: Dramatiq's ``<queue>.XQ``, with the reason each message died, listed, retried, purged.

Dramatiq keeps a dead message's last enqueued body in ``<ns>:<queue>.XQ.msgs``
and its death time as its score in ``<ns>:<queue>.XQ``, keyed by the Redis
entry id (``redis_message_id``).  :class:`DeadLetterLog` adds, in
``<ns>:dead-letter-reasons``, why it died and how many attempts it had.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime

from dramatiq import Broker, Middleware
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.message import Message

from actors.broker import (
    AUDIT_SEQ_BASE,
    DEAD_LETTER_REASON,
    SKIP_REASON,
    SKIP_STATUS,
    queue_client,
    routes_of,
)
from storage import utc_from_millis

from .audit import describe_exception

#: Options of a dead message that must not follow it into a fresh retry.
_STALE_OPTIONS = ("redis_message_id", "eta", "retries", "traceback", "requeue_timestamp", DEAD_LETTER_REASON)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead message."""

    message: Message
    redis_id: str
    queue: str
    failed_at_ms: float
    reason: str
    attempts: int

    @property
    def message_id(self) -> str:
        return self.message.message_id

    @property
    def failed_at(self) -> datetime:
        """When it died, naive UTC."""
        return utc_from_millis(self.failed_at_ms)


class UnknownDeadLetter(LookupError):
    """No dead letter has that message id."""


def reasons_key(namespace: str) -> str:
    return f"{namespace}:dead-letter-reasons"


class DeadLetterLog(Middleware):
    """Keeps the reason and attempt count of every message Dramatiq dead-letters."""

    def __init__(self) -> None:
        self.logger = get_logger(__name__, type(self))

    def after_nack(self, broker: Broker, message: Message) -> None:
        redis_id = message.options.get("redis_message_id")
        if redis_id is None:
            return
        exception = getattr(message, "_exception", None)
        reason = message.options.get(DEAD_LETTER_REASON) or (
            describe_exception(exception) if exception is not None else "failed"
        )
        record = {"reason": reason, "attempts": message.options.get("retries", 0) + 1}
        client = queue_client(broker, message.queue_name)
        client.hset(reasons_key(broker.namespace), redis_id, json.dumps(record))


def list_dead_letters(broker: RedisBroker, *, queue: str | None = None) -> list[DeadLetter]:
    """Every dead letter (of ``queue``, if given), oldest death first."""
    letters = []
    for xq in _dead_letter_queues(broker, queue):
        queue_name = xq[len(broker.namespace) + 1 : -len(".XQ")]
        client = _xq_client(broker, xq)
        entries = client.zrange(xq, 0, -1, withscores=True)
        if not entries:
            continue
        ids = [redis_id.decode() for redis_id, _ in entries]
        bodies = client.hmget(f"{xq}.msgs", ids)
        reasons = client.hmget(reasons_key(broker.namespace), ids)
        for (_, score), redis_id, body, reason in zip(entries, ids, bodies, reasons, strict=True):
            if body is not None:
                letters.append(_dead_letter(redis_id, queue_name, score, body, reason))
    return sorted(letters, key=lambda letter: letter.failed_at_ms)


def find_dead_letter(broker: RedisBroker, message_id: str) -> DeadLetter:
    for letter in list_dead_letters(broker):
        if letter.message_id == message_id:
            return letter
    raise UnknownDeadLetter(f"no dead letter with message id {message_id!r} (see `tradeflow dlq list`)")


def retry_dead_letter(broker: RedisBroker, letter: DeadLetter) -> Message | None:
    """Enqueue ``letter`` again with a fresh retry budget; None if someone else took it first.

    The audit row continues (same id) from ``pending`` with a higher ``seq``.
    """
    xq = f"{broker.namespace}:{letter.queue}.XQ"
    if not _xq_client(broker, xq).zrem(xq, letter.redis_id):
        return None
    options = {key: value for key, value in letter.message.options.items() if key not in _STALE_OPTIONS}
    options.pop(SKIP_STATUS, None)
    options.pop(SKIP_REASON, None)
    # every attempt used 3 audit sequence numbers: the fresh ones come after them all
    options[AUDIT_SEQ_BASE] = letter.message.options.get(AUDIT_SEQ_BASE, 0) + 3 * letter.attempts + 3
    fresh = Message(
        queue_name=q_name(letter.message.queue_name),
        actor_name=letter.message.actor_name,
        args=letter.message.args,
        kwargs=letter.message.kwargs,
        options=options,
        message_id=letter.message_id,
        message_timestamp=letter.message.message_timestamp,
    )
    try:
        enqueued = broker.enqueue(fresh)
    except Exception:
        _xq_client(broker, xq).zadd(xq, {letter.redis_id: letter.failed_at_ms})
        raise
    _forget(broker, xq, [letter.redis_id])
    return enqueued


def purge_dead_letters(broker: RedisBroker, *, older_than_ms: int | None = None) -> int:
    """Delete dead letters (those dead longer than ``older_than_ms``); how many."""
    cutoff = "+inf" if older_than_ms is None else time.time() * 1000 - older_than_ms
    purged = 0
    for xq in _dead_letter_queues(broker, None):
        client = _xq_client(broker, xq)
        ids = [redis_id.decode() for redis_id in client.zrangebyscore(xq, "-inf", cutoff)]
        if ids:
            purged += client.zrem(xq, *ids)
            _forget(broker, xq, ids)
    return purged


def _forget(broker: RedisBroker, xq: str, redis_ids: list[str]) -> None:
    pipe = _xq_client(broker, xq).pipeline()
    pipe.hdel(f"{xq}.msgs", *redis_ids)
    pipe.hdel(reasons_key(broker.namespace), *redis_ids)
    pipe.execute()


def _dead_letter_queues(broker: RedisBroker, queue: str | None) -> list[str]:
    if queue is not None:
        return [f"{broker.namespace}:{queue}.XQ"]
    found = set()
    for client in routes_of(broker).clients():
        found.update(key.decode() for key in client.scan_iter(match=f"{broker.namespace}:*.XQ", count=1000))
    return sorted(found)


def _xq_client(broker: RedisBroker, xq: str):
    """The Redis of the dead-letter queue key ``xq`` (``<ns>:<queue>.XQ``)."""
    return queue_client(broker, xq[len(broker.namespace) + 1 :])


def _dead_letter(redis_id: str, queue: str, score: float, body: bytes, reason: bytes | None) -> DeadLetter:
    message = Message.decode(body)
    record = json.loads(reason) if reason else {}
    return DeadLetter(
        message=message,
        redis_id=redis_id,
        queue=queue,
        failed_at_ms=score,
        reason=record.get("reason", "unknown (died before reasons were kept)"),
        attempts=record.get("attempts", message.options.get("retries", 0) + 1),
    )
