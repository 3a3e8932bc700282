"""Dead letters: Dramatiq's ``<queue>.XQ``, with the reason each message died, listed, retried, purged.

Dramatiq keeps a dead message's last enqueued body in ``<ns>:<queue>.XQ.msgs``
and its death time as its score in ``<ns>:<queue>.XQ``, keyed by the Redis
entry id (``redis_message_id``).  :class:`DeadLetterLog` adds, in
``<ns>:dead-letter-reasons``, why it died and how many attempts it had.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import traceback
from dataclasses import dataclass
from datetime import datetime

from dramatiq import Broker, Middleware
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name
from dramatiq.errors import DecodeError
from dramatiq.logging import get_logger
from dramatiq.message import Message

from actors.broker import (
    AUDIT_SEQ_BASE,
    DEAD_LETTER_REASON,
    SKIP_REASON,
    SKIP_STATUS,
    SendManyError,
    dead_letter_reasons_key,
    enqueue_messages,
    queue_client,
    routes_of,
)
from storage import utc_from_millis

from .audit import describe_exception

#: Longest traceback kept with a dead letter, in characters (its end: the innermost frames).
MAX_TRACEBACK_CHARS = 8_000

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
    #: The last attempt's traceback, as :class:`DeadLetterLog` kept it (``None``: not kept).
    traceback: str | None = None

    @property
    def message_id(self) -> str:
        return self.message.message_id

    @property
    def failed_at(self) -> datetime:
        """When it died, naive UTC."""
        return utc_from_millis(self.failed_at_ms)


class UnknownDeadLetter(LookupError):
    """No dead letter has that message id."""


class DeadLetterLog(Middleware):
    """Keeps the reason and attempt count of every message Dramatiq dead-letters."""

    def __init__(self) -> None:
        self.logger = get_logger(__name__, type(self))
        #: The live-events stream (an ``actors.broker.EventLog``, set by ``actors.broker``), or None.
        self.events = None

    def before_nack(self, broker: Broker, message: Message) -> None:
        # Kept before the nack moves the message to the dead letters, so that no reader
        # ever sees a dead letter without its reason.
        redis_id = message.options.get("redis_message_id")
        if redis_id is None:
            return
        client = queue_client(broker, message.queue_name)
        client.hset(dead_letter_reasons_key(broker.namespace), redis_id, json.dumps(self._record(message)))

    def after_nack(self, broker: Broker, message: Message) -> None:
        if self.events is None or message.options.get("redis_message_id") is None:
            return
        self.events.append(
            "job.dead",
            queue=q_name(message.queue_name),
            job=message.message_id,
            actor=message.actor_name,
            reason=self._reason(message),
        )

    @staticmethod
    def _reason(message: Message) -> str:
        exception = getattr(message, "_exception", None)
        return message.options.get(DEAD_LETTER_REASON) or (
            describe_exception(exception) if exception is not None else "failed"
        )

    def _record(self, message: Message) -> dict:
        record = {"reason": self._reason(message), "attempts": message.options.get("retries", 0) + 1}
        exception = getattr(message, "_exception", None)
        if exception is not None and exception.__traceback__ is not None:
            lines = traceback.format_exception(type(exception), exception, exception.__traceback__)
            record["traceback"] = "".join(lines)[-MAX_TRACEBACK_CHARS:]
        return record


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
        reasons = client.hmget(dead_letter_reasons_key(broker.namespace), ids)
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

    The audit row continues (same id) from ``pending`` with a higher ``seq``.  With a broker that
    has ``revive_many`` (tradeflow's) the letter leaves the dead-letter queue and is enqueued in
    one atomic call (see :func:`retry_dead_letters`).
    """
    revive = getattr(broker, "revive_many", None)
    if revive is not None:
        revived = revive(letter.queue, [(letter.redis_id, _fresh(letter))])
        return revived[0] if revived else None
    xq = f"{broker.namespace}:{letter.queue}.XQ"
    if not _xq_client(broker, xq).zrem(xq, letter.redis_id):
        return None
    try:
        enqueued = broker.enqueue(_fresh(letter))
    except Exception:
        _xq_client(broker, xq).zadd(xq, {letter.redis_id: letter.failed_at_ms})
        raise
    _forget(broker, xq, [letter.redis_id])
    return enqueued


