"""Bulk actions as tracked operations: run server-side in batches, throttled, with progress in Redis.

A bulk request answers at once with an operation id; a thread works through the
selection ``batch`` items at a time, at most ``rate`` items a second (so retrying
100,000 dead letters neither blocks a request nor floods Redis), and records its
progress in ``<ns>:api:operation:<id>`` (kept 7 days), which
``GET /api/v1/operations/{id}`` reads.  That thread runs in the operations runner
process ``tradeflow api`` starts beside itself (``runs=False`` in the API: it only
queues the operation on ``<ns>:api:operations:queued``), so that an operation's
work never competes with the API's requests for one interpreter lock; without a
runner (an app made by ``create_app`` alone) it runs in the API process.

An operation outlives the process that runs it: its record names its owner (this
process) and a heartbeat the owner renews every :data:`HEARTBEAT_INTERVAL_S`; the
running operations are a sorted set by heartbeat.  Every API process sweeps that set
(and checks an operation when it is read): one whose owner stopped heart-beating
for ``orphan_after`` seconds is claimed atomically and resumed by the claimer, from
its selection, which shrinks as the work is done (a retried or purged dead letter,
a cancelled job, leaves it: what is left is the rest of the work); an operation
of a kind no planner resumes is marked ``interrupted``, saying how far it got.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
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

#: Redis sorted set of the running operations, scored by their last heartbeat (seconds).
RUNNING_KEY = "{namespace}:api:operations:running"

#: Redis list of the operations the API accepted and no runner took yet (ids).
QUEUED_KEY = "{namespace}:api:operations:queued"

#: How long an operation's record is kept after its last update, in seconds.
OPERATION_TTL_S = 7 * 86_400

#: Batches an operation reads ahead of the one it works on (:func:`read_ahead`).
READ_AHEAD = 2

#: Seconds between two heartbeats of the operations a process runs (and two sweeps for orphans).
HEARTBEAT_INTERVAL_S = 1.0

#: Seconds without a heartbeat after which an operation's owner is taken for stopped.
ORPHAN_AFTER_S = 15.0

#: Claims a running operation whose heartbeat is older than ARGV[2]: KEYS running set, record;
#: ARGV id, stale-before, now, new owner.  1 if claimed, 0 if alive or claimed by another,
#: -1 if its record expired (then it leaves the set).
_CLAIM = """
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not beat or tonumber(beat) > tonumber(ARGV[2]) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('ZREM', KEYS[1], ARGV[1]) return -1 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'owner', ARGV[4], 'heartbeat', ARGV[3])
return 1
"""

#: Takes a queued operation no one owns yet: KEYS running set, record; ARGV id, now, new owner.
#: 1 if taken; 0 if its record expired, finished, or someone (an orphan sweep) took it first.
_TAKE = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local fields = redis.call('HMGET', KEYS[2], 'owner', 'status')
if fields[1] ~= '' or fields[2] ~= 'running' then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], 'owner', ARGV[3], 'heartbeat', ARGV[2])
return 1
"""

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Throttle:
    """Items per batch, and most items a second (0: no limit)."""

    batch: int = 2_000
    rate: int = 10_000


@dataclass(frozen=True, slots=True)
class Plan:
    """What an operation does: ``apply`` (how many of its batch it did) to each batch of
    ``items()``; ``count()`` is the selection's size (a dry run's answer, and the total)."""

    items: Callable[[], Iterable[Any]]
    apply: Callable[[list[Any]], int]
    count: Callable[[], int]


#: Kind -> its planner: the :class:`Plan` of an operation of that kind from the app's context and
#: the operation's parameters (JSON).  A process that adopts an orphaned operation plans it again.
PLANNERS: dict[str, Callable[[Any, dict[str, Any]], Plan]] = {}


