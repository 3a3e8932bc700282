"""Capacity model: Redis commands, bytes and CPU, and PostgreSQL row writes, per message.

For each kind of work, on a private ``redis-server`` (so ``INFO commandstats`` counts only
this run) and a scratch PostgreSQL schema, with one real worker process
(``dramatiq bench.capacity_actors -Q capacity``):

* ``plain job``: a no-op message, audit trail off;
* ``job with audit``: the same with the audit trail (PostgreSQL);
* ``workflow step``: one step of 3-step linear workflows (saga engine, audit on).

It resets the Redis counters, sends the work, waits until it is drained, stops the worker,
and divides: commands (by name), microseconds of Redis CPU in commands (``usec``), network
bytes in and out, Redis memory of a waiting message, PostgreSQL rows inserted, updated or
deleted (``pg_stat_user_tables`` of the schema).  The worker's background commands (idle
polls, heartbeats), measured over an idle interval first, are subtracted.  Then
``redis-benchmark`` on the same server gives the command rate one Redis sustains here, and
the ceiling of one Redis in messages per second follows::

    .venv/bin/python bench/capacity.py [--messages 3000] [--workflows 500] [--smoke]

Needs ``redis-server`` and ``redis-benchmark`` on the PATH and PostgreSQL at
``BENCH_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
``--smoke``: 20 jobs and 3 workflows a scenario, idle counted over 0.5 s, short probes of
redis-benchmark and PostgreSQL; its figures mean nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latency import private_redis  # noqa: E402

from bench import harness  # noqa: E402

#: PostgreSQL the benchmark makes a scratch schema in.
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Sizes:
    """How much each part of the run does; :data:`FULL` and :data:`SMOKE`.

    Parameters:
      messages, workflows: jobs of each job scenario, and 3-step workflows of the workflow one.
      settle: seconds after the warm-up message before the counters are reset.
      idle_seconds: seconds of idle worker over which its background commands are counted.
      benchmark_requests: requests of ``redis-benchmark`` per command it tests.
      pg_batches, pg_commits: transactions of 500 rows, and of one row, of the PostgreSQL probe.
    """

    messages: int = 3_000
    workflows: int = 500
    settle: float = 1.0
    idle_seconds: float = 5.0
    benchmark_requests: int = 200_000
    pg_batches: int = 20
    pg_commits: int = 500


#: The benchmark's sizes; ``--smoke``: tiny, to check the bench runs (its figures mean nothing).
FULL = Sizes()
SMOKE = Sizes(
    messages=20, workflows=3, settle=0.2, idle_seconds=0.5, benchmark_requests=2_000,
    pg_batches=2, pg_commits=20,
)  # fmt: skip

#: Commands of the benchmark itself (reading counters, waiting for the drain), never counted.
OWN_COMMANDS = {"info", "config|resetstat", "config", "hlen", "llen", "ping", "client|setname", "hello"}


@dataclass
class Cost:
    """What one unit of work cost."""

    name: str
    units: int
    commands: Counter
    usec: float
    bytes_in: int
    bytes_out: int
    rows: int
    #: Redis CPU seconds (user + system, every thread) over the work.
    cpu: float = 0.0

    def per_unit(self) -> dict[str, float]:
        return {
            "commands": sum(self.commands.values()) / self.units,
            "usec": self.usec / self.units,
            "bytes": (self.bytes_in + self.bytes_out) / self.units,
            "rows": self.rows / self.units,
            "cpu_us": self.cpu / self.units * 1e6,
            "scripts": self.commands.get("evalsha", 0) / self.units,
        }


def command_stats(client: redis.Redis) -> tuple[Counter, float]:
    calls, usec = Counter(), 0.0
    for name, stats in client.info("commandstats").items():
        command = name.removeprefix("cmdstat_")
        if command in OWN_COMMANDS:
            continue
        calls[command] += stats["calls"]
        usec += stats["usec"]
    return calls, usec


def net_bytes(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("stats")
    return stats["total_net_input_bytes"], stats["total_net_output_bytes"]


def redis_cpu(client: redis.Redis) -> float:
    stats = client.info("cpu")
    return stats["used_cpu_user"] + stats["used_cpu_sys"]


def row_writes(engine, schema: str) -> int:
    from sqlalchemy import text

    with engine.connect() as connection:
        value = connection.execute(
            text(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables"
                " WHERE schemaname = :schema"
            ),
            {"schema": schema},
        ).scalar()
    return int(value)


class Run:
    """One scenario: its settings, its worker process, its producer broker."""

    def __init__(self, *, redis_url: str, database_url: str, audit: bool, metrics_dir: Path) -> None:
        from actors.settings import Settings

        self.settings = Settings(
            redis_url=redis_url,
            namespace=f"capacity-{uuid.uuid4().hex[:6]}",
            database_url=database_url,
            audit_enabled=audit,
            metrics_dir=metrics_dir,
            metrics_port=0,
        )
        self.client = redis.Redis.from_url(redis_url)
        self.worker: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        import json

        env = {key: value for key, value in os.environ.items() if not key.startswith("TRADEFLOW_")}
        for name, value in self.settings.model_dump().items():
            if value is not None:
                env[f"TRADEFLOW_{name.upper()}"] = (
                    json.dumps(value) if isinstance(value, dict) else str(value)
                )
        env["PYTHONPATH"] = str(ROOT)
        return env

    def start_worker(self) -> None:
        command = [sys.executable, "-m", "dramatiq", "bench.capacity_actors", "-p", "1", "-t", "8"]
        command += ["-Q", "capacity"]
        self.worker = harness.start(command, env=self.env(), cwd=ROOT, stderr=subprocess.DEVNULL)

    def stop_worker(self) -> None:
        harness.finish(self.worker)

    def drained(self) -> bool:
        namespace = self.settings.namespace
        return self.client.hlen(f"{namespace}:capacity.msgs") == 0

    def wait_drained(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not self.drained():
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not drain the queue")
            time.sleep(0.05)


def measure(
    name: str, run: Run, units: int, send, *, engine, schema: str, disposables, sizes: Sizes
) -> tuple[Cost, Cost]:
    """Cost of ``send()`` (``units`` of work) and the worker's background commands per second."""
    client = run.client
    run.start_worker()
    send(1)  # warm-up: the worker is up, scripts loaded, connections open
    run.wait_drained(120)
    time.sleep(sizes.settle)
    client.config_resetstat()
    cpu_before = redis_cpu(client)
    time.sleep(sizes.idle_seconds)
    idle_calls, idle_usec = command_stats(client)
    idle_in, idle_out = net_bytes(client)
    idle = Cost("idle", 1, idle_calls, idle_usec, idle_in, idle_out, 0, redis_cpu(client) - cpu_before)

    client.config_resetstat()
    rows_before = row_writes(engine, schema)
    cpu_before = redis_cpu(client)
    started = time.monotonic()
    send(units)
    run.wait_drained()
    elapsed = time.monotonic() - started
    calls, usec = command_stats(client)
    bytes_in, bytes_out = net_bytes(client)
    cpu = redis_cpu(client) - cpu_before
    run.stop_worker()
    for dispose in disposables:
        dispose()  # closed connections flush their backends' statistics
    time.sleep(0.5)
    rows = row_writes(engine, schema) - rows_before
    scale = elapsed / sizes.idle_seconds  # background commands during the run, subtracted
    background = Counter({command: round(count * scale) for command, count in idle_calls.items()})
    calls.subtract(background)
    calls = +calls
    cost = Cost(
        name,
        units,
        calls,
        usec - idle_usec * scale,
        bytes_in - int(idle_in * scale),
        bytes_out - int(idle_out * scale),
        rows,
        cpu - idle.cpu * scale,
    )
    return cost, idle


