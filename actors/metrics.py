"""Prometheus metrics of the worker processes, in prometheus-client's multiprocess mode.

``dramatiq`` forks worker processes; each writes its samples to files in one
directory (``Settings.effective_metrics_dir``), and an exposition process
forked by the same master serves them merged on ``/metrics``, together with
values read from Redis at scrape time (queue depths, live workers, scheduler
ticks).  ``tradeflow metrics`` reads the same registry without HTTP.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dramatiq import Broker, Middleware
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .audit import DEFAULT_PRIORITY
from .heartbeat import WORKERS_KEY, WorkerHeartbeat

#: Buckets of the processing duration histogram, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, float("inf"))

#: Buckets of the IB batch size histogram, in items.
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, float("inf"))

#: Redis hash (under the namespace) where scheduler ticks are counted.
SCHEDULER_KEY = "__scheduler__"

#: Redis set (under the namespace) of the queues worker processes declared.
QUEUES_KEY = "__queues__"

#: File of the metrics directory naming the worker master that owns it.
OWNER_FILE = "owner"

_PID_OF_FILE = re.compile(r"_(\d+)\.db$")


@dataclass
class WorkerMetrics:
    """The metric objects of one worker process (created after it booted)."""

    enqueued: Any
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
            enqueued=Counter(
                "task_queue_enqueued", "Messages enqueued.", ["queue", "priority", "actor"], registry=None
            ),
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


class Metrics(Middleware):
    """Counts messages in Prometheus metrics; forks the ``/metrics`` exposition process.

    Metrics are collected in ``dramatiq`` worker processes (from
    ``after_process_boot``); other processes only record scheduler ticks in
    Redis.  The first worker process of a new master wipes the directory
    left by a previous master, so counters start at zero with each run;
    each process marks itself dead on shutdown, and the exposition process
    marks processes that died without shutting down (``kill -9``).

    Parameters:
      directory(Path): The multiprocess directory.
      host(str): Address ``/metrics`` is served on.
      port(int): Its port; 0 serves nothing.
    """

    def __init__(self, *, directory: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.logger = get_logger(__name__, type(self))
        self.directory = Path(directory)
        self.host = host
        self.port = port
        self.worker_metrics: WorkerMetrics | None = None
        self._started: dict[str, float] = {}
        self._delayed: set[str] = set()
        self._heartbeat: WorkerHeartbeat | None = None

    @property
    def forks(self) -> list:
        from .exposition import serve_metrics

        return [serve_metrics] if self.port else []

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
        self._heartbeat = WorkerHeartbeat(client=broker.client, key=f"{broker.namespace}:{WORKERS_KEY}")
        self._heartbeat.start()

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self.worker_metrics is None:
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), str(self.directory))

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        if _is_scheduler_tick(message) and not message.options.get("retries"):
            _count_scheduler_tick(broker, "fired")
        if self.worker_metrics is None:
            return
        if message.message_id in self._delayed:
            self._delayed.discard(message.message_id)
            return  # a delayed message reaching its queue was counted when first sent
        if message.options.get("retries"):
            return  # a retry is counted as retried, not enqueued again
        priority = message.options.get("priority")
        self.worker_metrics.enqueued.labels(
            q_name(message.queue_name),
            priority if isinstance(priority, str) else DEFAULT_PRIORITY,
            message.actor_name,
        ).inc()

    def before_delay_message(self, broker: Broker, message: Message) -> None:
        if self.worker_metrics is not None:
            self._delayed.add(message.message_id)

    def before_process_message(self, broker: Broker, message: Message) -> None:
        if self.worker_metrics is None:
            return
        labels = (q_name(message.queue_name), message.actor_name)
        self.worker_metrics.dequeued.labels(*labels).inc()
        self.worker_metrics.in_progress.labels(*labels).inc()
        self._started[message.message_id] = time.perf_counter()

    def after_process_message(
        self, broker: Broker, message: Message, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if self.worker_metrics is None:
            return
        labels = (q_name(message.queue_name), message.actor_name)
        self._finish(labels, message)
        if exception is None:
            self.worker_metrics.completed.labels(*labels).inc()
            return
        self.worker_metrics.failed.labels(*labels, type(exception).__name__).inc()
        if not message.failed:
            self.worker_metrics.retried.labels(*labels).inc()

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        if _is_scheduler_tick(message):
            _count_scheduler_tick(broker, "skipped")
        if self.worker_metrics is None:
            return
        labels = (q_name(message.queue_name), message.actor_name)
        self._finish(labels, message)
        self.worker_metrics.failed.labels(*labels, "skipped").inc()

    def after_nack(self, broker: Broker, message: Message) -> None:
        if self.worker_metrics is None:
            return
        self.worker_metrics.dead_lettered.labels(q_name(message.queue_name), message.actor_name).inc()

    def _finish(self, labels: tuple[str, str], message: Message) -> None:
        self.worker_metrics.in_progress.labels(*labels).dec()
        started = self._started.pop(message.message_id, None)
        if started is not None:
            self.worker_metrics.duration.labels(*labels).observe(time.perf_counter() - started)


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
