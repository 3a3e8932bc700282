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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
from dramatiq import Broker, Middleware
from dramatiq.common import dq_name, q_name, xq_name
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .audit import DEFAULT_PRIORITY, worker_id

#: Buckets of the processing duration histogram, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, float("inf"))

#: Buckets of the IB batch size histogram, in items.
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, float("inf"))

#: Redis hash (under the namespace) where scheduler ticks are counted.
SCHEDULER_KEY = "__scheduler__"

#: Redis sorted set (under the namespace) of worker processes by last heartbeat.
WORKERS_KEY = "__workers__"

#: Redis set (under the namespace) of the queues worker processes declared.
QUEUES_KEY = "__queues__"

#: Seconds between two heartbeats of a worker process.
HEARTBEAT_INTERVAL = 5.0

#: Seconds after which a silent worker's heartbeat entry is removed.
FORGET_WORKERS_AFTER = 86_400.0

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


class WorkerHeartbeat:
    """Records ``host:pid`` with the time in a Redis sorted set every ``interval`` seconds.

    Dramatiq's own heartbeats come from every broker client, producers
    included; this one counts only processes running a worker.

    Parameters:
      client(redis.Redis): Where to write.
      key(str): The sorted set.
      interval(float): Seconds between beats.  Defaults to :data:`HEARTBEAT_INTERVAL`.
    """

    def __init__(self, *, client: redis.Redis, key: str, interval: float = HEARTBEAT_INTERVAL) -> None:
        self.logger = get_logger(__name__, type(self))
        self.client = client
        self.key = key
        self.interval = interval
        self.member = worker_id()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tradeflow-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(self.interval)
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(self.key, self.member)

    def _run(self) -> None:
        while not self._stopped.is_set():
            now = time.time()
            try:
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.zadd(self.key, {self.member: now})
                    pipe.zremrangebyscore(self.key, 0, now - FORGET_WORKERS_AFTER)  # killed long ago
                    pipe.execute()
            except redis.RedisError as exc:
                self.logger.warning("Heartbeat not recorded (%s); retrying in %.0fs.", exc, self.interval)
            self._stopped.wait(self.interval)


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


class RedisStateCollector:
    """Values read from Redis at scrape time: queue depths, live workers, scheduler ticks.

    Parameters:
      client(redis.Redis): The broker's Redis.
      namespace(str): The broker's key prefix.
      queues(list[str]): Queues to report (canonical names).
      heartbeat_timeout(float): Seconds after which a silent worker is not counted alive.
    """

    def __init__(
        self, *, client: redis.Redis, namespace: str, queues: list[str], heartbeat_timeout: float
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.queues = sorted(set(queues))
        self.heartbeat_timeout = heartbeat_timeout

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        depth = GaugeMetricFamily(
            "task_queue_depth_current",
            "Messages in Redis now: ready, delayed (ETA not reached) and dead_letter.",
            labels=["queue", "state"],
        )
        for queue, counts in self.depths().items():
            for state, count in counts.items():
                depth.add_metric([queue, state], count)
        yield depth
        workers = GaugeMetricFamily("task_queue_workers_alive", "Worker processes whose heartbeat is recent.")
        workers.add_metric([], self.workers_alive())
        yield workers
        ticks = self.scheduler_ticks()
        fired = CounterMetricFamily(
            "scheduler_ticks", "Periodic messages sent or skipped.", labels=["outcome"]
        )
        for outcome in ("fired", "skipped"):
            fired.add_metric([outcome], ticks.get(outcome, 0.0))
        yield fired
        last = GaugeMetricFamily(
            "scheduler_last_tick_timestamp_seconds", "Unix time of the scheduler's last periodic message."
        )
        last.add_metric([], ticks.get("last_fired", 0.0))
        yield last

    def depths(self) -> dict[str, dict[str, int]]:
        """Per queue: ``ready``, ``delayed`` and ``dead_letter`` message counts."""
        known = {member.decode() for member in self.client.smembers(f"{self.namespace}:{QUEUES_KEY}")}
        queues = sorted(known.union(self.queues))
        with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(f"{self.namespace}:{queue}")
                pipe.llen(f"{self.namespace}:{dq_name(queue)}")
                pipe.zcard(f"{self.namespace}:{xq_name(queue)}")
            counts = pipe.execute()
        return {
            queue: dict(zip(("ready", "delayed", "dead_letter"), counts[i * 3 : i * 3 + 3], strict=True))
            for i, queue in enumerate(queues)
        }

    def workers_alive(self) -> int:
        since = time.time() - self.heartbeat_timeout
        return int(self.client.zcount(f"{self.namespace}:{WORKERS_KEY}", since, "+inf"))

    def scheduler_ticks(self) -> dict[str, float]:
        raw = self.client.hgetall(f"{self.namespace}:{SCHEDULER_KEY}")
        return {key.decode(): float(value) for key, value in raw.items()}


def build_registry(
    *, directory: Path, client: redis.Redis, namespace: str, queues: list[str], heartbeat_timeout: float
) -> Any:
    """The registry ``/metrics`` serves: the worker processes' files merged, plus Redis state."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    directory.mkdir(parents=True, exist_ok=True)
    mark_dead_processes(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    registry.register(
        RedisStateCollector(
            client=client, namespace=namespace, queues=queues, heartbeat_timeout=heartbeat_timeout
        )
    )
    return registry


def registry_for(settings: Any, client: redis.Redis, queues: list[str] = ()) -> Any:
    """:func:`build_registry` with the values of ``settings`` (a ``config.Settings``)."""
    return build_registry(
        directory=settings.effective_metrics_dir,
        client=client,
        namespace=settings.namespace,
        queues=[q_name(queue) for queue in queues],
        heartbeat_timeout=settings.heartbeat_timeout_ms / 1000,
    )


def serve_metrics() -> int:
    """Fork function of the exposition process: serve ``/metrics`` until stopped."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.exposition import MetricsHandler

    import actors  # this process is an edge: the broker and settings come from the environment

    logger = get_logger(__name__, "serve_metrics")
    settings, broker = actors.settings, actors.broker

    class Handler(MetricsHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404, "try /metrics")
                return
            try:
                output = generate_latest(registry_for(settings, broker.client, broker.get_declared_queues()))
            except redis.RedisError as exc:
                self.send_error(503, f"cannot read Redis: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.end_headers()
            self.wfile.write(output)

        def log_message(self, fmt: str, *args: Any) -> None:
            logger.debug(fmt, *args)

    try:
        server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), Handler)
    except OSError as exc:
        logger.error(
            "Cannot serve metrics on %s:%d (%s); set TRADEFLOW_METRICS_PORT (0 disables).",
            settings.metrics_host,
            settings.metrics_port,
            exc,
        )
        return 1
    logger.info("Serving metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    server.serve_forever()
    return 0


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
