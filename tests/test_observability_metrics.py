"""Prometheus metrics: scraped over HTTP from real worker processes after real work."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import dramatiq
import pytest
import redis
from conftest import run_cli, settings_env
from dramatiq.common import dq_name, xq_name
from obs_actors import IDLE_QUEUE, QUEUE, declare
from obs_support import free_port, result_of, start_workers, stop_workers, wait_until
from prometheus_client.parser import text_string_to_metric_families

from actors.middleware import workers_alive
from actors.middleware.heartbeat import beat, leave, read_workers
from actors.runtime import build_broker
from actors.settings import Settings
from actors.telemetry import (
    ENQUEUED_KEY,
    SCHEDULER_KEY,
    EnqueueCounts,
    RedisStateCollector,
    claim_directory,
    enqueue_counts,
    mark_dead_processes,
    use_directory,
)

pytest_plugins = ["obs_fixtures"]


def _scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and wanted <= sample_labels
    )


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_metrics_from_several_worker_processes_and_queue_depth_from_redis(obs_settings: Settings) -> None:
    port = free_port()
    settings = obs_settings.model_copy(update={"metrics_port": port})
    broker = build_broker(settings)
    declared = declare(broker)
    workers = start_workers(settings, processes=2, queues=(QUEUE,))
    try:
        wait_until(
            lambda: _alive(settings) == 2 and _answers(port), timeout=60, what="2 workers and /metrics"
        )
        # batches until both worker processes have counted some: the scrape must merge several
        steps: list[dramatiq.Message] = []
        while len(_counting_pids(settings)) < 2 and len(steps) < 200:
            batch = [declared["obs_step"].send(i) for i in range(len(steps), len(steps) + 20)]
            for message in batch:
                result_of(broker, message)
            steps += batch
        for i in range(3):
            declared["obs_fail"].send(i)
        flaky = declared["obs_flaky"].send(1)
        pipe = dramatiq.pipeline(
            [declared["obs_step"].message(0), declared["obs_step"].message()], broker=broker
        )
        pipe.run()
        for message in [*steps, flaky, pipe.messages[-1]]:
            result_of(broker, message)
        for _ in range(4):
            declared["obs_idle"].send()
        for _ in range(2):
            declared["obs_idle"].send_with_options(priority="high")
        declared["obs_idle"].send_with_options(delay=600_000)

        client = redis.Redis.from_url(settings.effective_redis_url)
        ns = settings.namespace
        wait_until(lambda: client.zcard(f"{ns}:{xq_name(QUEUE)}") == 3, timeout=60, what="3 dead letters")
        # counters move just after Redis does (post-processing): wait for the scrape to settle
        completions = len(steps) + 3
        # this process's enqueues reach Redis within a flush interval (1 s)
        wait_until(
            lambda: _settled(_scrape(port), completions, step_enqueues=len(steps) + 2),
            timeout=60,
            what=f"{completions} completions, 3 dead letters, nothing in progress",
        )
        samples = _scrape(port)
    finally:
        stop_workers(workers)

    by_step = {"queue": QUEUE, "actor": "obs_step"}
    assert _value(samples, "task_queue_completed_total", **by_step) == len(steps) + 2
    assert _value(samples, "task_queue_dequeued_total", **by_step) == len(steps) + 2
    assert _value(samples, "task_queue_processing_duration_seconds_count", **by_step) == len(steps) + 2
    # this process sent the steps and the pipeline's first message, a worker the second one
    assert _value(samples, "task_queue_enqueued_total", priority="normal", **by_step) == len(steps) + 2
    assert _value(samples, "task_queue_enqueued_total", actor="obs_flaky") == 1, "its retry is not recounted"
    assert _value(samples, "task_queue_enqueued_total", actor="obs_idle") == 7, "a delayed one counts once"
    assert _value(samples, "task_queue_failed_total", actor="obs_fail", reason="ValueError") == 3
    assert _value(samples, "task_queue_dlq_total", actor="obs_fail") == 3
    assert _value(samples, "task_queue_failed_total", actor="obs_flaky", reason="RuntimeError") == 1
    assert _value(samples, "task_queue_retried_total", actor="obs_flaky") == 1
    assert _value(samples, "task_queue_completed_total", actor="obs_flaky") == 1
    assert _value(samples, "task_queue_in_progress") == 0
    assert _value(samples, "task_queue_worker_processes") == 2
    assert _value(samples, "task_queue_workers_alive") == 2

    assert len(_counting_pids(settings)) == 2, "both worker processes counted"

    assert _value(samples, "task_queue_depth_current", queue=IDLE_QUEUE, state="ready") == 6, "all lanes"
    assert client.llen(f"{ns}:{IDLE_QUEUE}") == 4 and client.llen(f"{ns}:{IDLE_QUEUE}:high") == 2
    assert _value(samples, "task_queue_depth_by_priority", queue=IDLE_QUEUE, priority="normal") == 4
    assert _value(samples, "task_queue_depth_by_priority", queue=IDLE_QUEUE, priority="high") == 2
    assert _value(samples, "task_queue_depth_by_priority", queue=IDLE_QUEUE, priority="low") == 0
    assert _value(samples, "task_queue_depth_current", queue=IDLE_QUEUE, state="delayed") == 1
    assert client.llen(f"{ns}:{dq_name(IDLE_QUEUE)}") == 1
    assert _value(samples, "task_queue_depth_current", queue=QUEUE, state="dead_letter") == 3
    assert _value(samples, "task_queue_depth_current", queue=QUEUE, state="ready") == 0


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_enqueues_of_producer_processes_are_counted_and_served(obs_settings: Settings) -> None:
    """`tradeflow send` and a service that imports actors and sends: both counted on /metrics."""
    port = free_port()
    settings = obs_settings.model_copy(update={"metrics_port": port})
    env = settings_env(settings)
    workers = start_workers(settings, processes=1, queues=("system",))
    try:
        wait_until(lambda: _answers(port), timeout=60, what="/metrics")
        for _ in range(2):
            sent = run_cli("send", "ping", "--args", '["hello"]', "--priority", "high", env=env)
            assert sent.returncode == 0, sent.stderr
        service = (
            "import actors\n"
            "for i in range(5):\n"
            "    actors.system.ping.send_with_options(args=(i,), priority='low')\n"
            "actors.system.ping.send_with_options(args=('later',), delay=60_000)\n"
        )
        subprocess.run([sys.executable, "-c", service], env=env, check=True, timeout=60)
        # the producers exited right after sending: their counts were written at exit
        samples = _scrape(port)
        by_ping = {"queue": "system", "actor": "ping"}
        assert _value(samples, "task_queue_enqueued_total", priority="high", **by_ping) == 2
        assert _value(samples, "task_queue_enqueued_total", priority="low", **by_ping) == 5
        assert _value(samples, "task_queue_enqueued_total", priority="normal", **by_ping) == 1
        wait_until(
            lambda: _value(_scrape(port), "task_queue_completed_total", **by_ping) == 7,
            timeout=60,
            what="the worker ran the 7 due pings",
        )
        # the delayed one is not counted again when it reaches its queue (nor are retries)
        assert _value(_scrape(port), "task_queue_enqueued_total", **by_ping) == 8
    finally:
        stop_workers(workers)


def test_enqueue_counts_survive_a_redis_outage(redis_url: str, namespace: str) -> None:
    """Counts that could not be written are kept and written by the next flush."""
    client = redis.Redis.from_url(redis_url)
    down = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    counts = EnqueueCounts(client=down, key=f"{namespace}:{ENQUEUED_KEY}", interval=3600)
    counts.add("orders", "high", "place")
    counts.add("orders", "high", "place")
    assert counts.flush() is False
    counts.client = client
    counts.add("orders", "low", "place")
    assert counts.flush() is True
    expected = {("orders", "high", "place"): 2, ("orders", "low", "place"): 1}
    assert enqueue_counts(client, namespace) == expected


def test_directory_is_wiped_once_per_master(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"stale")
    claim_directory(directory)
    assert not (directory / "counter_1.db").exists(), "a new master starts from zero"
    (directory / "counter_2.db").write_bytes(b"sibling")
    claim_directory(directory)
    assert (directory / "counter_2.db").exists(), "a sibling worker of the same master keeps it"


def test_processes_killed_without_shutdown_are_marked_dead(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    (directory / f"gauge_livesum_{child}.db").write_bytes(b"")
    (directory / f"gauge_livesum_{os.getpid()}.db").write_bytes(b"")
    (directory / f"counter_{child}.db").write_bytes(b"")
    assert mark_dead_processes(directory) == [child]
    assert not (directory / f"gauge_livesum_{child}.db").exists()
    assert (directory / f"gauge_livesum_{os.getpid()}.db").exists(), "live processes stay"
    assert (directory / f"counter_{child}.db").exists(), "a dead process's counts still count"


def test_use_directory_switches_prometheus_client_to_multiprocess_mode(tmp_path: Path) -> None:
    from prometheus_client import values

    saved = os.environ.get("PROMETHEUS_MULTIPROC_DIR"), values.ValueClass
    try:
        use_directory(tmp_path / "m")
        assert values.ValueClass is not values.MutexValue
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "m")
    finally:
        values.ValueClass = saved[1]
        if saved[0] is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved[0]


def test_metrics_port_in_use_is_reported_not_fatal(obs_settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        workers = start_workers(obs_settings.model_copy(update={"metrics_port": port}), processes=1)
        reported = threading.Event()

        def read_log() -> None:
            for line in workers.stderr:
                if f"Cannot serve metrics on 127.0.0.1:{port}" in line and "TRADEFLOW_METRICS_PORT" in line:
                    reported.set()

        threading.Thread(target=read_log, daemon=True).start()
        try:
            assert reported.wait(60), "the exposition process said nothing about the taken port"
            wait_until(lambda: _alive(obs_settings) == 1, timeout=30, what="worker heartbeat")
            assert workers.poll() is None, "the workers keep running without /metrics"
        finally:
            workers.terminate()
            workers.wait(60)


def _counting_pids(settings: Settings) -> set[str]:
    return {path.name.rsplit("_", 1)[1] for path in settings.effective_metrics_dir.glob("counter_*.db")}


def _settled(samples: dict, completions: int, *, step_enqueues: int) -> bool:
    return (
        _value(samples, "task_queue_completed_total") == completions
        and _value(samples, "task_queue_enqueued_total", actor="obs_step") == step_enqueues
        and _value(samples, "task_queue_dlq_total") == 3
        and _value(samples, "task_queue_in_progress") == 0
    )


def _answers(port: int) -> bool:
    try:
        _scrape(port)
    except OSError:
        return False
    return True


def _alive(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.effective_redis_url)
    return client.zcard(f"{settings.namespace}:__workers__")


def test_scheduler_ticks_are_counted_in_redis(obs_settings: Settings) -> None:
    import pendulum
    from periodiq import cron

    broker = build_broker(obs_settings)
    tick = dramatiq.actor(lambda: None, broker=broker, actor_name="obs_tick", periodic=cron("* * * * *"))
    tick.send_with_options(scheduled_at=str(pendulum.now()))
    tick.send()  # a manual run is no tick
    key = f"{obs_settings.namespace}:{SCHEDULER_KEY}"
    assert broker.client.hget(key, "fired") == b"1", "only the scheduler's stamped send is a tick"
    tick.send_with_options(scheduled_at=str(pendulum.now().subtract(hours=1)))  # too late: skipped
    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()
    try:
        wait_until(lambda: broker.client.hget(key, "skipped") == b"1", what="a skipped tick")
    finally:
        worker.stop()
    ticks = RedisStateCollector(
        client=broker.client, namespace=obs_settings.namespace, queues=[], heartbeat_timeout=60
    ).scheduler_ticks()
    assert ticks["fired"] == 2 and ticks["skipped"] == 1
    assert time.time() - ticks["last_fired"] < 60


def test_worker_presence_beats_and_leaves_on_stop(redis_url: str, namespace: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"{namespace}:__workers__"
    beat(client, namespace, "here:1", {"queues": ["q"], "broker_id": "b1"})
    [first] = read_workers(client, namespace)
    assert (first.id, first.record) == ("here:1", {"queues": ["q"], "broker_id": "b1"})
    beat(client, namespace, "here:1", {"queues": ["q", "r"], "broker_id": "b1"})
    [later] = read_workers(client, namespace, within=60)
    assert later.beat_at >= first.beat_at and later.record["queues"] == ["q", "r"]
    assert workers_alive(client, namespace, timeout=60) == 1
    assert 0 < client.ttl(key) <= 86_400, "the set expires once nobody beats"
    client.zadd(key, {"there:2": time.time() - 120})  # killed two minutes ago: listed, not alive
    assert [p.id for p in read_workers(client, namespace)] == ["here:1", "there:2"]
    assert [p.id for p in read_workers(client, namespace, within=60)] == ["here:1"]
    assert workers_alive(client, namespace, timeout=60) == 1
    leave(client, namespace, "here:1")
    assert [p.id for p in read_workers(client, namespace)] == ["there:2"], "a stopped worker leaves at once"
    assert workers_alive(client, namespace, timeout=60) == 0