def postgres_rates(engine, schema: str, sizes: Sizes) -> tuple[float, float]:
    """Rows per second PostgreSQL takes here in batches of 500 per transaction (how the audit
    writer commits), and transactions per second of one small row each (fsync per commit)."""
    from sqlalchemy import text

    table = f"{schema}.capacity_probe"
    payload = "x" * 200
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, payload text)"))
    rows = [{"payload": payload}] * 500
    started = time.perf_counter()
    for _ in range(sizes.pg_batches):
        with engine.begin() as connection:
            connection.execute(text(f"INSERT INTO {table} (payload) VALUES (:payload)"), rows)
    batched = sizes.pg_batches * len(rows) / (time.perf_counter() - started)
    started = time.perf_counter()
    with engine.connect() as connection:
        for _ in range(sizes.pg_commits):
            connection.execute(text(f"INSERT INTO {table} (payload) VALUES (:payload)"), rows[0])
            connection.commit()
    single = sizes.pg_commits / (time.perf_counter() - started)
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE {table}"))
    return batched, single


def waiting_message_bytes(run: Run, send, count: int) -> float:
    """Redis memory a waiting (not yet fetched) message takes."""
    before = run.client.info("memory")["used_memory"]
    send(count)
    after = run.client.info("memory")["used_memory"]
    run.client.delete(*[key for key in run.client.scan_iter(match=f"{run.settings.namespace}:*")])
    return (after - before) / count


