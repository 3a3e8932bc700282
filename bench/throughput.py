"""No-op drain throughput and idle enqueue->start latency: raw Dramatiq vs the tradeflow stack.

Both run in one invocation, on the same Redis, with the same worker processes x threads:

    .venv/bin/python bench/throughput.py [--messages 20000] [--processes 2] [--threads 8] [--smoke]

The queue is filled first, then workers start; the clock runs from the first
message taken to the last one acked (queue empty and no unacked message).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402


@dataclass
class Side:
    name: str
    module: str
    env: dict[str, str]
    namespace: str
    #: The checkout whose code the side's processes run (another one: an A/B of two commits).
    root: Path = ROOT


def make_sides(redis_url: str, database_urls: list[str]) -> list[Side]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEFLOW_", "BENCH_"))}
    base.update(PYTHONPATH=str(ROOT), BENCH_REDIS_URL=redis_url)
    sides = []
    namespace = f"bench-raw-{uuid.uuid4().hex[:6]}"
    sides.append(Side("raw dramatiq", "bench.actors_raw", {**base, "BENCH_NAMESPACE": namespace}, namespace))
    for url in database_urls:
        namespace = f"bench-tf-{uuid.uuid4().hex[:6]}"
        env = {
            **base,
            "TRADEFLOW_REDIS_URL": redis_url,
            "TRADEFLOW_NAMESPACE": namespace,
            "TRADEFLOW_DATABASE_URL": url,
        }
        label = "tradeflow (" + url.split(":", 1)[0].split("+")[0] + " audit)"
        sides.append(Side(label, "bench.actors_tradeflow", env, namespace))
    for label, extra in VARIANTS:
        namespace = f"bench-tf-{uuid.uuid4().hex[:6]}"
        env = {
            **base,
            "TRADEFLOW_REDIS_URL": redis_url,
            "TRADEFLOW_NAMESPACE": namespace,
            "TRADEFLOW_DATABASE_URL": database_urls[0],
            **extra,
        }
        sides.append(Side(label, "bench.actors_tradeflow", env, namespace))
    return sides


VARIANTS = [
    (n, dict(kv.split("=", 1) for kv in v.split(",")))
    for n, v in (item.split(":", 1) for item in os.environ.get("BENCH_VARIANTS", "").split(";") if item)
]


def prepare_database(url: str) -> None:
    from storage import create_db_engine, upgrade

    upgrade(create_db_engine(url))


def fill(side: Side, count: int) -> None:
    """Enqueue ``count`` no-op messages from a child process using the side's own broker."""
    script = (
        "import importlib, sys; m = importlib.import_module(sys.argv[1]);"
        "b = m.broker; n = int(sys.argv[2]);"
        "[m.noop.send() for _ in range(n)];"
        "from actors import audit_writer_of; w = audit_writer_of(b) if 'actors' in sys.modules else None;"
        "w and w.flush(120)"
    )
    subprocess.run(
        [sys.executable, "-c", script, side.module, str(count)], env=side.env, check=True, cwd=ROOT
    )


def unacked(client: redis.Redis, namespace: str) -> int:
    return sum(client.scard(key) for key in client.scan_iter(match=f"{namespace}:__acks__.*", count=1000))


