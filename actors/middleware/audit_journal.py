"""The audit journal: a Redis list that keeps the audit events a stopping worker could not
write (the database refused connections), until a writer replays them into the database.

A worker that stops has acked its finished messages already (their rows were held back while
the database failed, not their acks), so a graceful stop would otherwise lose their rows.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime

import redis
from dramatiq.logging import get_logger

from storage import AttemptEvent, TaskEvent

#: Redis list (under the namespace) of journaled events, one JSON object each.
JOURNAL_KEY = "__audit_journal__"

#: How long one replayer holds the journal, in milliseconds (renewed each batch).
REPLAY_LOCK_MS = 30_000

#: Fields of a :class:`storage.TaskEvent` that hold times.
_TIMES = ("created_at", "started_at", "completed_at")

#: Fields of a :class:`storage.AttemptEvent` that hold times.
_ATTEMPT_TIMES = ("started_at", "finished_at")


class RedisAuditJournal:
    """A :class:`storage.AuditJournal` in a Redis list; one replayer at a time (a lock).

    Parameters:
      client(redis.Redis): The broker's Redis.
      namespace(str): The broker's key prefix.
    """

    def __init__(self, *, client: redis.Redis, namespace: str) -> None:
        self.logger = get_logger(__name__, type(self))
        self.client = client
        self.key = f"{namespace}:{JOURNAL_KEY}"
        self.lock_key = f"{self.key}:replaying"

    def spill(self, events: Sequence[TaskEvent]) -> None:
        if events:
            self.client.rpush(self.key, *(_encode(event) for event in events))

    def replay(self, write: Callable[[list[TaskEvent]], None], *, batch_size: int) -> bool:
        token = uuid.uuid4().hex
        if not self.client.set(self.lock_key, token, nx=True, px=REPLAY_LOCK_MS):
            return not self.client.exists(self.key)
        replayed = 0
        try:
            while True:
                raw = self.client.lrange(self.key, 0, batch_size - 1)
                if not raw:
                    break
                write([_decode(item) for item in raw])
                self.client.ltrim(self.key, len(raw), -1)  # only the lock holder trims
                self.client.pexpire(self.lock_key, REPLAY_LOCK_MS)
                replayed += len(raw)
        finally:
            if self.client.get(self.lock_key) == token.encode():
                self.client.delete(self.lock_key)
            if replayed:
                self.logger.warning("Replayed %d audit events a stopping worker had left.", replayed)
        return True

    def __len__(self) -> int:
        return int(self.client.llen(self.key))


def _encode(event: TaskEvent) -> str:
    fields = asdict(event)
    _times_to_text(fields, _TIMES)
    if fields["attempt"] is not None:
        _times_to_text(fields["attempt"], _ATTEMPT_TIMES)
    return json.dumps(fields)


def _decode(raw: bytes) -> TaskEvent:
    fields = json.loads(raw)
    _times_from_text(fields, _TIMES)
    attempt = fields.pop("attempt", None)  # absent from what an older writer journaled
    if attempt is not None:
        _times_from_text(attempt, _ATTEMPT_TIMES)
        fields["attempt"] = AttemptEvent(**attempt)
    return TaskEvent(**fields)


def _times_to_text(fields: dict, names: tuple[str, ...]) -> None:
    for name in names:
        if fields[name] is not None:
            fields[name] = fields[name].isoformat()


def _times_from_text(fields: dict, names: tuple[str, ...]) -> None:
    for name in names:
        if fields.get(name) is not None:
            fields[name] = datetime.fromisoformat(fields[name])
