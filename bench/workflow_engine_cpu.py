"""CPU time and SQL statements the saga engine spends per workflow start and per step, in process.

No worker: the engine's sends are captured and each captured step message is claimed and
recorded as succeeded in a loop, exactly as the ``Saga`` middleware would, so the figures are the
engine's own cost: CPU time of this process and, on PostgreSQL, of the backends of the engine's
connections ("+N server").  It counts the statements the engine executes (on SQLite including
``BEGIN IMMEDIATE``) and its transactions (a claim on PostgreSQL is one autocommit statement).

Usage: ``python bench/workflow_engine_cpu.py [--database sqlite|postgresql] [--runs 300]
[--rounds 3] [--smoke]``.  Needs Redis on 127.0.0.1:6379 (the broker's client) and, for PostgreSQL,
127.0.0.1:5432.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench import harness  # noqa: E402
from bench.workflow_throughput import REDIS_URL, database_url  # noqa: E402


class Counter:
    """Statements executed (through SQLAlchemy or on the driver's cursor) and transactions."""

    def __init__(self) -> None:
        self.statements = 0
        self.transactions = 0
        self.backends: list[int] = []

    def server_cpu(self) -> float:
        """CPU seconds the PostgreSQL backends of the engine's connections used so far."""
        total = 0.0
        for pid in self.backends:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total


def instrument(engine, counter: Counter) -> None:
    from sqlalchemy import event

    from saga import driver

    @event.listens_for(engine.database, "before_cursor_execute")
    def _count(*_args, **_kwargs):
        counter.statements += 1

    original = driver.DriverStatement._execute

    def counted(self, connection, params):
        counter.statements += 1
        return original(self, connection, params)

    driver.DriverStatement._execute = counted
    executemany = getattr(driver.DriverStatement, "executemany", None)
    if executemany is not None:

        def counted_many(self, connection, rows):
            counter.statements += 1  # psycopg pipelines the parameter sets: one round trip
            return executemany(self, connection, rows)

        driver.DriverStatement.executemany = counted_many

    if engine.database.dialect.name == "postgresql":

        @event.listens_for(engine.database, "connect")
        def _backend(dbapi_connection, _record):
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                counter.backends.append(cursor.fetchone()[0])
            dbapi_connection.commit()

    # Transactions: every write block of the engine (a claim on PostgreSQL is one autocommit
    # statement, on SQLite a transaction of its own).
    transaction, single = engine._transaction, engine._single_statement

    def counted_transaction(*args, **kwargs):
        counter.transactions += 1
        return transaction(*args, **kwargs)

    def counted_single(*args, **kwargs):
        if engine.database.dialect.name != "sqlite":  # there it is a counted _transaction
            counter.transactions += 1
        return single(*args, **kwargs)

    engine._transaction, engine._single_statement = counted_transaction, counted_single
    # Claims and successes open theirs through the engine's group commit.
    engine._group.transaction = counted_transaction
    engine._starts.transaction = functools.partial(counted_transaction, pipelined=True)


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    options = harness.parse(parser)
    if options.smoke:
        options.runs, options.rounds = 10, 1
    with tempfile.TemporaryDirectory() as folder:
        url, drop = database_url(options.database, folder)
        try:
            run(options, url)
        finally:
            drop()


def run(options, url: str) -> None:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    os.environ.update(
        TRADEFLOW_REDIS_URL=REDIS_URL,
        TRADEFLOW_NAMESPACE=namespace,
        TRADEFLOW_DATABASE_URL=url,
        TRADEFLOW_AUDIT_ENABLED="false",
    )
    from actors.settings import Settings
    from storage import create_db_engine, upgrade

    settings = Settings()
    upgrade(create_db_engine(url))
    import dramatiq

    from actors import build_broker
    from saga import SAGA_OPTION, Step, Workflow, engine_of

    broker = build_broker(settings)
    dramatiq.actor(lambda *args: None, actor_name="noop", broker=broker, queue_name="bench_workflow")
    engine = engine_of(broker)
    counter = Counter()
    instrument(engine, counter)
    captured = []
    engine._send = captured.extend  # the engine's sends, kept instead of enqueued
    linear = Workflow(
        "bench_linear",
        [
            Step("a", "noop", args=(1,)),
            Step("b", "noop", depends_on=["a"]),
            Step("c", "noop", depends_on=["b"]),
        ],
    )
    print(f"database={options.database} runs={options.runs} rounds={options.rounds}")
    starts, steps = [], []
    for number in range(1, options.rounds + 1):
        captured.clear()
        counter.statements = counter.transactions = 0
        cpu, server = time.process_time(), counter.server_cpu()
        for _ in range(options.runs):
            engine.start(linear)
        start_cpu = (time.process_time() - cpu) / options.runs
        start_server = (counter.server_cpu() - server) / options.runs
        start_sql, start_trips = counter.statements / options.runs, counter.transactions / options.runs
        counter.statements = counter.transactions = 0
        done = 0
        cpu, server = time.process_time(), counter.server_cpu()
        while captured:
            message = captured.pop()
            marker = message.options[SAGA_OPTION]
            claim = engine.claim(
                run_id=marker["run"],
                step=marker["step"],
                kind=marker["kind"],
                epoch=marker["epoch"],
                retry=0,
                worker="bench",
                dispatch=marker.get("token"),
                first_delivery=True,  # what admission tells the worker of a message's first delivery
            )
            engine.succeeded(claim, None)
            done += 1
        step_cpu = (time.process_time() - cpu) / done
        step_server = (counter.server_cpu() - server) / done
        starts.append(start_cpu)
        steps.append(step_cpu)
        print(
            f"round {number}: start {start_cpu * 1e6:.0f} us CPU (+{start_server * 1e6:.0f} server),"
            f" {start_sql:.1f} statements,"
            f" {start_trips:.1f} transactions; step (claim + outcome) {step_cpu * 1e6:.0f} us CPU"
            f" (+{step_server * 1e6:.0f} server),"
            f" {counter.statements / done:.1f} statements, {counter.transactions / done:.1f} transactions"
        )
    start, step = statistics.median(starts), statistics.median(steps)
    print(
        f"median: start {start * 1e6:.0f} us, step {step * 1e6:.0f} us"
        f" -> {(start + 3 * step) * 1e3:.2f} ms CPU per 3-step workflow"
    )
    harness.figure("engine.start_cpu_us", start * 1e6, "µs")
    harness.figure("engine.step_cpu_us", step * 1e6, "µs")
    harness.figure("engine.workflow_cpu_ms", (start + 3 * step) * 1e3, "ms")
    engine.database.dispose()
    keys = list(broker.client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        broker.client.delete(*keys)


if __name__ == "__main__":
    main()
