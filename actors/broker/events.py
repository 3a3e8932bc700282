"""Live events: one capped Redis Stream that state changes are appended to, for ``GET /api/v1/events``.

Writers: the audit trail (each committed batch: one ``job.<status>`` entry per job, after the
commit, so a reader who follows an event to the database finds the row), the dead-letter log
(``job.dead``), the saga engine (``run.<status>`` after the transaction), the scheduler
(``schedule.fired``), health alerts (``alert.raised``/``alert.resolved``) and the HTTP API
(``operator.<action>``, ``queue.paused``/``queue.resumed``).  Every entry has ``kind`` and
``at`` (ms since the epoch) and, when they apply, ``queue``, ``job``, ``run`` and ``data`` (JSON).

Appending never fails its caller: an unreachable Redis loses the events (logged, counted).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis

#: The stream, under the namespace.
EVENTS_KEY = "{namespace}:events"

#: Fields an entry may carry besides ``kind`` and ``at``; anything else goes into ``data``.
INDEXED_FIELDS = ("queue", "job", "run")


def events_key(namespace: str) -> str:
    return EVENTS_KEY.format(namespace=namespace)


def entry(
    kind: str, *, queue: str | None = None, job: str | None = None, run: str | None = None, **data
) -> dict:
    """One stream entry's fields (strings only, as Redis stores them)."""
    fields = {"kind": kind, "at": str(int(time.time() * 1000))}
    for name, value in (("queue", queue), ("job", job), ("run", run)):
        if value:
            fields[name] = str(value)
    if data:
        fields["data"] = json.dumps(data, default=str, separators=(",", ":"))
    return fields


class EventLog:
    """Appends entries to the namespace's event stream, capped at about ``maxlen`` entries.

    Parameters:
      client: The broker's Redis.
      namespace: The broker's key prefix.
      maxlen: Approximate cap of the stream (``XADD MAXLEN ~``): older entries are trimmed.
    """

    def __init__(self, *, client: redis.Redis, namespace: str, maxlen: int = 100_000) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.client = client
        self.key = events_key(namespace)
        self.maxlen = maxlen
        self.lost = 0

    def append(self, kind: str, **fields: Any) -> None:
        self.append_many([entry(kind, **fields)])

    def append_many(self, entries: Iterable[Mapping[str, str]]) -> None:
        """Append ``entries`` in one round trip."""
        entries = list(entries)
        if not entries:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for fields in entries:
                    pipe.xadd(self.key, dict(fields), maxlen=self.maxlen, approximate=True)
                pipe.execute()
        except redis.RedisError as exc:
            self.lost += len(entries)
            self.logger.warning("Lost %d live event(s): %s", len(entries), exc)

    def task_events(self, events: Iterable[Any]) -> None:
        """The audit writer's commit hook: one ``job.<status>`` entry per committed job.

        A job's events come from the writers of several processes (the producer's
        ``pending``, the worker's ``running`` and ``completed``), each after its own
        commit, so they may reach the stream out of order; ``data.seq`` orders them
        (the audit trail's own order: a higher ``seq`` is a later state)."""
        self.append_many(
            entry(
                f"job.{event.status}",
                queue=event.queue,
                job=event.task_id,
                actor=event.task_type,
                seq=event.seq,
            )
            for event in events
        )

    def run_event(self, run_id: str, workflow: str, status: str, error: str | None) -> None:
        """The saga engine's hook: a run's status changed (committed)."""
        self.append(f"run.{status}", run=run_id, workflow=workflow, **({"error": error} if error else {}))


def event_log_of(broker: Any) -> EventLog | None:
    """The live-events stream ``actors.broker`` gave the broker's dead-letter log, if events are on."""
    for middleware in broker.middleware:
        events = getattr(middleware, "events", None)
        if isinstance(events, EventLog):
            return events
    return None
