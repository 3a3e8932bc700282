"""What ``/metrics`` serves: the worker processes' files merged, plus Redis state read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from dramatiq.common import dq_name, q_name, xq_name

from actors.broker import DEFAULT_LANE, LANES, RedisRoutes
from actors.middleware import workers_alive

from .metrics import QUEUES_KEY, SCHEDULER_KEY, enqueue_counts, mark_dead_processes, restart_counts


class RedisStateCollector:
    """Values read from Redis at scrape time: queue depths, live workers, scheduler ticks, enqueues.

    They are Redis-wide (every host's exposition reports the same values):
    dashboards and rules aggregate them with ``max``, not ``sum``.

    Parameters:
      client(redis.Redis): The broker's Redis.
      namespace(str): The broker's key prefix.
      queues(list[str]): Queues to report (canonical names).
      heartbeat_timeout(float): Seconds after which a silent worker is not counted alive.
      routes(RedisRoutes | None): Where each queue's depth is read, when queues live on
        Redis instances of their own.  Defaults to ``client`` for every queue.
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        namespace: str,
        queues: list[str],
        heartbeat_timeout: float,
        routes: RedisRoutes | None = None,
    ) -> None:
        self.client = client
        self.routes = routes or RedisRoutes(default=client)
        self.namespace = namespace
        self.queues = sorted(set(queues))
        self.heartbeat_timeout = heartbeat_timeout

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        depths, lanes = self._read_depths()
        depth = GaugeMetricFamily(
            "task_queue_depth_current",
            "Messages in Redis now: ready (all priority lanes), delayed (ETA not reached) and dead_letter.",
            labels=["queue", "state"],
        )
        for queue, counts in depths.items():
            for state, count in counts.items():
                depth.add_metric([queue, state], count)
        yield depth
        by_priority = GaugeMetricFamily(
            "task_queue_depth_by_priority",
            "Ready messages in Redis now, by priority lane.",
            labels=["queue", "priority"],
        )
        for queue, counts in lanes.items():
            for lane, count in counts.items():
                by_priority.add_metric([queue, lane], count)
        yield by_priority
        enqueued = CounterMetricFamily(
            "task_queue_enqueued",
            "Messages enqueued, by every process (producers too); retries and delayed moves not recounted.",
            labels=["queue", "priority", "actor"],
        )
        for labels, count in sorted(enqueue_counts(self.client, self.namespace).items()):
            enqueued.add_metric(list(labels), count)
        yield enqueued
        restarts = CounterMetricFamily(
            "task_queue_worker_restarts",
            "Worker and scheduler processes restarted by their supervisor (tradeflow up) after they died.",
            labels=["process"],
        )
        for process, count in sorted(restart_counts(self.client, self.namespace).items()):
            restarts.add_metric([process], count)
        yield restarts
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
        """Per queue: ``ready`` (all priority lanes), ``delayed`` and ``dead_letter`` message counts."""
        return self._read_depths()[0]

    def depths_and_lanes(self) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
        """:meth:`depths`, and ready messages by priority lane, per queue, in one round trip."""
        return self._read_depths()

    def _read_depths(self) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
        """Depths by state, and ready messages by priority lane, in one round trip per Redis."""
        known = {member.decode() for member in self.client.smembers(f"{self.namespace}:{QUEUES_KEY}")}
        depths, lanes = {}, {}
        width = len(LANES) + 2
        for client, queues in self.routes.group(sorted(known.union(self.queues))):
            with client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    for (
                        lane
                    ) in LANES:  # the normal lane is the queue's own list (see actors/lua/dispatch.lua)
                        pipe.llen(f"{self.namespace}:{queue}" + ("" if lane == DEFAULT_LANE else f":{lane}"))
                    pipe.llen(f"{self.namespace}:{dq_name(queue)}")
                    pipe.zcard(f"{self.namespace}:{xq_name(queue)}")
                counts = pipe.execute()
            for i, queue in enumerate(queues):
                row = counts[i * width : (i + 1) * width]
                lanes[queue] = dict(zip(LANES, row[: len(LANES)], strict=True))
                depths[queue] = {"ready": sum(row[: len(LANES)]), "delayed": row[-2], "dead_letter": row[-1]}
        return dict(sorted(depths.items())), dict(sorted(lanes.items()))

    def workers_alive(self) -> int:
        return workers_alive(self.client, self.namespace, timeout=self.heartbeat_timeout)

    def scheduler_ticks(self) -> dict[str, float]:
        raw = self.client.hgetall(f"{self.namespace}:{SCHEDULER_KEY}")
        return {key.decode(): float(value) for key, value in raw.items()}


def build_registry(
    *, directory: Path, routes: RedisRoutes, namespace: str, queues: list[str], heartbeat_timeout: float
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
            client=routes.default,
            namespace=namespace,
            queues=queues,
            heartbeat_timeout=heartbeat_timeout,
            routes=routes,
        )
    )
    return registry


def registry_for(settings: Any, routes: RedisRoutes, queues: list[str] = ()) -> Any:
    """:func:`build_registry` with the values of ``settings`` (a ``actors.settings.Settings``)."""
    return build_registry(
        directory=settings.effective_metrics_dir,
        routes=routes,
        namespace=settings.namespace,
        queues=[q_name(queue) for queue in queues],
        heartbeat_timeout=settings.heartbeat_timeout_ms / 1000,
    )
