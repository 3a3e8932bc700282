"""Saga engine versus raw Dramatiq, in one run on the same Redis, workers and database.

1. Throughput of 3-step linear workflows versus a raw Dramatiq ``pipeline`` of the same
   no-op actors (target: >= 50% of raw).
2. A 1,000-way fan-out / fan-in: time from the last child's completion to the fan-in step
   starting (target: <= 1 s).

Usage: ``python bench/workflow_throughput.py [--database sqlite|postgresql] [--runs 300]
[--rounds 3] [--producers 4] [--width 1000] [--processes 2] [--threads 8] [--smoke]``.
Needs Redis on 127.0.0.1:6379 (and PostgreSQL on 127.0.0.1:5432 for ``--database postgresql``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench import harness  # noqa: E402

#: PostgreSQL the benchmark makes a scratch schema in.
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

#: Redis the benchmark uses (its keys live under a fresh namespace, deleted afterwards).
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


def database_url(kind: str, folder: str) -> tuple[str, callable]:
    """A scratch database and the function that drops it."""
    if kind == "sqlite":
        return f"sqlite:///{folder}/bench.db", lambda: None
    # The application name marks the benchmark's backends, whose CPU it counts.
    scratch = harness.scratch_schema("bench", url=POSTGRES_URL, query=f"application_name={BACKEND_TAG}")
    return scratch.__enter__(), lambda: scratch.__exit__(None, None, None)


def child_env(settings) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRADEFLOW_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"TRADEFLOW_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


#: ``application_name`` of the benchmark's PostgreSQL connections.
BACKEND_TAG = "tradeflow-bench"


def backend_cpu(db) -> float:
    """CPU seconds used so far by the PostgreSQL backends of the benchmark's connections (those
    alive now: a backend that exited since the last call is not counted); 0 on SQLite."""
    if db.dialect.name != "postgresql":
        return 0.0
    from sqlalchemy import text

    with db.connect() as connection:
        query = text("SELECT pid FROM pg_stat_activity WHERE application_name = :tag")
        pids = connection.execute(query, {"tag": BACKEND_TAG}).scalars().all()
    return sum(tree_cpu(pid) for pid in pids)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its descendants."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        pending += [int(child) for child in children]
    return total


def wait_until(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--runs", type=int, default=300, help="linear workflows (and raw pipelines) per round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/saga rounds")
    parser.add_argument("--producers", type=int, default=4, help="threads sending pipelines / starting runs")
    parser.add_argument("--width", type=int, default=1000, help="fan-out width")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    options = harness.parse(parser)
    if options.smoke:
        options.runs, options.rounds, options.producers, options.width = 5, 1, 2, 5
        options.processes, options.threads = 1, 2
    with harness.supervised(), tempfile.TemporaryDirectory() as folder:
        url, drop = database_url(options.database, folder)
        try:
            run(options, url)
        finally:
            drop()


def run(options, url: str) -> None:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    os.environ.update(
        TRADEFLOW_REDIS_URL=REDIS_URL, TRADEFLOW_NAMESPACE=namespace, TRADEFLOW_DATABASE_URL=url
    )
    from actors.settings import Settings
    from storage import create_db_engine, upgrade

    settings = Settings()
    upgrade(create_db_engine(url))
    import dramatiq

    from bench.workflow_actors import CALLS_KEY, broker
    from saga import Step, Workflow, engine_of
    from storage import get_steps, run_status_counts

    engine = engine_of(broker)
    noop = broker.get_actor("noop")
    calls_key = f"{namespace}:{CALLS_KEY}"

    def calls() -> int:
        return int(broker.client.get(calls_key) or 0)

    command = [sys.executable, "-m", "dramatiq", "bench.workflow_actors", "-p", str(options.processes)]
    command += ["-t", str(options.threads)]
    worker = harness.start(command, env=child_env(settings), cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
    try:
        noop.send()
        wait_until(lambda: calls() == 1, timeout=60, what="the workers to start")
        print(
            f"database={options.database} workers={options.processes}x{options.threads} "
            f"runs={options.runs} rounds={options.rounds} producers={options.producers} width={options.width}"
        )

        linear = Workflow(
            "bench_linear",
            [
                Step("a", "noop", args=(1,)),
                Step("b", "noop", depends_on=["a"]),
                Step("c", "noop", depends_on=["b"]),
            ],
        )
        db = engine.database

        def cpu_parts() -> tuple[float, float, float]:
            # The worker processes, this one (the producers) and, on PostgreSQL, the backends
            # serving them: on a shared machine, CPU per workflow is steadier than rates.
            # Redis is shared with other work and not counted.
            return tree_cpu(worker.pid), time.process_time(), backend_cpu(db)

        def per_run(before: tuple[float, ...], after: tuple[float, ...]) -> list[float]:
            """Milliseconds of CPU per run between two readings: workers, producer, backends."""
            return [(a - b) / options.runs * 1e3 for a, b in zip(after, before, strict=True)]

        def describe(spent: list[float]) -> str:
            workers, producer, backends = spent
            return f"workers {workers:.2f} + producer {producer:.2f} + backends {backends:.2f} ms"

        def raw_round() -> float:
            base = calls()
            started = time.perf_counter()

            def send(index: int) -> None:
                dramatiq.pipeline([noop.message(index), noop.message(), noop.message()], broker=broker).run()

            list(producers.map(send, range(options.runs)))
            wait_until(lambda: calls() - base == 3 * options.runs, timeout=600, what="raw pipelines")
            return options.runs / (time.perf_counter() - started)

        def saga_round() -> tuple[float, float]:
            base = calls()
            started = time.perf_counter()
            run_ids = list(producers.map(lambda _: engine.start(linear), range(options.runs)))
            starting = time.perf_counter() - started
            # Poll as cheaply as the raw side (a Redis GET) until the last steps ran, then
            # until their outcomes are committed: a query over every run id every 10 ms
            # would load the shared CPU that the workers need.
            wait_until(lambda: calls() - base >= 3 * options.runs, timeout=600, what="workflow steps")
            wait_until(
                lambda: run_status_counts(db, run_ids=run_ids).get("succeeded", 0) == options.runs,
                timeout=600,
                what="workflows",
            )
            return options.runs / (time.perf_counter() - started), starting

        # 1. Rounds alternate raw and saga, so that load from elsewhere hits both alike;
        #    both sides send from the same pool of producer threads.
        producers = ThreadPoolExecutor(options.producers)
        # A round of each, not counted: the first round of either side ran 1.3-1.5x slower than
        # the rest (caches, connection pools, first calls), which moved a 3-round median.
        raw_round()
        saga_round()
        ratios, cpu_ratios = [], []
        for number in range(1, options.rounds + 1):
            before = cpu_parts()
            raw_rate = raw_round()
            between = cpu_parts()
            saga_rate, starting = saga_round()
            raw_spent, saga_spent = per_run(before, between), per_run(between, cpu_parts())
            raw_cpu, saga_cpu = sum(raw_spent) / 1e3, sum(saga_spent) / 1e3
            ratios.append(saga_rate / raw_rate)
            cpu_ratios.append(raw_cpu / saga_cpu)
            print(
                f"round {number}: raw pipeline {raw_rate:.0f}/s, saga workflow {saga_rate:.0f}/s"
                f" ({options.runs} x 3 steps each; the {options.runs} starts took {starting:.2f}s)"
                f" -> {ratios[-1]:.0%}; CPU per pipeline {raw_cpu * 1e3:.2f} ms,"
                f" per workflow {saga_cpu * 1e3:.2f} ms -> {cpu_ratios[-1]:.0%}"
            )
            print(f"         CPU per pipeline: {describe(raw_spent)}; per workflow: {describe(saga_spent)}")
        print(f"ratio          : median {statistics.median(ratios):.0%} of raw (target >= 50%)")
        cpu_ratio = statistics.median(cpu_ratios)
        harness.figure("linear.rate_ratio", statistics.median(ratios), "of raw")
        harness.figure("linear.cpu_ratio", cpu_ratio, "raw CPU / saga CPU")
        print(f"CPU ratio      : median {cpu_ratio:.0%} (raw CPU / saga CPU per run; Redis not counted)")

        # 2. fan-out / fan-in
        leaves = [Step(f"leaf{i}", "noop", args=(i,), depends_on=["root"]) for i in range(options.width)]
        fan = Workflow(
            "bench_fan",
            [Step("root", "noop"), *leaves, Step("fan_in", "noop", depends_on=[s.name for s in leaves])],
        )
        started = time.perf_counter()
        run_id = engine.start(fan)
        wait_until(
            lambda: run_status_counts(db, run_ids=[run_id]).get("succeeded") == 1, timeout=600, what="fan-out"
        )
        total = time.perf_counter() - started
        steps = {step.name: step for step in get_steps(db, run_id)}
        last_leaf = max(steps[s.name].finished_at for s in leaves)
        fan_in_start = steps["fan_in"].started_at
        latency = (fan_in_start - last_leaf).total_seconds()
        print(
            f"fan-out/fan-in : {options.width} children in {total:.2f}s ({options.width / total:.0f} steps/s)"
        )
        print(
            f"fan-in latency : {latency * 1000:.0f} ms from the last child's completion"
            " to the fan-in start (target <= 1000 ms)"
        )
        harness.figure("fan.steps_per_s", options.width / total, "steps/s")
        harness.figure("fan.fan_in_latency_ms", latency * 1000, "ms")
    finally:
        harness.finish(worker)
        keys = list(broker.client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            broker.client.delete(*keys)


if __name__ == "__main__":
    main()
