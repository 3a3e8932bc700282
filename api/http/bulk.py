"""Bulk actions as tracked operations: run server-side in batches, throttled, with progress in Redis.

A bulk request answers at once with an operation id; a thread of the API process
works through the selection ``batch`` items at a time, at most ``rate`` items a
second (so retrying 100,000 dead letters neither blocks a request nor floods
Redis), and records its progress in ``<ns>:api:operation:<id>`` (kept 7 days),
which ``GET /api/v1/operations/{id}`` reads.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import redis

#: Redis hash of one operation, under the namespace.
OPERATION_KEY = "{namespace}:api:operation:{operation_id}"

#: How long an operation's record is kept after its last update, in seconds.
OPERATION_TTL_S = 7 * 86_400

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Throttle:
    """Items per batch, and most items a second (0: no limit)."""

    batch: int = 500
    rate: int = 10_000


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class Operations:
    """Starts and reads tracked operations.

    Parameters:
      client: The broker's Redis (progress records).
      namespace: The broker's key prefix.
      throttle: Batch size and rate of every operation.
    """

    def __init__(self, *, client: redis.Redis, namespace: str, throttle: Throttle) -> None:
        self.client = client
        self.namespace = namespace
        self.throttle = throttle

    def key(self, operation_id: str) -> str:
        return OPERATION_KEY.format(namespace=self.namespace, operation_id=operation_id)

    def start(
        self,
        *,
        kind: str,
        items: Iterable[Any],
        apply: Callable[[list[Any]], int],
        count: Callable[[], int] | None,
        requested_by: str,
    ) -> str:
        """Run ``apply`` on ``items`` batch by batch in a thread (``apply`` returns how many of its
        batch it did), after ``count`` (run in the thread too) set the total; the id at once."""
        operation_id = uuid.uuid4().hex
        record = {
            "id": operation_id,
            "kind": kind,
            "status": "running",
            "total": -1,
            "done": 0,
            "skipped": 0,
            "requested_by": requested_by,
            "started_at": time.time(),
        }
        key = self.key(operation_id)
        self.client.hset(key, mapping=record)
        self.client.expire(key, OPERATION_TTL_S)
        thread = threading.Thread(
            target=self._run,
            args=(key, items, apply, count),
            name=f"tradeflow-operation-{operation_id[:8]}",
            daemon=True,
        )
        thread.start()
        return operation_id

    def _run(self, key: str, items, apply, count) -> None:
        processed = 0
        try:
            if count is not None:
                self.client.hset(key, "total", count())
            started = time.monotonic()
            for chunk in batches(items, self.throttle.batch):
                done = apply(chunk)
                processed += len(chunk)
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.hincrby(key, "done", done)
                    pipe.hincrby(key, "skipped", len(chunk) - done)
                    pipe.expire(key, OPERATION_TTL_S)
                    pipe.execute()
                if self.throttle.rate:
                    ahead = processed / self.throttle.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            self.client.hset(key, mapping={"status": "succeeded", "finished_at": time.time()})
        except Exception as exc:
            logger.exception("Operation %s failed.", key)
            self.client.hset(
                key,
                mapping={
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                    "finished_at": time.time(),
                },
            )

    def get(self, operation_id: str) -> dict[str, str] | None:
        raw = self.client.hgetall(self.key(operation_id))
        return {k.decode(): v.decode() for k, v in raw.items()} or None


def operations_of(context) -> Operations:
    """The app's :class:`Operations` (an ``ApiContext``'s, made on first use)."""
    operations = context.extras.get("operations")
    if operations is None:
        settings = context.settings
        operations = Operations(
            client=context.redis,
            namespace=context.namespace,
            throttle=Throttle(batch=settings.api_bulk_batch, rate=settings.api_bulk_rate),
        )
        context.extras["operations"] = operations
    return operations


def bulk_action(
    request,
    response,
    *,
    dry_run: bool,
    kind: str,
    items: Callable[[], Iterable[Any]],
    apply: Callable[[list[Any]], int],
    count: Callable[[], int],
    principal,
):
    """What a bulk route answers: the count of a dry run (200), or the started operation (202)."""
    from .access import note_target
    from .context import context_of
    from .models import BulkAccepted

    if dry_run:
        response.status_code = 200
        return BulkAccepted(dry_run=True, count=count())
    operation_id = operations_of(context_of(request)).start(
        kind=kind, items=items(), apply=apply, count=count, requested_by=principal.key_name
    )
    note_target(request, f"operation={operation_id}")
    return BulkAccepted(dry_run=False, operation_id=operation_id)
