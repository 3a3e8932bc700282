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

    .venv/bin/python bench/capacity.py [--messages 3000] [--workflows 500]

Needs ``redis-server`` and ``redis-benchmark`` on the PATH and PostgreSQL at
``BENCH_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
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

#: PostgreSQL the benchmark makes a scratch schema in.
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

#: Seconds of idle worker over which its background commands are counted.
IDLE_SECONDS = 5.0

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

    def __init__(self, *, redis_url: str, database_url: str, audit: bool) -> None:
        from actors.settings import Settings

        self.settings = Settings(
            redis_url=redis_url,
            namespace=f"capacity-{uuid.uuid4().hex[:6]}",
            database_url=database_url,
            audit_enabled=audit,
            metrics_dir=Path(f"/tmp/tradeflow-capacity-metrics-{os.getpid()}"),
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
        self.worker = subprocess.Popen(command, env=self.env(), cwd=ROOT, stderr=subprocess.DEVNULL)

    def stop_worker(self) -> None:
        self.worker.send_signal(signal.SIGTERM)
        self.worker.wait(60)

    def drained(self) -> bool:
        namespace = self.settings.namespace
        return self.client.hlen(f"{namespace}:capacity.msgs") == 0

    def wait_drained(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not self.drained():
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not drain the queue")
            time.sleep(0.05)


def measure(name: str, run: Run, units: int, send, *, engine, schema: str, disposables) -> tuple[Cost, Cost]:
    """Cost of ``send()`` (``units`` of work) and the worker's background commands per second."""
    client = run.client
    run.start_worker()
    send(1)  # warm-up: the worker is up, scripts loaded, connections open
    run.wait_drained(120)
    time.sleep(1.0)
    client.config_resetstat()
    cpu_before = redis_cpu(client)
    time.sleep(IDLE_SECONDS)
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
    scale = elapsed / IDLE_SECONDS  # background commands during the run, subtracted
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


def postgres_rates(engine, schema: str) -> tuple[float, float]:
    """Rows per second PostgreSQL takes here in batches of 500 per transaction (how the audit
    writer commits), and transactions per second of one small row each (fsync per commit)."""
    from sqlalchemy import text

    table = f"{schema}.capacity_probe"
    payload = "x" * 200
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, payload text)"))
    rows = [{"payload": payload}] * 500
    started = time.perf_counter()
    for _ in range(20):
        with engine.begin() as connection:
            connection.execute(text(f"INSERT INTO {table} (payload) VALUES (:payload)"), rows)
    batched = 20 * 500 / (time.perf_counter() - started)
    started = time.perf_counter()
    with engine.connect() as connection:
        for _ in range(500):
            connection.execute(text(f"INSERT INTO {table} (payload) VALUES (:payload)"), rows[0])
            connection.commit()
    single = 500 / (time.perf_counter() - started)
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


def redis_benchmark(port: int) -> tuple[dict[str, float], float]:
    """Requests per second ``redis-benchmark`` gets from this server (50 clients, no pipelining),
    and the Redis CPU seconds one of those requests costs."""
    client = redis.Redis(port=port)
    cpu_before, calls_before = redis_cpu(client), client.info("stats")["total_commands_processed"]
    output = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-q", "-n", "200000", "-c", "50", "-t", "set,lpush,rpop,hset"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rates = {}
    for line in output.replace("\r", "\n").splitlines():
        match = re.match(r"^(\w+)(?: \([^)]*\))?: ([\d.]+) requests per second", line.strip())
        if match:
            rates[match.group(1)] = float(match.group(2))
    requests = client.info("stats")["total_commands_processed"] - calls_before
    return rates, (redis_cpu(client) - cpu_before) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3_000)
    parser.add_argument("--workflows", type=int, default=500)
    args = parser.parse_args()

    from sqlalchemy import create_engine, text

    schema = f"capacity_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    database_url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    try:
        with private_redis() as redis_url:
            report(args, redis_url, database_url, admin, schema)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))


def report(args, redis_url: str, database_url: str, admin, schema: str) -> None:
    import dramatiq
    from dramatiq.message import Message

    from actors import audit_writer_of, build_broker
    from saga import Step, Workflow, engine_of
    from storage import create_db_engine, upgrade

    upgrade(create_db_engine(database_url))
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
        run = Run(redis_url=redis_url, database_url=database_url, audit=audit)
        broker, disposables = producer(run)
        cost, idle = measure(
            name, run, args.messages, sender(broker), engine=admin, schema=schema, disposables=disposables
        )
        costs.append(cost)
        idles.append(idle)
        if not audit:
            memory = waiting_message_bytes(run, sender(broker), args.messages)

    run = Run(redis_url=redis_url, database_url=database_url, audit=True)
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
        args.workflows,
        start_workflows,
        engine=admin,
        schema=schema,
        disposables=disposables,
    )
    cost.units = 3 * args.workflows  # per step
    costs.append(cost)
    idles.append(idle)

    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    bench, cpu_per_request = redis_benchmark(port)
    batched_rows, single_commits = postgres_rates(admin, schema)
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
    for cost in costs:
        unit = cost.per_unit()
        ceiling = 1e6 / unit["cpu_us"]  # one Redis main thread: one core
        # rows batched as the audit writer and the saga's group commit do
        # (a few hundredths of a row: background writes of the run, not the unit's)
        pg = f"{batched_rows / unit['rows']:>10,.0f}/s" if unit["rows"] >= 0.05 else f"{'-':>12}"
        print(
            f"{cost.name:<16}{unit['scripts']:>12.2f}{unit['commands']:>12.2f}"
            f"{unit['cpu_us']:>12.1f}{unit['bytes']:>12.0f}{unit['rows']:>12.2f}{ceiling:>10,.0f}/s{pg}"
        )
    for cost in costs:
        top = ", ".join(f"{name} {count / cost.units:.2f}" for name, count in cost.commands.most_common(8))
        print(f"  {cost.name}: {top}")
    idle = idles[0]
    print(
        "idle worker process (background, subtracted above): "
        f"{sum(idle.commands.values()) / IDLE_SECONDS:.1f} commands/s"
    )
    print(
        "scripts: dispatch-script calls (evalsha) per unit; commands: every command Redis ran, those"
        " inside scripts too; CPU µs: Redis process CPU (network I/O included); Redis max: units per"
        " second at one fully busy Redis core (1e6 / CPU µs); PG max: batched rows/s / rows per unit"
    )


if __name__ == "__main__":
    main()
