"""CPU time and SQL statements the saga engine spends per workflow start and per step, in process.

No worker: the engine's sends are captured and each captured step message is claimed and
recorded as succeeded in a loop, exactly as the ``Saga`` middleware would, so the figures are the
engine's own cost: CPU time of this process and, on PostgreSQL, of the backends of the engine's
connections ("+N server").  It counts the statements the engine executes (on SQLite including
``BEGIN IMMEDIATE``), its transactions (a claim on PostgreSQL is one autocommit statement; a
read is none) and, on PostgreSQL, its round trips to the server; and the transactions one
3-step workflow costs (target: at most steps + 2).

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
    """Statements executed (through SQLAlchemy or on the driver's cursor), transactions and,
    on PostgreSQL, round trips."""

    def __init__(self) -> None:
        self.statements = 0
        self.transactions = 0
        self.round_trips = 0
        self.backends: list[int] = []

    def reset(self) -> None:
        self.statements = self.transactions = self.round_trips = 0

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
        import psycopg
        from psycopg.waiting import Wait

        READ = int(Wait.R)

        # psycopg drives every exchange with the server through Connection.wait; an exchange
        # that waited for the server to answer (a statement, a BEGIN or COMMIT outside a
        # pipeline, a pipeline's sync however many statements it carried) is one round trip.
        # Local steps (setting autocommit, a rollback with no transaction open) wait for nothing;
        # queueing a statement in a pipeline waits only until the socket takes it (read or write).
        wait = psycopg.Connection.wait

        def answered(generator):
            waited_for_answer = False
            try:
                state = next(generator)
                while True:
                    waited_for_answer = waited_for_answer or state == READ
                    state = generator.send((yield state))
            except StopIteration as stop:
                counter.round_trips += waited_for_answer
                return stop.value

        def counted_wait(self, generator, *args, **kwargs):
            return wait(self, answered(generator), *args, **kwargs)

        psycopg.Connection.wait = counted_wait

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
    # Claims and successes open theirs through the engine's group commits.
    engine._group.transaction = counted_transaction
    engine._starts.transaction = functools.partial(counted_transaction, pipelined=True)
    engine._advancing.transaction = functools.partial(counted_transaction, pipelined=True)


def capture(engine, captured: list) -> None:
    """Keep the engine's sends instead of enqueueing them, including those the leader of a
    group commit sends for its batch: every step of every run goes through the loop."""
    engine._send = captured.extend
    engine._group.dispatch = engine._advancing.dispatch = captured.extend


def counter_values(counter: Counter) -> tuple[int, int, int]:
    return counter.statements, counter.transactions, counter.round_trips


def describe(counts: list[float]) -> str:
    statements, transactions, round_trips = counts
    text = f"{statements:.1f} statements, {transactions:.1f} transactions"
    return text + (f", {round_trips:.1f} round trips" if round_trips else "")


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
    capture(engine, captured)
    linear = Workflow(
        "bench_linear",
        [
            Step("a", "noop", args=(1,)),
            Step("b", "noop", depends_on=["a"]),
            Step("c", "noop", depends_on=["b"]),
        ],
    )
    steps_per_run = len(linear.steps)
    print(f"database={options.database} runs={options.runs} rounds={options.rounds}")
    starts, steps, writes = [], [], []
    for number in range(1, options.rounds + 1):
        captured.clear()
        counter.reset()
        cpu, server = time.process_time(), counter.server_cpu()
        for _ in range(options.runs):
            engine.start(linear)
        start_cpu = (time.process_time() - cpu) / options.runs
        start_server = (counter.server_cpu() - server) / options.runs
        start_counts = [value / options.runs for value in counter_values(counter)]
        counter.reset()
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
        if done != steps_per_run * options.runs:
            raise SystemExit(f"{done} steps ran, not {steps_per_run * options.runs}: a send escaped capture")
        step_cpu = (time.process_time() - cpu) / done
        step_server = (counter.server_cpu() - server) / done
        step_counts = [value / done for value in counter_values(counter)]
        starts.append(start_cpu)
        steps.append(step_cpu)
        writes.append(start_counts[1] + steps_per_run * step_counts[1])
        print(
            f"round {number}: start {start_cpu * 1e6:.0f} us CPU (+{start_server * 1e6:.0f} server),"
            f" {describe(start_counts)}; step (claim + outcome) {step_cpu * 1e6:.0f} us CPU"
            f" (+{step_server * 1e6:.0f} server), {describe(step_counts)}"
        )
    start, step = statistics.median(starts), statistics.median(steps)
    print(
        f"median: start {start * 1e6:.0f} us, step {step * 1e6:.0f} us"
        f" -> {(start + steps_per_run * step) * 1e3:.2f} ms CPU per {steps_per_run}-step workflow"
    )
    print(
        f"transactions per {steps_per_run}-step workflow: {statistics.median(writes):.1f}"
        f" (target <= n + 2 = {steps_per_run + 2})"
    )
    harness.figure("engine.transactions_per_workflow", statistics.median(writes), "transactions")
    harness.figure("engine.start_cpu_us", start * 1e6, "µs")
    harness.figure("engine.step_cpu_us", step * 1e6, "µs")
    harness.figure("engine.workflow_cpu_ms", (start + steps_per_run * step) * 1e3, "ms")
    engine.database.dispose()
    keys = list(broker.client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        broker.client.delete(*keys)


if __name__ == "__main__":
    main()
