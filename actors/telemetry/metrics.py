"""Prometheus metrics of the worker processes, in prometheus-client's multiprocess mode.

``dramatiq`` forks worker processes; each writes its samples to files in one
directory (``Settings.effective_metrics_dir``), and an exposition process
forked by the same master serves them merged on ``/metrics``, together with
values read from Redis at scrape time (queue depths, live workers, scheduler
ticks, and enqueues, which every process counts, producers included).
``tradeflow metrics`` reads the same registry without HTTP.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from dramatiq import Broker, Middleware
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.message import Message

from actors.middleware import DEFAULT_PRIORITY

#: Buckets of the processing duration histogram, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, float("inf"))

#: Buckets of the IB batch size histogram, in items.
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, float("inf"))

#: Redis hash (under the namespace) where scheduler ticks are counted.
SCHEDULER_KEY = "__scheduler__"

#: Redis set (under the namespace) of the queues worker processes declared.
QUEUES_KEY = "__queues__"

#: Redis hash (under the namespace) where every process adds its enqueues:
#: field ``["queue", "priority", "actor"]`` (JSON), value the count.
ENQUEUED_KEY = "__enqueued__"

#: Redis hash (under the namespace) where supervisors (``tradeflow up``) count the restarts
#: of the processes they run: field the process kind (``worker``, ``scheduler``).
RESTARTS_KEY = "__restarts__"

#: Seconds between two additions of a process's enqueue counts to Redis.
ENQUEUE_FLUSH_INTERVAL = 1.0

#: File of the metrics directory naming the worker master that owns it.
OWNER_FILE = "owner"

_PID_OF_FILE = re.compile(r"_(\d+)\.db$")


@dataclass
class WorkerMetrics:
    """The metric objects of one worker process (created after it booted)."""

    dequeued: Any
    completed: Any
    failed: Any
    retried: Any
    dead_lettered: Any
    in_progress: Any
    duration: Any
    processes: Any

    @classmethod
    def create(cls) -> WorkerMetrics:
        from prometheus_client import Counter, Gauge, Histogram

        by_actor = ["queue", "actor"]
        return cls(
            dequeued=Counter(
                "task_queue_dequeued", "Messages taken for processing.", by_actor, registry=None
            ),
            completed=Counter(
                "task_queue_completed", "Messages processed successfully.", by_actor, registry=None
            ),
            failed=Counter(
                "task_queue_failed",
                "Failed attempts, by exception type (or 'skipped').",
                [*by_actor, "reason"],
                registry=None,
            ),
            retried=Counter(
                "task_queue_retried", "Failed attempts that were retried.", by_actor, registry=None
            ),
            dead_lettered=Counter(
                "task_queue_dlq", "Messages moved to the dead-letter queue.", by_actor, registry=None
            ),
            in_progress=Gauge(
                "task_queue_in_progress",
                "Messages being processed now.",
                by_actor,
                multiprocess_mode="livesum",
                registry=None,
            ),
            duration=Histogram(
                "task_queue_processing_duration_seconds",
                "Time an actor took, successful or not.",
                by_actor,
                buckets=DURATION_BUCKETS,
                registry=None,
            ),
            processes=Gauge(
                "task_queue_worker_processes",
                "Live worker processes of this master.",
                multiprocess_mode="livesum",
                registry=None,
            ),
        )


class EnqueueCounts:
    """Enqueues of one process, counted in memory and added to a Redis hash in the background.

    Every process that sends counts here: workers, and producers (``tradeflow
    send``, the API, services that ``import actors``), which run on hosts
    without the workers' metrics directory and often exit right after
    sending.  Sends pay a dict increment, no Redis round trip; a daemon
    thread adds the counts with one pipelined ``HINCRBY`` per label set every
    ``interval`` seconds, and at exit (or worker shutdown).  Counts that
    could not be written (Redis down) are kept for the next attempt; at exit
    there is one attempt.

    Parameters:
      client(redis.Redis): The broker's Redis.
      key(str): The hash (``{namespace}:__enqueued__``).
      interval(float): Seconds between flushes.  Defaults to :data:`ENQUEUE_FLUSH_INTERVAL`.
    """

    def __init__(self, *, client: redis.Redis, key: str, interval: float = ENQUEUE_FLUSH_INTERVAL) -> None:
        self.logger = get_logger(__name__, type(self))
        self.client = client
        self.key = key
        self.interval = interval
        self._reset()
        reset = weakref.WeakMethod(self._reset)
        # A forked child counts its own sends only (and has no flusher thread yet).
        os.register_at_fork(after_in_child=lambda: (method := reset()) and method())
        atexit.register(self.close)

    def _reset(self) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def add(self, queue: str, priority: str, actor: str) -> None:
        """Count one enqueue."""
        labels = (queue, priority, actor)
        with self._lock:
            self._counts[labels] = self._counts.get(labels, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="enqueue-counts", daemon=True)
                self._thread.start()

    def flush(self) -> bool:
        """Add the counts so far to Redis; whether they all got there."""
        with self._flush_lock:
            with self._lock:
                counts, self._counts = self._counts, {}
            if not counts:
                return True
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    for labels, count in counts.items():
                        pipe.hincrby(self.key, json.dumps(labels), count)
                    pipe.execute()
            except redis.RedisError as exc:
                with self._lock:
                    for labels, count in counts.items():
                        self._counts[labels] = self._counts.get(labels, 0) + count
                if not self._failing:  # once per outage, not once a second
                    self.logger.warning("Enqueue counts not written to Redis yet (%s); will retry.", exc)
                self._failing = True
                return False
            self._failing = False
            return True

    def close(self) -> None:
        """Stop the flusher and write what is left, once (at exit: the producer's last sends).

        One attempt: a process exiting while Redis is down does not hang for it.
        """
        self._stop.set()
        if not self.flush():
            lost = sum(self._counts.values())
            self.logger.warning("%d enqueue counts not written to Redis (unreachable at exit).", lost)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()


def enqueue_counts(client: redis.Redis, namespace: str) -> dict[tuple[str, str, str], float]:
    """Enqueues by ``(queue, priority, actor)`` as counted in Redis by every process."""
    counts = {}
    for field, value in client.hgetall(f"{namespace}:{ENQUEUED_KEY}").items():
        try:
            queue, priority, actor = json.loads(field)
        except ValueError:
            continue
        counts[(queue, priority, actor)] = float(value)
    return counts


class Metrics(Middleware):
    """Counts messages in Prometheus metrics; forks the ``/metrics`` exposition process.

    Processing is counted in ``dramatiq`` worker processes (from
    ``after_process_boot``), in the multiprocess directory.  Enqueues are
    counted by every process, producers included, in Redis (see
    :class:`EnqueueCounts`), as are scheduler ticks.  The first worker
    process of a new master wipes the directory left by a previous master,
    so its counters start at zero with each run; each process marks itself
    dead on shutdown, and the exposition process marks processes that died
    without shutting down (``kill -9``).

    Parameters:
      directory(Path): The multiprocess directory.
      host(str): Address ``/metrics`` is served on.
      port(int): Its port; 0 serves nothing.
      serve: The fork function that serves it (Dramatiq runs it in a process of its own);
        None serves nothing.
    """

    def __init__(
        self,
        *,
        directory: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        serve: Callable[[], int] | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.serve = serve
        self.directory = Path(directory)
        self.host = host
        self.port = port
        self.worker_metrics: WorkerMetrics | None = None
        self.enqueue_counts: EnqueueCounts | None = None
        self._enqueue_lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._delayed: set[str] = set()
        # (queue, actor) -> the labelled children of a processed message: one lookup, not five
        self._children: dict[tuple[str, str], tuple[Any, ...]] = {}

    @property
    def forks(self) -> list:
        return [self.serve] if self.port and self.serve is not None else []

    def after_process_boot(self, broker: Broker) -> None:
        use_directory(self.directory)
        claim_directory(self.directory)
        self.worker_metrics = WorkerMetrics.create()
        self.worker_metrics.processes.set(1)

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        # The exposition process imports only ``actors``: tell it every queue workers know.
        queues = {q_name(queue) for queue in broker.get_declared_queues()}
        if queues:
            broker.client.sadd(f"{broker.namespace}:{QUEUES_KEY}", *queues)

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        if self.enqueue_counts is not None:
            self.enqueue_counts.close()
        if self.worker_metrics is None:
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), str(self.directory))

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        options = message.options
        if _is_scheduler_tick(message) and not options.get("retries"):
            _count_scheduler_tick(broker, "fired")
        if self._delayed and message.message_id in self._delayed:
            self._delayed.discard(message.message_id)
            return  # a delayed message reaching its queue was counted when first sent
        if options.get("retries"):
            return  # a retry is counted as retried, not enqueued again
        counts = self.enqueue_counts or self._enqueue_counts_of(broker)
        if counts is None:
            return
        priority = options.get("priority")
        counts.add(
            q_name(message.queue_name),
            priority if isinstance(priority, str) else DEFAULT_PRIORITY,
            message.actor_name,
        )

    def _enqueue_counts_of(self, broker: Broker) -> EnqueueCounts | None:
        if not isinstance(getattr(broker, "client", None), redis.Redis):
            return None  # not a Redis broker (a test's stub): nowhere to count
        with self._enqueue_lock:
            if self.enqueue_counts is None:
                self.enqueue_counts = EnqueueCounts(
                    client=broker.client, key=f"{broker.namespace}:{ENQUEUED_KEY}"
                )
            return self.enqueue_counts

    def before_delay_message(self, broker: Broker, message: Message) -> None:
        self._delayed.add(message.message_id)

    def before_process_message(self, broker: Broker, message: Message) -> None:
        if self.worker_metrics is None:
            return
        dequeued, in_progress, _, _ = self._children_of(message)
        dequeued.inc()
        in_progress.inc()
        self._started[message.message_id] = time.perf_counter()

    def after_process_message(
        self, broker: Broker, message: Message, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if self.worker_metrics is None:
            return
        _, in_progress, completed, duration = self._children_of(message)
        self._finish(in_progress, duration, message)
        if exception is None:
            completed.inc()
            return
        labels = (q_name(message.queue_name), message.actor_name)
        self.worker_metrics.failed.labels(*labels, type(exception).__name__).inc()
        if not message.failed:
            self.worker_metrics.retried.labels(*labels).inc()

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        if _is_scheduler_tick(message):
            _count_scheduler_tick(broker, "skipped")
        if self.worker_metrics is None:
            return
        _, in_progress, _, duration = self._children_of(message)
        self._finish(in_progress, duration, message)
        self.worker_metrics.failed.labels(q_name(message.queue_name), message.actor_name, "skipped").inc()

    def after_nack(self, broker: Broker, message: Message) -> None:
        if self.worker_metrics is None:
            return
        self.worker_metrics.dead_lettered.labels(q_name(message.queue_name), message.actor_name).inc()

    def _children_of(self, message: Message) -> tuple[Any, ...]:
        """dequeued, in_progress, completed and duration for the message's queue and actor."""
        key = (message.queue_name, message.actor_name)
        children = self._children.get(key)
        if children is None:
            labels = (q_name(message.queue_name), message.actor_name)
            metrics = self.worker_metrics
            children = self._children[key] = (
                metrics.dequeued.labels(*labels),
                metrics.in_progress.labels(*labels),
                metrics.completed.labels(*labels),
                metrics.duration.labels(*labels),
            )
        return children

    def _finish(self, in_progress: Any, duration: Any, message: Message) -> None:
        in_progress.dec()
        started = self._started.pop(message.message_id, None)
        if started is not None:
            duration.observe(time.perf_counter() - started)


def count_restart(client: redis.Redis, namespace: str, process: str) -> None:
    """Count one restart of a supervised ``process`` (``worker``, ``scheduler``, ``api``)."""
    client.hincrby(f"{namespace}:{RESTARTS_KEY}", process, 1)


def restart_counts(client: redis.Redis, namespace: str) -> dict[str, float]:
    """Restarts of supervised processes so far, by process kind."""
    raw = client.hgetall(f"{namespace}:{RESTARTS_KEY}")
    return {kind.decode(): float(count) for kind, count in raw.items()}


def _is_scheduler_tick(message: Message) -> bool:
    # periodiq's scheduler stamps what it sends; a manual send of a periodic actor is no tick.
    return "scheduled_at" in message.options


def _count_scheduler_tick(broker: Broker, outcome: str) -> None:
    # In Redis rather than in process files: the scheduler runs on its own host.
    key = f"{broker.namespace}:{SCHEDULER_KEY}"
    with broker.client.pipeline(transaction=False) as pipe:
        pipe.hincrby(key, outcome, 1)
        pipe.hset(key, f"last_{outcome}", time.time())
        pipe.execute()


def use_directory(directory: Path) -> None:
    """Put this process's prometheus-client in multiprocess mode on ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import values

    # prometheus-client picks the value class when it is first imported; if
    # that happened before the variable was set, pick again.
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.MultiProcessValue()


def claim_directory(directory: Path) -> None:
    """Wipe ``directory`` once per worker master: the first worker process of a new master does it.

    The owner file names the master (pid and start time, so a reused pid is
    not mistaken for it); a lock makes sibling processes wait for the wipe.
    """
    owner = _process_identity(os.getppid())
    with _locked(directory):
        owner_file = directory / OWNER_FILE
        if owner_file.exists() and owner_file.read_text() == owner:
            return
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
        owner_file.write_text(owner)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _process_identity(pid: int) -> str:
    try:
        start_ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start_ticks = "?"
    return f"{pid}:{start_ticks}"


def mark_dead_processes(directory: Path) -> list[int]:
    """Mark processes that left files but no longer run (e.g. killed with -9) dead; their pids."""
    from prometheus_client import multiprocess

    dead = set()
    for path in directory.glob("gauge_live*_*.db"):
        match = _PID_OF_FILE.search(path.name)
        if match and not _process_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(directory))
    return sorted(dead)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_ib_metrics: dict[str, Any] = {}


def observe_ib_batch(*, operation: str, size: int, seconds: float) -> None:
    """Record one Interactive Brokers batch: how many items and how long it took."""
    from prometheus_client import Histogram

    if not _ib_metrics:
        _ib_metrics["size"] = Histogram(
            "ib_batch_size", "Items per IB batch.", ["operation"], buckets=BATCH_SIZE_BUCKETS, registry=None
        )
        _ib_metrics["duration"] = Histogram(
            "ib_batch_duration_seconds", "Duration of an IB batch.", ["operation"], registry=None
        )
    _ib_metrics["size"].labels(operation).observe(size)
    _ib_metrics["duration"].labels(operation).observe(seconds)