def planner(kind: str):
    """Register the decorated function as the planner of ``kind``'s operations."""

    def register(function: Callable[[Any, dict[str, Any]], Plan]):
        PLANNERS[kind] = function
        return function

    return register


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def read_ahead(chunks: Iterator[list[Any]], *, depth: int = READ_AHEAD) -> Iterator[list[Any]]:
    """``chunks``, read by a thread of their own up to ``depth`` ahead: the next batch's reads
    (Redis, the database) overlap the current batch's work.  An error reading them is raised
    here, where the next chunk was due; closing this generator stops the reader."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stopping = threading.Event()

    def offer(item: tuple[str, Any]) -> bool:
        """Hand ``item`` to the consumer; False once it stopped listening."""
        while not stopping.is_set():
            try:
                ready.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for chunk in chunks:
                if not offer(("chunk", chunk)):
                    return
            offer(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            offer(("error", exc))

    threading.Thread(target=read, name="tradeflow-operation-reader", daemon=True).start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stopping.set()


class Operations:
    """Starts, reads, heart-beats and adopts tracked operations.

    Parameters:
      client: The broker's Redis (progress records).
      namespace: The broker's key prefix.
      throttle: Batch size and rate of every operation.
      context: The app's context, handed to the planners when an orphan is resumed
        (None: orphans are marked ``interrupted``, never resumed).
      orphan_after: Seconds without a heartbeat after which an operation is adopted.
      runs: Whether this process runs operations (True, the default), or only queues them
        for a runner process (:meth:`take`) and reads them: then it neither heart-beats
        nor adopts orphans, which the runners do.
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        namespace: str,
        throttle: Throttle,
        context: Any = None,
        orphan_after: float = ORPHAN_AFTER_S,
        runs: bool = True,
    ) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.client = client
        self.namespace = namespace
        self.throttle = throttle
        self.context = context
        self.orphan_after = orphan_after
        self.runs = runs
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.running_key = RUNNING_KEY.format(namespace=namespace)
        self.queued_key = QUEUED_KEY.format(namespace=namespace)
        self._claim = client.register_script(_CLAIM)
        self._take = client.register_script(_TAKE)
        self._mine: set[str] = set()  # ids of the operations this process runs
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def key(self, operation_id: str) -> str:
        return OPERATION_KEY.format(namespace=self.namespace, operation_id=operation_id)

    def start(self, *, kind: str, plan: Plan, requested_by: str, params: dict[str, Any] | None = None) -> str:
        """Run ``plan`` in a thread (its ``count`` first, for the total), or queue it for a
        runner (``runs=False``, which plans it again from ``kind`` and ``params``); the id at
        once.  ``params`` (JSON) let another process plan it again if this one stops."""
        operation_id = uuid.uuid4().hex
        now = time.time()
        record = {
            "id": operation_id,
            "kind": kind,
            "status": "running",
            "total": -1,
            "done": 0,
            "skipped": 0,
            "requested_by": requested_by,
            "started_at": now,
            "owner": self.owner if self.runs else "",
            "heartbeat": now,
            "resumed": 0,
            "params": json.dumps(params) if params is not None else "",
        }
        key = self.key(operation_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=record)
            pipe.expire(key, OPERATION_TTL_S)
            pipe.zadd(self.running_key, {operation_id: now})
            if not self.runs:
                pipe.rpush(self.queued_key, operation_id)
            pipe.execute()
        if self.runs:
            self._launch(operation_id, plan.items, plan.apply, plan.count)
        return operation_id

    def take(self, *, timeout: float = 1.0) -> str | None:
        """Wait up to ``timeout`` seconds for a queued operation and run it here; its id, or None.

        A runner that dies between taking the id and claiming the operation loses only the
        queue entry: the operation, never heart-beaten, is adopted as an orphan."""
        popped = self.client.blpop([self.queued_key], timeout=timeout)
        if popped is None:
            return None
        operation_id = popped[1].decode()
        taken = self._take(
            keys=[self.running_key, self.key(operation_id)], args=[operation_id, time.time(), self.owner]
        )
        if taken != 1:
            return None
        self._resume(operation_id, self._read(operation_id) or {}, adopted=False)
        return operation_id

    def _launch(self, operation_id: str, items, apply, count) -> None:
        with self._lock:
            self._mine.add(operation_id)
        self.watch()  # heart-beats while it runs, whoever started the watcher
        thread = threading.Thread(
            target=self._run,
            args=(operation_id, items, apply, count),
            name=f"tradeflow-operation-{operation_id[:8]}",
            daemon=True,
        )
        thread.start()

    def _run(self, operation_id: str, items, apply, count) -> None:
        key = self.key(operation_id)
        processed = 0
        try:
            if count is not None:
                self.client.hset(key, "total", count())
            started = time.monotonic()
            for chunk in read_ahead(batches(items(), self.throttle.batch)):
                done = apply(chunk)
                processed += len(chunk)
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.hincrby(key, "done", done)
                    pipe.hincrby(key, "skipped", len(chunk) - done)
                    pipe.expire(key, OPERATION_TTL_S)
                    pipe.hget(key, "owner")
                    owner = pipe.execute()[-1]
                if owner is not None and owner.decode() != self.owner:
                    # this process was taken for stopped (frozen past orphan_after): the adopter goes on
                    self.logger.warning("Operation %s was adopted by %s; stopping here.", operation_id, owner)
                    return
                if self.throttle.rate:
                    ahead = processed / self.throttle.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            self._finish(operation_id, {"status": "succeeded"})
        except Exception as exc:
            self.logger.exception("Operation %s failed.", key)
            self._finish(operation_id, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        finally:
            with self._lock:
                self._mine.discard(operation_id)

    def _finish(self, operation_id: str, fields: dict[str, Any]) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(operation_id), mapping={**fields, "finished_at": time.time()})
            pipe.zrem(self.running_key, operation_id)
            pipe.execute()

    def get(self, operation_id: str) -> dict[str, str] | None:
        """The record of ``operation_id`` (None: unknown or expired), after adopting it if its
        owner stopped (so a reader never waits for a sweep to learn the truth)."""
        record = self._read(operation_id)
        if self.runs and record is not None and record["status"] == "running" and self._stale(record):
            self.adopt(operation_id)
            record = self._read(operation_id)
        return record

    def _read(self, operation_id: str) -> dict[str, str] | None:
        raw = self.client.hgetall(self.key(operation_id))
        return {k.decode(): v.decode() for k, v in raw.items()} or None

    def _stale(self, record: dict[str, str]) -> bool:
        beat = float(record.get("heartbeat") or record.get("started_at") or 0)
        return time.time() - beat > self.orphan_after

    # -- heartbeats and orphans ------------------------------------------------------------------

    def watch(self) -> None:
        """Start this process's watcher thread (once): it renews the heartbeat of the operations
        this process runs and adopts the orphans of stopped processes (not if it runs none)."""
        if not self.runs:
            return
        with self._lock:
            if self._watcher is not None and self._watcher.is_alive():
                return
            self._stopping.clear()
            self._watcher = threading.Thread(target=self._watch, name="tradeflow-operations", daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        """Stop the watcher (the operations' threads stop with the process)."""
        self._stopping.set()

    def _watch(self) -> None:
        while not self._stopping.wait(HEARTBEAT_INTERVAL_S):
            try:
                self.beat()
                self.adopt_orphans()
            except Exception as exc:  # Redis away: the next round tries again
                self.logger.warning("Operations watcher: %s", exc)

    def beat(self) -> None:
        """Renew the heartbeat of every operation this process runs."""
        with self._lock:
            mine = list(self._mine)
        if not mine:
            return
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            for operation_id in mine:
                pipe.zadd(self.running_key, {operation_id: now}, xx=True)
                pipe.hset(self.key(operation_id), "heartbeat", now)
            pipe.execute()

    def adopt_orphans(self) -> list[str]:
        """Adopt every running operation whose owner stopped heart-beating; their ids."""
        stale_before = time.time() - self.orphan_after
        orphans = self.client.zrangebyscore(self.running_key, "-inf", stale_before, start=0, num=100)
        return [operation_id.decode() for operation_id in orphans if self.adopt(operation_id.decode())]

    def adopt(self, operation_id: str) -> bool:
        """Claim ``operation_id`` if its owner stopped, then resume it (its planner, from its
        parameters) or mark it ``interrupted``; whether this process claimed it."""
        now = time.time()
        claimed = self._claim(
            keys=[self.running_key, self.key(operation_id)],
            args=[operation_id, now - self.orphan_after, now, self.owner],
        )
        if claimed != 1:
            return False
        self._resume(operation_id, self._read(operation_id) or {}, adopted=True)
        return True

    def _resume(self, operation_id: str, record: dict[str, str], *, adopted: bool) -> None:
        """Run the operation this process just claimed (``adopted``: from a stopped process),
        planned again from its record, or mark it ``interrupted`` if nothing here can plan it."""
        previous = f"{record.get('done', 0)} done, {record.get('skipped', 0)} skipped"
        plan = self._plan(record)
        if plan is None:
            why = (
                f"the process running it stopped ({previous})"
                if adopted
                else f"this process cannot run operations of kind {record.get('kind')!r}"
            )
            self.logger.warning("Operation %s: %s; interrupted.", operation_id, why)
            self._finish(
                operation_id,
                {
                    "status": "interrupted",
                    "error": f"{why}; start it again for the rest "
                    "(the selection no longer holds what was done)",
                },
            )
            return
        if adopted:
            self.logger.warning("Operation %s lost its process (%s): resuming it.", operation_id, previous)
            self.client.hincrby(self.key(operation_id), "resumed", 1)
        # the total stays the first count; an operation never counted (queued) is counted now
        counted = record.get("total", "-1") != "-1"
        self._launch(operation_id, plan.items, plan.apply, None if counted else plan.count)

    def _plan(self, record: dict[str, str]) -> Plan | None:
        make = PLANNERS.get(record.get("kind", ""))
        if make is None or self.context is None or not record.get("params"):
            return None
        try:
            return make(self.context, json.loads(record["params"]))
        except Exception:
            self.logger.exception("Operation %s cannot be planned again.", record.get("id"))
            return None


def operations_of(context) -> Operations:
    """The app's :class:`Operations` (an ``ApiContext``'s, made on first use)."""
    operations = context.extras.get("operations")
    if operations is None:
        settings = context.settings
        operations = Operations(
            client=context.redis,
            namespace=context.namespace,
            throttle=Throttle(batch=settings.api_bulk_batch, rate=settings.api_bulk_rate),
            context=context,
            orphan_after=settings.api_operation_orphan_s,
            runs=context.runs_operations,
        )
        context.extras["operations"] = operations
    return operations


def bulk_action(
    request,
    response,
    *,
    dry_run: bool,
    kind: str,
    params: dict[str, Any],
    principal,
):
    """What a bulk route answers: the count of a dry run (200), or the started operation (202).

    The operation is what :data:`PLANNERS` plans for ``kind`` from ``params`` (JSON: the
    route's selection), so that another process can plan it again."""
    from .access import note_target
    from .context import context_of
    from .models import BulkAccepted

    context = context_of(request)
    plan = PLANNERS[kind](context, params)
    if dry_run:
        response.status_code = 200
        return BulkAccepted(dry_run=True, count=plan.count())
    operation_id = operations_of(context).start(
        kind=kind, plan=plan, requested_by=principal.key_name, params=params
    )
    note_target(request, f"operation={operation_id}")
    return BulkAccepted(dry_run=False, operation_id=operation_id)
