"""Latency, idle load, enqueue rate and drain throughput: tradeflow's broker vs stock Dramatiq.

Runs both side by side on a private ``redis-server`` (so ``INFO commandstats``
counts only this benchmark), with real worker processes
(``dramatiq actors latency_actors``, 2 processes x 8 threads):

* sparse latency: messages sent 250 ms apart, send to start, p50 / p99;
* first message after 2 s idle (median of 5);
* idle Redis load: commands per second while the workers wait for work;
* enqueue rate from one producer, audit on (SQLite): single sends and
  ``send_many``, as returned and until the audit rows are committed, the
  brokers alternating, median of 3 rounds;
* drain throughput: a backlog of no-op messages, audit off (tradeflow also
  with the backlog spread over the four priority lanes), brokers alternating,
  median of 3 rounds;
* how long a critical message waits behind 2,000 low 20 ms jobs.

Usage: ``python bench/latency.py [--sparse 40] [--drain 20000] [--rounds 3] [--smoke]``.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from actors import audit_writer_of, build_broker  # noqa: E402
from actors.broker import LANES, send_many  # noqa: E402
from actors.settings import Settings  # noqa: E402
from api.stack import worker_command  # noqa: E402
from bench import harness  # noqa: E402
from bench.bench_actors import declare_latency  # noqa: E402
from storage import create_db_engine, upgrade  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """How much each part of the run does; :data:`FULL` and :data:`SMOKE`.

    Parameters:
      processes, threads: worker processes and threads per process.
      settle, idle_window: seconds the workers idle before the idle load is counted, and counted.
      idle_gap, idle_probes: seconds idle before each first message, and how many are timed.
      sparse_gap: seconds between the sparse messages.
      single_sends, send_many: messages of each enqueue test.
      backlog, job_seconds: low jobs queued ahead of the critical message, and how long each runs.
    """

    processes: int = 2
    threads: int = 8
    settle: float = 3.0
    idle_window: float = 5.0
    idle_gap: float = 2.0
    idle_probes: int = 5
    sparse_gap: float = 0.25
    single_sends: int = 3_000
    send_many: int = 20_000
    backlog: int = 2_000
    job_seconds: float = 0.02


#: The benchmark's sizes; ``--smoke``: tiny, to check the bench runs (its figures mean nothing).
FULL = Sizes()
SMOKE = Sizes(
    processes=1, threads=2, settle=0.3, idle_window=0.5, idle_gap=0.3, idle_probes=1, sparse_gap=0.05,
    single_sends=50, send_many=200, backlog=20,
)  # fmt: skip

#: Brokers compared, by the value of ``stock_broker``.
BROKERS = {"tradeflow": False, "dramatiq": True}


@contextmanager
def private_redis():
    """A ``redis-server`` of the benchmark's own on a free port, for the block: its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = harness.start(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        harness.finish(server)


def settings_for(url: str, name: str, database: Path, *, audit: bool) -> Settings:
    return Settings(
        redis_url=url,
        namespace=f"bench-{name}",
        database_url=f"sqlite:///{database}",
        stock_broker=BROKERS[name],
        audit_enabled=audit,
    )


def env_for(settings: Settings) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRADEFLOW_")}
    for key, value in settings.model_dump().items():
        if value is not None:
            env[f"TRADEFLOW_{key.upper()}"] = str(value)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "bench")])
    return env


def producer(settings: Settings):
    """This process's broker for ``settings`` and the bench actors declared on it."""
    broker = build_broker(settings)
    return broker, *declare_latency(broker)