def redis_benchmark(port: int, requests: int) -> tuple[dict[str, float], float]:
    """Requests per second ``redis-benchmark`` gets from this server (50 clients, no pipelining),
    and the Redis CPU seconds one of those requests costs."""
    client = redis.Redis(port=port)
    cpu_before, calls_before = redis_cpu(client), client.info("stats")["total_commands_processed"]
    command = ["redis-benchmark", "-p", str(port), "-q", "-n", str(requests), "-c", "50"]
    process = harness.start([*command, "-t", "set,lpush,rpop,hset"], stdout=subprocess.PIPE, text=True)
    output, _ = process.communicate()
    if harness.finish(process) != 0:
        raise RuntimeError(f"redis-benchmark exited with {process.returncode}")
    rates = {}
    for line in output.replace("\r", "\n").splitlines():
        match = re.match(r"^(\w+)(?: \([^)]*\))?: ([\d.]+) requests per second", line.strip())
        if match:
            rates[match.group(1)] = float(match.group(2))
    requests = client.info("stats")["total_commands_processed"] - calls_before
    return rates, (redis_cpu(client) - cpu_before) / requests


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=FULL.messages, help="jobs of each job scenario")
    parser.add_argument("--workflows", type=int, default=FULL.workflows, help="3-step workflows")
    args = harness.parse(parser)
    sizes = SMOKE if args.smoke else Sizes(messages=args.messages, workflows=args.workflows)

    from sqlalchemy import create_engine, text

    schema = f"capacity_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    database_url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    try:
        # The worker stopped before the schema is dropped: its connections would hold the drop.
        with (
            harness.supervised(),
            private_redis() as redis_url,
            tempfile.TemporaryDirectory(prefix="tradeflow-capacity-") as workdir,
        ):
            report(sizes, redis_url, database_url, admin, schema, Path(workdir))
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def report(sizes: Sizes, redis_url: str, database_url: str, admin, schema: str, workdir: Path) -> None:
    import dramatiq
    from dramatiq.message import Message

    from actors import audit_writer_of, build_broker
    from saga import Step, Workflow, engine_of
    from storage import create_db_engine, upgrade

    migrations = create_db_engine(database_url)
    upgrade(migrations)
    migrations.dispose()
    costs, idles = [], []

    def producer(run: Run):
        broker = build_broker(run.settings)
        dramatiq.actor(lambda *args: None, broker=broker, queue_name="capacity", actor_name="capacity_noop")
        writer = audit_writer_of(broker)
        disposables = []
        if writer is not None:
            disposables.append(lambda: (writer.flush(60), writer.engine.dispose()))
        disposables.append(lambda: engine_of(broker).database.dispose())
        return broker, disposables

    def sender(broker):
        def send(count: int) -> None:
            for index in range(count):
                broker.enqueue(
                    Message(
                        queue_name="capacity",
                        actor_name="capacity_noop",
                        args=(index,),
                        kwargs={},
                        options={},
                    )
                )

        return send

    for name, audit in (("plain job", False), ("job with audit", True)):
        run = Run(redis_url=redis_url, database_url=database_url, audit=audit, metrics_dir=workdir)
        broker, disposables = producer(run)
        cost, idle = measure(
            name,
            run,
            sizes.messages,
            sender(broker),
            engine=admin,
            schema=schema,
            disposables=disposables,
            sizes=sizes,
        )
        costs.append(cost)
        idles.append(idle)
        if not audit:
            memory = waiting_message_bytes(run, sender(broker), sizes.messages)

    run = Run(redis_url=redis_url, database_url=database_url, audit=True, metrics_dir=workdir)
    broker, disposables = producer(run)
    engine = engine_of(broker)
    linear = Workflow(
        "capacity_linear",
        [
            Step("a", "capacity_noop", args=(1,)),
            Step("b", "capacity_noop", depends_on=["a"]),
            Step("c", "capacity_noop", depends_on=["b"]),
        ],
    )

    def start_workflows(count: int) -> None:
        runs = [engine.start(linear) for _ in range(count)]
        deadline = time.monotonic() + 600
        from storage import run_status_counts

        while run_status_counts(engine.database).get("succeeded", 0) < count + started[0]:
            if time.monotonic() > deadline:
                raise TimeoutError("workflows did not finish")
            time.sleep(0.1)
        started[0] += count
        del runs

    started = [0]
    cost, idle = measure(
        "workflow step",
        run,
        sizes.workflows,
        start_workflows,
        engine=admin,
        schema=schema,
        disposables=disposables,
        sizes=sizes,
    )
    cost.units = 3 * sizes.workflows  # per step
    costs.append(cost)
    idles.append(idle)

    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    bench, cpu_per_request = redis_benchmark(port, sizes.benchmark_requests)
    batched_rows, single_commits = postgres_rates(admin, schema, sizes)
    version = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    print(f"Redis {version}, one worker process x 8 threads")
    print(
        "redis-benchmark (50 clients, no pipelining): "
        + ", ".join(f"{k} {v:,.0f}/s" for k, v in bench.items())
    )
    print(f"waiting message in Redis: {memory:,.0f} bytes of memory")
    print(
        f"PostgreSQL: {batched_rows:,.0f} rows/s in transactions of 500 rows,"
        f" {single_commits:,.0f} transactions/s of one row"
    )
    print()
    print(
        f"Redis CPU per redis-benchmark request: {cpu_per_request * 1e6:.1f} µs"
        f" (one busy core: {1 / cpu_per_request:,.0f} requests/s)"
    )
    print()
    header = ("work", "scripts", "commands", "CPU µs", "bytes", "PG rows", "Redis max", "PG max")
    print("".join(f"{h:>12}" if i else f"{h:<16}" for i, h in enumerate(header)))
    ceilings = {}
    for cost in costs:
        unit = cost.per_unit()
        # one Redis main thread: one core (a run too short to outweigh the idle subtracted has none)
        redis_max = 1e6 / unit["cpu_us"] if unit["cpu_us"] > 0 else None
        # rows batched as the audit writer and the saga's group commit do
        # (a few hundredths of a row: background writes of the run, not the unit's)
        pg_max = batched_rows / unit["rows"] if unit["rows"] >= 0.05 else None
        ceilings[cost.name] = redis_max, pg_max
        redis_shown = f"{redis_max:>10,.0f}/s" if redis_max is not None else f"{'-':>12}"
        pg_shown = f"{pg_max:>10,.0f}/s" if pg_max is not None else f"{'-':>12}"
        print(
            f"{cost.name:<16}{unit['scripts']:>12.2f}{unit['commands']:>12.2f}"
            f"{unit['cpu_us']:>12.1f}{unit['bytes']:>12.0f}{unit['rows']:>12.2f}{redis_shown}{pg_shown}"
        )
    for cost in costs:
        top = ", ".join(f"{name} {count / cost.units:.2f}" for name, count in cost.commands.most_common(8))
        print(f"  {cost.name}: {top}")
    idle = idles[0]
    print(
        "idle worker process (background, subtracted above): "
        f"{sum(idle.commands.values()) / sizes.idle_seconds:.1f} commands/s"
    )
    print(
        "scripts: dispatch-script calls (evalsha) per unit; commands: every command Redis ran, those"
        " inside scripts too; CPU µs: Redis process CPU (network I/O included); Redis max: units per"
        " second at one fully busy Redis core (1e6 / CPU µs); PG max: batched rows/s / rows per unit"
    )
    for cost in costs:
        name, unit = harness.slug(cost.name), cost.per_unit()
        harness.figure(f"{name}.scripts", unit["scripts"], "calls/unit")
        harness.figure(f"{name}.commands", unit["commands"], "commands/unit")
        harness.figure(f"{name}.redis_cpu_us", unit["cpu_us"], "µs/unit")
        harness.figure(f"{name}.bytes", unit["bytes"], "bytes/unit")
        harness.figure(f"{name}.pg_rows", unit["rows"], "rows/unit")
        redis_max, pg_max = ceilings[cost.name]
        if redis_max is not None:
            harness.figure(f"{name}.redis_max_per_s", redis_max, "units/s")
        if pg_max is not None:
            harness.figure(f"{name}.pg_max_per_s", pg_max, "units/s")
    harness.figure("idle.commands_per_s", sum(idle.commands.values()) / sizes.idle_seconds, "commands/s")
    for command, requests in bench.items():
        harness.figure(f"redis_benchmark.{harness.slug(command.lower())}_per_s", requests, "requests/s")
    harness.figure("redis_benchmark.cpu_us_per_request", cpu_per_request * 1e6, "µs")
    harness.figure("waiting_message.bytes", memory, "bytes")
    harness.figure("postgres.batched_rows_per_s", batched_rows, "rows/s")
    harness.figure("postgres.single_commits_per_s", single_commits, "transactions/s")


if __name__ == "__main__":
    main()