def retry_dead_letters(broker: RedisBroker, letters: list[DeadLetter]) -> list[str]:
    """:func:`retry_dead_letter` for many at once; the ids retried (not those someone else took first).

    With a broker that has ``revive_many`` (tradeflow's), each queue's letters go back in one
    round trip of atomic dispatch-script calls: a crash or a failure part way leaves each
    letter either still dead (retry it again) or enqueued once.  With any other broker: one
    ``ZREM`` pipeline, one batch enqueue (``send_many``'s), one cleanup pipeline, and the
    letters the enqueue did not store go back to their dead-letter queues (a crash between
    the steps loses the letters taken).
    """
    if not letters:
        return []
    revive = getattr(broker, "revive_many", None)
    if revive is None:
        return _retry_taken(broker, letters)
    retried: list[Message] = []
    for group in _by_queue(broker, letters).values():
        try:
            retried += revive(group[0].queue, [(letter.redis_id, _fresh(letter)) for letter in group])
        except SendManyError as exc:
            exc.enqueued[:0] = retried  # the earlier queues' too; the later queues' stay dead
            raise
    return [message.message_id for message in retried]


def _retry_taken(broker: RedisBroker, letters: list[DeadLetter]) -> list[str]:
    """:func:`retry_dead_letters` without ``revive_many``: take, enqueue, forget."""
    taken = []
    for xq, group in _by_queue(broker, letters).items():
        with _xq_client(broker, xq).pipeline(transaction=False) as pipe:
            for letter in group:
                pipe.zrem(xq, letter.redis_id)
            taken += [letter for letter, removed in zip(group, pipe.execute(), strict=True) if removed]
    try:
        enqueue_messages(broker, [_fresh(letter) for letter in taken])
    except SendManyError as exc:
        stored = set(exc.enqueued_ids)
        _restore(broker, [letter for letter in taken if letter.message_id not in stored])
        taken = [letter for letter in taken if letter.message_id in stored]
        _forget_letters(broker, taken)
        raise
    except Exception:
        _restore(broker, taken)
        raise
    _forget_letters(broker, taken)
    return [letter.message_id for letter in taken]


def _fresh(letter: DeadLetter) -> Message:
    """The dead message as a first delivery: stale options dropped, audit sequence moved past its attempts."""
    options = {key: value for key, value in letter.message.options.items() if key not in _STALE_OPTIONS}
    options.pop(SKIP_STATUS, None)
    options.pop(SKIP_REASON, None)
    # A scheduled run retried is a run now: periodiq's workers would skip its old tick as too old.
    options.pop("scheduled_at", None)
    options.pop("schedule_tick", None)
    # every attempt used 3 audit sequence numbers: the fresh ones come after them all
    options[AUDIT_SEQ_BASE] = letter.message.options.get(AUDIT_SEQ_BASE, 0) + 3 * letter.attempts + 3
    return Message(
        queue_name=q_name(letter.message.queue_name),
        actor_name=letter.message.actor_name,
        args=letter.message.args,
        kwargs=letter.message.kwargs,
        options=options,
        message_id=letter.message_id,
        message_timestamp=letter.message.message_timestamp,
    )


def _by_queue(broker: RedisBroker, letters: list[DeadLetter]) -> dict[str, list[DeadLetter]]:
    """``letters`` by dead-letter queue key (each queue may live on a Redis of its own)."""
    groups: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        groups.setdefault(f"{broker.namespace}:{letter.queue}.XQ", []).append(letter)
    return groups


def _restore(broker: RedisBroker, letters: list[DeadLetter]) -> None:
    for xq, group in _by_queue(broker, letters).items():
        _xq_client(broker, xq).zadd(xq, {letter.redis_id: letter.failed_at_ms for letter in group})


def _forget_letters(broker: RedisBroker, letters: list[DeadLetter]) -> None:
    for xq, group in _by_queue(broker, letters).items():
        _forget(broker, xq, [letter.redis_id for letter in group])


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


def purge_letters(broker: RedisBroker, letters: list[DeadLetter]) -> int:
    """Delete these dead letters; how many were still dead (one retried or purged meanwhile
    by someone else is not counted: its ``ZREM`` removes nothing)."""
    removed: list[DeadLetter] = []
    for xq, group in _by_queue(broker, letters).items():
        with _xq_client(broker, xq).pipeline(transaction=False) as pipe:
            for letter in group:
                pipe.zrem(xq, letter.redis_id)
            removed += [letter for letter, gone in zip(group, pipe.execute(), strict=True) if gone]
    _forget_letters(broker, removed)
    return len(removed)