@contextmanager
def workers(settings: Settings, sizes: Sizes):
    process = harness.start(
        worker_command(processes=sizes.processes, threads=sizes.threads, modules=["latency_actors"]),
        env=env_for(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        yield process
    finally:
        harness.finish(process)


def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(0.005)


def total_commands(client: redis.Redis) -> int:
    return sum(stats["calls"] for stats in client.info("commandstats").values())


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(url: str, name: str, workdir: Path, *, sparse: int, sizes: Sizes) -> dict[str, float]:
    database = workdir / f"{name}.db"
    engine = create_db_engine(f"sqlite:///{database}")
    upgrade(engine)
    engine.dispose()
    settings = settings_for(url, name, database, audit=True)
    broker, stamp, _, _ = producer(settings)
    client = redis.Redis.from_url(url)
    latency_key = f"{settings.namespace}:latency"
    figures: dict[str, float] = {}

    with workers(settings, sizes):
        stamp.send(time.time())
        wait_for(lambda: client.llen(latency_key) == 1, 60)
        client.delete(latency_key)

        time.sleep(sizes.settle)
        before, started = total_commands(client), time.monotonic()
        time.sleep(sizes.idle_window)
        figures["idle_cmds_per_s"] = (total_commands(client) - before - 1) / (time.monotonic() - started)

        for _ in range(sparse):
            stamp.send(time.time())
            time.sleep(sizes.sparse_gap)
        wait_for(lambda: client.llen(latency_key) == sparse, 30)
        values = [float(v) for v in client.lrange(latency_key, 0, -1)]
        figures["sparse_p50_ms"], figures["sparse_p99_ms"] = percentile(values, 0.5), percentile(values, 0.99)
        client.delete(latency_key)

        for index in range(sizes.idle_probes):
            time.sleep(sizes.idle_gap)
            stamp.send(time.time())
            wait_for(lambda index=index: client.llen(latency_key) == index + 1, 30)
        figures["first_after_idle_ms"] = statistics.median(
            float(v) for v in client.lrange(latency_key, 0, -1)
        )

    broker.close()

    settings = settings_for(url, name, database, audit=False)
    broker, stamp, _, busy = producer(settings)
    figures["critical_wait_ms"] = critical_wait(settings, stamp, busy, sizes)
    broker.close()
    return figures


def measure_enqueue(url: str, workdir: Path, *, rounds: int, sizes: Sizes) -> dict[str, dict[str, float]]:
    """Enqueue rates from one producer with audit on, brokers alternating, median of ``rounds``."""
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in BROKERS}
    producers = {}
    for name in BROKERS:
        settings = settings_for(url, name, workdir / f"{name}.db", audit=True)
        producers[name] = producer(settings)
    for _ in range(rounds):
        for name, (broker, _, noop, _) in producers.items():
            writer = audit_writer_of(broker)
            for key, count, send in (
                ("single_sends_per_s", sizes.single_sends, single_sends),
                ("send_many_per_s", sizes.send_many, send_many),
            ):
                started = time.perf_counter()
                send(noop, [(index,) for index in range(count)])
                sent = time.perf_counter()
                writer.flush(120)
                committed = time.perf_counter()
                samples[name].setdefault(key, []).append(count / (sent - started))
                samples[name].setdefault(key + "_audited", []).append(count / (committed - started))
                broker.flush_all()
    for broker, *_ in producers.values():
        broker.close()
    return {
        name: {key: statistics.median(values) for key, values in figures.items()}
        for name, figures in samples.items()
    }


def single_sends(actor, calls) -> None:
    for args in calls:
        actor.send(*args)


def measure_drain(
    url: str, workdir: Path, *, rounds: int, count: int, sizes: Sizes
) -> dict[str, dict[str, float]]:
    """Drain rates, audit off, brokers alternating, median of ``rounds``; tradeflow also over 4 lanes."""
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in BROKERS}
    lanes = [{"priority": lane} for lane in LANES]
    for _ in range(rounds):
        for name in BROKERS:
            settings = settings_for(url, name, workdir / f"{name}.db", audit=False)
            broker, _, noop, _ = producer(settings)
            samples[name].setdefault("drain_per_s", []).append(drain_rate(settings, noop, [{}], count, sizes))
            if name == "tradeflow":
                samples[name].setdefault("drain_lanes_per_s", []).append(
                    drain_rate(settings, noop, lanes, count, sizes)
                )
            broker.close()
    return {
        name: {key: statistics.median(values) for key, values in figures.items()}
        for name, figures in samples.items()
    }