def start_workers(side: Side, processes: int, threads: int) -> subprocess.Popen:
    """``dramatiq`` worker processes of ``side``, stopped by :func:`stop_workers` (or, should the
    bench fail or be interrupted, by :func:`bench.harness.supervised`)."""
    return harness.start(
        [sys.executable, "-m", "dramatiq", side.module, "-p", str(processes), "-t", str(threads)],
        env=side.env,
        cwd=side.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_workers(process: subprocess.Popen) -> None:
    harness.finish(process)


def drain(side: Side, client: redis.Redis, count: int, processes: int, threads: int) -> float:
    fill(side, count)
    queue = f"{side.namespace}:bench"
    assert client.llen(queue) == count, client.llen(queue)
    workers = start_workers(side, processes, threads)
    try:
        while client.llen(queue) == count:
            time.sleep(0.001)
        started = time.perf_counter()
        while client.llen(queue) or unacked(client, side.namespace):
            time.sleep(0.005)
        return count / (time.perf_counter() - started)
    finally:
        stop_workers(workers)


def latency(
    side: Side, client: redis.Redis, samples: int, gap: float, processes: int, threads: int, idle: float = 3.0
) -> list[float]:
    key = f"{side.namespace}:latency"
    script = (
        "import importlib, sys, time; m = importlib.import_module(sys.argv[1]);"
        "n, gap, key = int(sys.argv[2]), float(sys.argv[3]), sys.argv[4];"
        "[(m.latency_probe.send(time.time(), key), time.sleep(gap)) for _ in range(n)]"
    )
    workers = start_workers(side, processes, threads)
    try:
        time.sleep(idle)  # boot, then go idle
        subprocess.run(
            [sys.executable, "-c", script, side.module, str(samples), str(gap), key],
            env=side.env,
            check=True,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 30
        while client.llen(key) < samples and time.monotonic() < deadline:
            time.sleep(0.05)
        return sorted(float(v) for v in client.lrange(key, 0, -1))
    finally:
        stop_workers(workers)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def cleanup(client: redis.Redis, namespace: str) -> None:
    for pattern in (f"{namespace}*",):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)


def main() -> None:
    parser = harness.parser(__doc__, raw=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument(
        "--database-url",
        action="append",
        help="audit database(s); default: SQLite and a scratch schema of PostgreSQL (dropped afterwards)",
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="drain runs per side; the median is reported")
    parser.add_argument("--latency-samples", type=int, default=40)
    parser.add_argument("--latency-gap", type=float, default=0.25, help="seconds between latency probes")
    args = harness.parse(parser)
    idle = 3.0
    tmp = tempfile.mkdtemp(prefix="tradeflow-bench-")
    if args.smoke:  # SQLite only, unless asked: PostgreSQL runs the same code
        args.messages, args.processes, args.threads, args.rounds = 100, 1, 2, 1
        args.latency_samples, args.latency_gap, idle = 3, 0.05, 0.5
    scratch = ExitStack()
    database_urls = args.database_url or [f"sqlite:///{tmp}/bench.db"]
    if not args.database_url and not args.smoke:
        database_urls.append(scratch.enter_context(harness.scratch_schema("throughput")))
    for url in database_urls:
        prepare_database(url)
    client = redis.Redis.from_url(args.redis_url)
    sides = make_sides(args.redis_url, database_urls)
    print(
        f"{args.messages} no-op messages, {args.processes} processes x {args.threads} threads, "
        f"median of {args.rounds} rounds, Redis {args.redis_url}"
    )
    results: dict[str, tuple[float, list[float]]] = {}
    try:
        with harness.supervised():
            for side in sides:
                rates = [
                    drain(side, client, args.messages, args.processes, args.threads)
                    for _ in range(args.rounds)
                ]
                lat = latency(
                    side, client, args.latency_samples, args.latency_gap, args.processes, args.threads, idle
                )
                results[side.name] = (statistics.median(rates), lat)
                shown = ", ".join(f"{rate:.0f}" for rate in rates)
                print(
                    f"  {side.name:32s} {statistics.median(rates):8.0f} msg/s  (rounds: {shown});"
                    f"  idle latency p50 {percentile(lat, 0.5):6.1f} ms  p99 {percentile(lat, 0.99):6.1f} ms",
                    flush=True,
                )
    finally:
        for side in sides:
            cleanup(client, side.namespace)
        scratch.close()  # the workers are stopped: nothing holds the schema
    raw_rate = results[sides[0].name][0]
    for side in sides[1:]:
        print(f"ratio {side.name} / raw dramatiq throughput: {results[side.name][0] / raw_rate:.2f}")
    for side in sides:
        rate, lat = results[side.name]
        name = harness.slug(side.name)
        harness.figure(f"{name}.drain_per_s", rate, "msg/s")
        harness.figure(f"{name}.latency_p50_ms", percentile(lat, 0.5), "ms")
        harness.figure(f"{name}.latency_p99_ms", percentile(lat, 0.99), "ms")


if __name__ == "__main__":
    main()