def _forget(broker: RedisBroker, xq: str, redis_ids: list[str]) -> None:
    pipe = _xq_client(broker, xq).pipeline()
    pipe.hdel(f"{xq}.msgs", *redis_ids)
    pipe.hdel(dead_letter_reasons_key(broker.namespace), *redis_ids)
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


#: Actor name shown for a dead letter whose body is not a Dramatiq message.
UNDECODABLE = "<undecodable>"


def _dead_letter(redis_id: str, queue: str, score: float, body: bytes, reason: bytes | None) -> DeadLetter:
    try:
        message = Message.decode(body)
    except DecodeError:  # a foreign producer's malformed message: listed under its Redis id
        message = Message(
            queue_name=queue,
            actor_name=UNDECODABLE,
            args=(),
            kwargs={},
            options={},
            message_id=redis_id,
            message_timestamp=int(score),
        )
    record = json.loads(reason) if reason else {}
    return DeadLetter(
        message=message,
        redis_id=redis_id,
        queue=queue,
        failed_at_ms=score,
        reason=record.get("reason", "unknown (died before reasons were kept)"),
        attempts=record.get("attempts", message.options.get("retries", 0) + 1),
        traceback=record.get("traceback") or message.options.get("traceback"),
    )


#: A frame line of a Python traceback: file and function.
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line \d+, in (?P<function>\S+)', re.MULTILINE)


#: The exception line of a traceback, or of a reason: ``Type: message`` (``Type`` may be dotted).
_RAISED = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(:|$)")


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What groups dead letters that died the same way: the exception type and the frame it was raised in."""

    exception: str
    top_frame: str | None

    @property
    def digest(self) -> str:
        return hashlib.sha1(f"{self.exception}|{self.top_frame}".encode()).hexdigest()[:12]


def fingerprint(letter: DeadLetter) -> Fingerprint:
    """The exception type (the traceback's last line, else the reason's ``"last: Type: message"``)
    and the innermost frame of the
    traceback as ``file:function`` (no line number: an unrelated edit above it keeps the group)."""
    text = letter.traceback or ""
    last_line = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    raised = _RAISED.match(last_line) or _RAISED.match(letter.reason.rpartition("last: ")[2])
    exception = raised.group("type") if raised else "unknown"
    frames = _FRAME.findall(text)
    top = f"{os.path.basename(frames[-1][0])}:{frames[-1][1]}" if frames else None
    return Fingerprint(exception, top)


def page_dead_letters(
    broker: RedisBroker, *, queue: str | None = None, after: tuple[float, str] | None = None, limit: int = 50
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters after the sort key ``(failed_at_ms, redis id)``, oldest death first.

    Reads at most ``limit`` entries (plus ties) of each dead-letter queue, never a whole queue.
    """
    floor = "-inf" if after is None else after[0]
    letters: list[DeadLetter] = []
    for xq in _dead_letter_queues(broker, queue):
        queue_name = xq[len(broker.namespace) + 1 : -len(".XQ")]
        client = _xq_client(broker, xq)
        entries = client.zrangebyscore(xq, floor, "+inf", start=0, num=limit + 16, withscores=True)
        entries = [(rid.decode(), score) for rid, score in entries]
        if after is not None:
            entries = [(rid, score) for rid, score in entries if (score, rid) > (after[0], after[1])]
        if not entries:
            continue
        ids = [rid for rid, _ in entries]
        bodies = client.hmget(f"{xq}.msgs", ids)
        reasons = client.hmget(dead_letter_reasons_key(broker.namespace), ids)
        for (rid, score), body, reason in zip(entries, bodies, reasons, strict=True):
            if body is not None:
                letters.append(_dead_letter(rid, queue_name, score, body, reason))
    letters.sort(key=lambda letter: (letter.failed_at_ms, letter.redis_id))
    return letters[:limit]


def dead_letter_counts(broker: RedisBroker, *, queue: str | None = None) -> dict[str, int]:
    """Dead letters per queue (of ``queue``, if given), without reading them."""
    return {
        xq[len(broker.namespace) + 1 : -len(".XQ")]: _xq_client(broker, xq).zcard(xq)
        for xq in _dead_letter_queues(broker, queue)
    }


def iter_dead_letters(broker: RedisBroker, *, queue: str | None = None, chunk: int = 500):
    """Every dead letter, oldest first, read ``chunk`` at a time (memory: one chunk)."""
    after = None
    while True:
        page = page_dead_letters(broker, queue=queue, after=after, limit=chunk)
        yield from page
        if len(page) < chunk:
            return
        after = (page[-1].failed_at_ms, page[-1].redis_id)