def drain_rate(settings: Settings, noop, options: list[dict], count: int, sizes: Sizes) -> float:
    """Messages/s with which the workers empty a backlog of ``count`` no-ops spread over ``options``."""
    client = redis.Redis.from_url(settings.effective_redis_url)
    done_key = f"{settings.namespace}:done"
    client.delete(done_key)
    for extra in options:  # one by one on stock Dramatiq
        send_many(noop, [(index,) for index in range(count // len(options))], **extra)
    total = count // len(options) * len(options)
    with workers(settings, sizes):
        wait_for(lambda: client.get(done_key) is not None, 60)
        started = time.monotonic()
        first = int(client.get(done_key))
        wait_for(lambda: int(client.get(done_key) or 0) >= total, 300)
        return (total - first) / (time.monotonic() - started)


def critical_wait(settings: Settings, stamp, busy, sizes: Sizes) -> float:
    """Milliseconds a critical message waits behind a backlog of low jobs on busy workers."""
    client = redis.Redis.from_url(settings.effective_redis_url)
    latency_key, busy_key = f"{settings.namespace}:latency", f"{settings.namespace}:busy"
    client.delete(latency_key, busy_key)
    send_many(busy, [(sizes.job_seconds,)] * sizes.backlog, priority="low")
    with workers(settings, sizes):
        # every worker thread busy (and, with the default prefetch, as many more taken)
        wait_for(lambda: int(client.get(busy_key) or 0) >= 2 * sizes.processes * sizes.threads, 60)
        stamp.send_with_options(args=(time.time(),), priority="critical")
        wait_for(lambda: client.llen(latency_key) == 1, 120)
        wait = float(client.lindex(latency_key, 0))
    stamp.broker.flush_all()
    return wait


#: Report rows: label, figure key, unit, whether higher is better.
ROWS = [
    ("sparse latency p50 (ms)", "sparse_p50_ms", "ms", False),
    ("sparse latency p99 (ms)", "sparse_p99_ms", "ms", False),
    ("first message after {idle_gap:g} s idle (ms)", "first_after_idle_ms", "ms", False),
    ("idle Redis commands/s", "idle_cmds_per_s", "commands/s", False),
    ("enqueue, single sends (msg/s)", "single_sends_per_s", "msg/s", True),
    ("enqueue, send_many (msg/s)", "send_many_per_s", "msg/s", True),
    ("enqueue + audit rows committed, single sends", "single_sends_per_s_audited", "msg/s", True),
    ("enqueue + audit rows committed, send_many", "send_many_per_s_audited", "msg/s", True),
    ("drain throughput (msg/s, audit off)", "drain_per_s", "msg/s", True),
    ("critical behind {backlog} low {job_ms:.0f} ms jobs (ms)", "critical_wait_ms", "ms", False),
]


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--sparse", type=int, default=40, help="sparse messages per broker")
    parser.add_argument("--drain", type=int, default=20_000, help="backlog size of the drain test")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the enqueue and drain tests")
    args = harness.parse(parser)
    sizes = FULL
    if args.smoke:
        sizes, args.sparse, args.drain, args.rounds = SMOKE, 3, 200, 1
    with harness.supervised(), private_redis() as url, tempfile.TemporaryDirectory() as workdir:
        results = {
            name: measure(url, name, Path(workdir), sparse=args.sparse, sizes=sizes) for name in BROKERS
        }
        enqueue = measure_enqueue(url, Path(workdir), rounds=args.rounds, sizes=sizes)
        drain = measure_drain(url, Path(workdir), rounds=args.rounds, count=args.drain, sizes=sizes)
        for name in BROKERS:
            results[name].update(enqueue[name], **drain[name])
    report(results, sizes)


def report(results: dict[str, dict[str, float]], sizes: Sizes) -> None:
    ours, stock = results["tradeflow"], results["dramatiq"]
    print(f"{sizes.processes} worker processes x {sizes.threads} threads")
    print(f"{'':44} {'tradeflow':>12} {'dramatiq':>12} {'ratio':>10}")
    for template, key, _, higher_is_better in ROWS:
        label = template.format(
            idle_gap=sizes.idle_gap, backlog=sizes.backlog, job_ms=sizes.job_seconds * 1000
        )
        ratio = ours[key] / stock[key] if higher_is_better else stock[key] / max(ours[key], 1e-9)
        print(f"{label:44} {ours[key]:12.1f} {stock[key]:12.1f} {ratio:9.1f}x")
    ratio = ours["drain_lanes_per_s"] / stock["drain_per_s"]
    print(
        f"{'drain, spread over 4 lanes (msg/s)':44} {ours['drain_lanes_per_s']:12.1f} {'-':>12} {ratio:9.1f}x"
    )
    print("(ratio: how many times better tradeflow is; the lanes row is compared with stock plain drain;")
    print(" send_many on stock Dramatiq is its fallback, one send per message; audit on for enqueue rows)")
    units = {key: unit for _, key, unit, _ in ROWS} | {"drain_lanes_per_s": "msg/s"}
    for name, figures in results.items():
        for key, value in figures.items():
            harness.figure(f"{name}.{key}", value, units[key])


if __name__ == "__main__":
    main()
