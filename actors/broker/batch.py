"""Batch enqueue: ``send_many(actor, [args, ...])`` sends many messages in one round trip.

With :class:`~actors.broker.redis_broker.WakeupRedisBroker` the messages go out as
one pipeline of dispatch-script calls of :data:`ENQUEUE_CHUNK`
messages each; every call is atomic, so a failure part way is reported per
chunk, exactly.  With any other broker they are sent one by one, with the
same error reporting.  Either way each message passes ``before_enqueue`` and,
once stored, ``after_enqueue`` (the audit middleware writes its pending row
there, batched by the :class:`~storage.AuditWriter`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any
from uuid import uuid4

import redis
from dramatiq import Actor, Broker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .lanes import DEFAULT_LANE, lane_of
from .replication import ReplicationTimeout

#: Messages per ``enqueue_many`` script call: one call is atomic, so a broken
#: batch is reported per chunk; small enough to keep each call short.
ENQUEUE_CHUNK = 500

#: How long the marker of an ``enqueue_many`` chunk lives, in milliseconds.
BATCH_MARKER_TTL = 3_600_000


class SendManyError(Exception):
    """A batch enqueue failed part way.

    Parameters:
      enqueued(list[Message]): Stored in Redis (they will run), in order.
      not_enqueued(list[Message]): Certainly not stored: safe to send again.
      unknown(list[Message]): The connection broke before Redis answered and
        could not be asked afterwards: they may or may not be stored.
      cause(BaseException): The underlying error.
    """

    def __init__(
        self,
        *,
        enqueued: list[Message],
        not_enqueued: list[Message],
        unknown: list[Message],
        cause: BaseException,
    ) -> None:
        total = len(enqueued) + len(not_enqueued) + len(unknown)
        super().__init__(
            f"send_many: {len(enqueued)} of {total} messages enqueued, {len(not_enqueued)} not enqueued"
            f" (safe to send again), {len(unknown)} unknown; cause: {type(cause).__name__}: {cause}"
        )
        self.enqueued = enqueued
        self.not_enqueued = not_enqueued
        self.unknown = unknown
        self.cause = cause

    @property
    def enqueued_ids(self) -> list[str]:
        return [message.message_id for message in self.enqueued]


def send_many(
    actor: Actor, calls: Iterable[Sequence[Any] | dict[str, Any]], *, delay: int | None = None, **options: Any
) -> list[str]:
    """Send one message per item of ``calls`` to ``actor``; returns their message ids, in order.

    Parameters:
      actor: The actor to call.
      calls: One item per message: a tuple (or list) of positional arguments,
        or a dict of keyword arguments.  A single argument is ``(value,)``.
      delay: Milliseconds to delay every message by, as ``send_with_options``.
      **options: Message options for every message, e.g. ``priority="high"``.

    Raises:
      TypeError: An item is neither a tuple, a list nor a dict (nothing sent).
      ValueError: A bad ``priority`` (nothing sent).
      SendManyError: Redis failed part way; it says which messages were enqueued.
    """
    messages = [_message(actor, index, call, options) for index, call in enumerate(calls)]
    return [message.message_id for message in enqueue_messages(actor.broker, messages, delay=delay)]


def enqueue_messages(
    broker: Broker, messages: Sequence[Message], *, delay: int | None = None
) -> list[Message]:
    """Enqueue built messages, of any actors and queues (a saga's group), in one round trip where
    the broker can; returns them as enqueued, in order.  Errors as :func:`send_many`."""
    enqueue_many = getattr(broker, "enqueue_many", None)
    if enqueue_many is not None:
        return enqueue_many(messages, delay=delay)
    return enqueue_one_by_one(broker, messages, delay=delay)


def enqueue_one_by_one(broker: Broker, messages: Sequence[Message], *, delay: int | None) -> list[Message]:
    """The fallback of brokers without ``enqueue_many``: one enqueue per message."""
    enqueued: list[Message] = []
    for index, message in enumerate(messages):
        try:
            enqueued.append(broker.enqueue(message, delay=delay))
        except Exception as exc:
            unknown = isinstance(exc, redis.ConnectionError | redis.TimeoutError)
            rest = list(messages[index + 1 :])
            raise SendManyError(
                enqueued=enqueued,
                not_enqueued=rest if unknown else [message, *rest],
                unknown=[message] if unknown else [],
                cause=exc,
            ) from exc
    return enqueued


def _message(actor: Actor, index: int, call: Any, options: dict[str, Any]) -> Message:
    if isinstance(call, dict):
        return actor.message_with_options(kwargs=call, **options)
    if isinstance(call, tuple | list):
        return actor.message_with_options(args=tuple(call), **options)
    raise TypeError(
        f"send_many item {index} is a {type(call).__name__} ({call!r}): give a tuple of positional"
        f" arguments or a dict of keyword arguments; a single argument is written ({call!r},)"
    )


@dataclass
class Chunk:
    """Messages stored by one atomic call of the dispatch script."""

    messages: list[Message]
    #: Key the call sets: it ran iff the key exists (for an hour).
    marker: str
    #: The script's ARGV.
    argv: list
    #: The queue the messages go to (it names the Redis they go to).
    queue_name: str = ""
    #: Whether a message is of ``critical`` priority (replication is then confirmed).
    critical: bool = False


class EnqueueBatch:
    """One ``enqueue_many`` call of a :class:`~actors.broker.redis_broker.WakeupRedisBroker`.

    Parameters:
      broker(WakeupRedisBroker): Where the messages go.
      messages(Sequence[Message]): What to send, in order.
      delay(int): Milliseconds to delay every message by, or None.
    """

    def __init__(self, broker: RedisBroker, messages: Sequence[Message], *, delay: int | None) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.messages = list(messages)
        self.delay = delay

    def run(self) -> list[Message]:
        lanes = [lane_of(message) for message in self.messages]  # validates every priority
        if self.delay is not None:
            lanes = [DEFAULT_LANE] * len(lanes)  # the delay queue has one lane
        prepared = [self.broker._prepare(message, self.delay) for message in self.messages]
        stored = [message for message, _ in prepared]
        for message in stored:
            try:
                self.broker.emit_before("enqueue", message, self.delay)
            except Exception as exc:
                raise SendManyError(enqueued=[], not_enqueued=stored, unknown=[], cause=exc) from exc
        chunks = self._chunks(prepared, lanes)
        outcomes, cause = self._send(chunks)
        enqueued, not_enqueued, unknown = [], [], []
        for chunk, outcome in zip(chunks, outcomes, strict=True):
            {True: enqueued, False: not_enqueued, None: unknown}[outcome].extend(chunk.messages)
        for message in enqueued:
            self.broker.emit_after("enqueue", message, self.delay)
        if cause is not None:
            raise SendManyError(enqueued=enqueued, not_enqueued=not_enqueued, unknown=unknown, cause=cause)
        return enqueued

    def _chunks(self, prepared: list[tuple[Message, str]], lanes: list[str]) -> list[Chunk]:
        """Consecutive messages of one queue, at most ENQUEUE_CHUNK per chunk."""
        chunks = []
        rows = [
            (message, queue_name, lane) for (message, queue_name), lane in zip(prepared, lanes, strict=True)
        ]
        for queue_name, group in groupby(rows, key=lambda row: row[1]):
            group = list(group)
            for start in range(0, len(group), ENQUEUE_CHUNK):
                part = group[start : start + ENQUEUE_CHUNK]
                marker = f"{self.broker.namespace}:__batches__.{uuid4().hex}"
                triples = []
                for message, _, lane in part:
                    triples += [message.options["redis_message_id"], message.encode(), lane]
                argv = self.broker._dispatch_args(
                    "enqueue_many", queue_name, marker, BATCH_MARKER_TTL, *triples
                )
                chunks.append(
                    Chunk(
                        messages=[message for message, _, _ in part],
                        marker=marker,
                        argv=argv,
                        queue_name=queue_name,
                        critical=any(lane == "critical" for _, _, lane in part),
                    )
                )
        return chunks

    def _send(self, chunks: list[Chunk]) -> tuple[list[bool | None], BaseException | None]:
        """Per chunk True (stored), False (not) or None (unknown), and the first error:
        one pipeline per Redis the chunks' queues live on."""
        outcomes: list[bool | None] = [None] * len(chunks)
        cause: BaseException | None = None
        groups: dict[int, list[int]] = {}
        for index, chunk in enumerate(chunks):
            groups.setdefault(id(self.broker.client_for(chunk.queue_name)), []).append(index)
        for indices in groups.values():
            group_outcomes, group_cause = self._send_group([chunks[i] for i in indices])
            for index, outcome in zip(indices, group_outcomes, strict=True):
                outcomes[index] = outcome
            cause = cause or group_cause
        return outcomes, cause

    def _send_group(self, chunks: list[Chunk]) -> tuple[list[bool | None], BaseException | None]:
        """:meth:`_send` for chunks whose queues live on one Redis."""
        client = self.broker.client_for(chunks[0].queue_name)
        script = self.broker.dispatcher_for(chunks[0].queue_name)
        try:
            results = self._run_scripts(client, script, chunks)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Chunks are idempotent and leave a marker: asking is exact.
            return self._ask_markers(client, [chunk.marker for chunk in chunks]), exc
        errors = [result for result in results if isinstance(result, Exception)]
        return [not isinstance(result, Exception) for result in results], (errors[0] if errors else None)

    def _run_scripts(self, client: redis.Redis, script, chunks: list[Chunk]) -> list:
        """:meth:`_pipeline`, and again for the chunks that found the script cache flushed."""
        results = self._pipeline(client, script.sha, chunks)
        missing = [
            index
            for index, result in enumerate(results)
            if isinstance(result, redis.exceptions.NoScriptError)
        ]
        if missing:  # nothing of those ran: load the script and send them again
            client.script_load(script.script)
            again = self._pipeline(client, script.sha, [chunks[i] for i in missing])
            for index, result in zip(missing, again, strict=True):
                results[index] = result
        return results

    def _pipeline(self, client: redis.Redis, sha: str, chunks: list[Chunk]) -> list:
        """One result per chunk.  With critical messages and ``confirm_replicas``, a ``WAIT``
        on the same connection follows; a shortfall makes the critical chunks' result a
        :class:`~actors.redis_broker.ReplicationTimeout` (stored, but maybe not on a replica)."""
        pipeline = client.pipeline(transaction=False)
        for chunk in chunks:
            pipeline.evalsha(sha, 1, self.broker.namespace, *chunk.argv)
        wanted = self.broker.confirm_replicas if any(chunk.critical for chunk in chunks) else 0
        if wanted:
            pipeline.execute_command("WAIT", wanted, self.broker.confirm_timeout)
        results = pipeline.execute(raise_on_error=False)
        if not wanted:
            return results
        acknowledged = results.pop()
        if isinstance(acknowledged, int) and acknowledged < wanted:
            for index, chunk in enumerate(chunks):
                if chunk.critical and not isinstance(results[index], Exception):
                    timeout = ReplicationTimeout(chunk.messages[0], acknowledged=acknowledged, wanted=wanted)
                    results[index] = timeout
        return results

    def _ask_markers(self, client: redis.Redis, markers: list[str]) -> list[bool | None]:
        """After a broken connection: which chunks ran, from their markers (None: Redis still away)."""
        try:
            return [value is not None for value in client.mget(markers)]
        except redis.RedisError as exc:
            self.logger.warning("Cannot tell which send_many chunks were stored: %s", exc)
            return [None] * len(markers)


class ReviveBatch(EnqueueBatch):
    """One ``revive_many`` call of a :class:`~actors.broker.redis_broker.WakeupRedisBroker`: dead
    letters of one queue back on it as fresh messages.

    Each dispatch-script call (:data:`ENQUEUE_CHUNK` letters) takes its letters out of the
    dead-letter queue and enqueues their fresh messages atomically, so a crash or a broken
    connection leaves every letter either still dead (retry it again) or enqueued once: none
    is lost, none runs twice.  A letter someone else retried or purged first is skipped.

    Parameters:
      broker(WakeupRedisBroker): Where the messages go.
      queue_name(str): The queue the letters died on (and go back to).
      letters(Sequence[tuple[str, Message]]): Each letter's Redis id in the dead-letter queue,
        and its fresh message.
      reasons_key(str): The hash of the letters' reasons (deleted with them).
    """

    def __init__(
        self,
        broker: RedisBroker,
        *,
        queue_name: str,
        letters: Sequence[tuple[str, Message]],
        reasons_key: str,
    ) -> None:
        super().__init__(broker, [message for _, message in letters], delay=None)
        self.queue_name = queue_name
        self.dead_ids = [dead_id for dead_id, _ in letters]
        self.reasons_key = reasons_key

    def run(self) -> list[Message]:
        """The messages revived, in order; :class:`SendManyError` if a call failed (``not_enqueued``:
        still dead, ``unknown``: dead or enqueued once, Redis could not tell)."""
        lanes = [lane_of(message) for message in self.messages]
        stored = [self.broker._prepare(message, None)[0] for message in self.messages]
        for message in stored:
            try:
                self.broker.emit_before("enqueue", message, None)
            except Exception as exc:
                raise SendManyError(enqueued=[], not_enqueued=stored, unknown=[], cause=exc) from exc
        chunks = []
        for start in range(0, len(stored), ENQUEUE_CHUNK):
            end = start + ENQUEUE_CHUNK
            marker = f"{self.broker.namespace}:__batches__.{uuid4().hex}"
            quads: list[Any] = []
            for dead_id, message, lane in zip(
                self.dead_ids[start:end], stored[start:end], lanes[start:end], strict=True
            ):
                quads += [dead_id, message.options["redis_message_id"], message.encode(), lane]
            argv = self.broker._dispatch_args(
                "revive_many", self.queue_name, marker, BATCH_MARKER_TTL, self.reasons_key, *quads
            )
            chunks.append(
                Chunk(
                    messages=stored[start:end],
                    marker=marker,
                    argv=argv,
                    queue_name=self.queue_name,
                    critical="critical" in lanes[start:end],
                )
            )
        answers, cause = self._answers(chunks)
        revived, not_enqueued, unknown = [], [], []
        for chunk, answer in zip(chunks, answers, strict=True):
            if answer is None:
                unknown += chunk.messages
            elif answer is False:
                not_enqueued += chunk.messages
            else:
                revived += [
                    message for message, flag in zip(chunk.messages, answer, strict=True) if flag == "1"
                ]
        for message in revived:
            self.broker.emit_after("enqueue", message, None)
        if cause is not None:
            raise SendManyError(enqueued=revived, not_enqueued=not_enqueued, unknown=unknown, cause=cause)
        return revived

    def _answers(self, chunks: list[Chunk]) -> tuple[list[str | bool | None], BaseException | None]:
        """Per chunk its answer (``"1"`` revived or ``"0"`` gone already, per letter), False (the call
        did not run: its letters are still dead) or None (cannot tell), and the first error.  The
        chunks' queue is one: one Redis, one pipeline."""
        client = self.broker.client_for(self.queue_name)
        script = self.broker.dispatcher_for(self.queue_name)
        try:
            results = self._run_scripts(client, script, chunks)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return self._ask(client, chunks), exc  # a call that ran left its answer in its marker
        answers: list[str | bool | None] = []
        cause: BaseException | None = None
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, ReplicationTimeout):  # ran, not confirmed on a replica: ask its marker
                answers += self._ask(client, [chunk])
            elif isinstance(result, Exception):
                answers.append(False)
            else:
                answers.append(result.decode() if isinstance(result, bytes) else result)
            if isinstance(result, Exception):
                cause = cause or result
        return answers, cause

    def _ask(self, client: redis.Redis, chunks: list[Chunk]) -> list[str | bool | None]:
        """The answers the chunks' calls left in their markers (False: the call did not run)."""
        try:
            return [
                False if value is None else value.decode()
                for value in client.mget([c.marker for c in chunks])
            ]
        except redis.RedisError as exc:
            self.logger.warning("Cannot tell which dead letters were revived: %s", exc)
            return [None] * len(chunks)
