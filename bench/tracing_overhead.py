"""What tracing costs: throughput of raw Dramatiq, tradeflow with tracing off, tradeflow with
tracing exporting every span over OTLP/HTTP to a local receiver (another process), and the same
sampling 10% of traces, side by side.

    .venv/bin/python bench/tracing_overhead.py [--messages 3000] [--rounds 3] [--threads 8] [--work-ms 0]
    .venv/bin/python bench/tracing_overhead.py --hooks-only     # the Tracing hooks and exporters alone
    .venv/bin/python bench/tracing_overhead.py --metrics-hooks  # the Metrics hooks alone
    .venv/bin/python bench/tracing_overhead.py --full-stack --messages 10000 --rounds 3 --database-url URL
        # bench/throughput.py's real worker processes: raw Dramatiq, full stack with tracing off,
        # and full stack with tracing on (every span, and 10% of traces) exporting to a receiver
    .venv/bin/python bench/tracing_overhead.py --full-stack-cpu sqlite:///DB [--sampled-side R] [--work-ms 1]
        [--compare-tree ../before]
        # CPU per message of real worker processes and their producer, sides alternated in rounds
    .venv/bin/python bench/tracing_overhead.py --smoke [...]  # any of these, tiny: checks the bench runs

Each round sends N messages (timed: enqueue rate) to an actor that burns ``--work-ms`` of CPU
(0: a no-op, the worst case for any per-message overhead), then runs an in-process worker until
the queue is drained (timed: processing rate).  The best enqueue and processing rates of each
configuration are kept, and the configurations alternate so machine noise hits all of them
alike.  The tradeflow broker runs with its metrics middleware booted and without the audit trail
(measured in bench/throughput.py), so "tracing off" versus "tracing on" is the tracing middleware
and its exporter alone.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from otlp_receiver import OTLPReceiver

from actors.runtime import build_broker
from actors.settings import Settings
from actors.telemetry import tracer_provider_for
from bench import harness

#: Redis of the benchmark (a database of its own, keys under a fresh namespace).
REDIS_URL = "redis://127.0.0.1:6379/14"


@dataclass
class Round:
    """Rates (messages per wall-clock second) and CPU time of this process per message (µs)."""

    name: str
    enqueue_per_s: float
    process_per_s: float
    enqueue_cpu_us: float
    process_cpu_us: float

    def best(self, other: Round) -> Round:
        return Round(
            self.name,
            max(self.enqueue_per_s, other.enqueue_per_s),
            max(self.process_per_s, other.process_per_s),
            min(self.enqueue_cpu_us, other.enqueue_cpu_us),
            min(self.process_cpu_us, other.process_cpu_us),
        )


def _receive(url_pipe, stop_event) -> None:
    with OTLPReceiver(keep_spans=False) as receiver:
        url_pipe.send(receiver.url)
        stop_event.wait()
        url_pipe.send(receiver.span_count)


def _burn(seconds: float) -> None:
    # Thread CPU time, not wall time: the same work per message however busy the machine is.
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        pass


def _run_round(
    name: str, broker: dramatiq.Broker, *, messages: int, threads: int, work: float, provider: object
) -> Round:
    actor = dramatiq.actor(
        lambda i: _burn(work), broker=broker, actor_name="bench_work", queue_name="bench", max_retries=0
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    for i in range(messages):
        actor.send(i)
    enqueued, enqueue_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    worker = dramatiq.Worker(broker, worker_threads=threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    worker.start()
    broker.join("bench", timeout=600_000)
    worker.join()
    if provider is not None:  # the round pays for exporting its own spans, and only for those
        provider.force_flush()
    processed, process_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    worker.stop()
    us = 1e6 / messages
    return Round(name, messages / enqueued, messages / processed, enqueue_cpu * us, process_cpu * us)


def _settings(namespace: str, **update: object) -> Settings:
    return Settings(
        redis_url=REDIS_URL,
        namespace=namespace,
        audit_enabled=False,
        metrics_dir=Path("/tmp") / f"tradeflow-bench-metrics-{namespace}",
        metrics_port=0,
        **update,
    )


def _broker(config: str, namespace: str, endpoint: str) -> tuple[dramatiq.Broker, object]:
    """The broker of a configuration and its tracer provider (``None`` when not tracing)."""
    if config == "raw dramatiq":
        return RedisBroker(url=REDIS_URL, namespace=namespace), None
    update = {}
    if config.startswith("tracing on"):
        ratio = 0.1 if "10%" in config else 1.0
        update = {
            "tracing_exporter": "otlp-http",
            "tracing_endpoint": endpoint,
            "tracing_sample_ratio": ratio,
        }
    settings = _settings(namespace, **update)
    broker = build_broker(settings)
    broker.emit_after("process_boot")  # metrics on, as in a worker process
    return broker, tracer_provider_for(settings)


def hook_costs(endpoint: str, messages: int = 1000, rounds: int = 5) -> None:
    """CPU of the Tracing middleware's hooks per message, without a broker: alone, and exporting.

    "export" rows include the batch span processor's thread encoding and posting every span to the
    OTLP receiver (flushed before the clock stops): the SDK's stock OTLP/HTTP exporter with its
    default batch processor, versus tradeflow's (wire encoder, larger batches).
    """
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from actors.telemetry import Tracing

    def provider(ratio: float, exporter: str | None) -> TracerProvider:
        if exporter == "tradeflow":
            return tracer_provider_for(
                _settings(
                    "hooks",
                    tracing_exporter="otlp-http",
                    tracing_endpoint=endpoint,
                    tracing_sample_ratio=ratio,
                )
            )
        result = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
        if exporter == "stock":
            result.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        return result

    print("\nTracing hooks, no broker, µs CPU per message (best of rounds; export: encoding and HTTP too):")
    for label, ratio, exporter in (
        ("sampled 100%, no export", 1.0, None),
        ("sampled   0%, no export", 0.0, None),
        ("sampled 100%, SDK stock OTLP/HTTP export", 1.0, "stock"),
        ("sampled 100%, tradeflow OTLP/HTTP export", 1.0, "tradeflow"),
    ):
        tracer_provider = provider(ratio, exporter)
        tracing = Tracing(tracer_provider=tracer_provider)
        broker = StubBroker()
        actor = dramatiq.actor(lambda: None, broker=broker, actor_name="bench_hooks")
        best = None
        for _ in range(rounds):
            batch = [actor.message() for _ in range(messages)]
            started = time.process_time()
            for message in batch:
                tracing.before_enqueue(broker, message, None)
                tracing.after_enqueue(broker, message, None)
            for message in batch:
                proxy = MessageProxy(message)
                tracing.before_process_message(broker, proxy)
                tracing.after_process_message(broker, proxy)
            tracer_provider.force_flush()
            cost = (time.process_time() - started) * 1e6 / messages
            best = cost if best is None else min(best, cost)
        print(f"  {label:42s} {best:6.1f}")
        harness.figure(f"hooks.{harness.slug(label)}_us", best, "µs/message")


def metrics_hook_costs(messages: int = 5000, rounds: int = 5) -> None:
    """CPU of the Metrics middleware's hooks per message in a worker process (multiprocess mode, files)."""
    import tempfile

    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker

    from actors.telemetry import Metrics, WorkerMetrics, use_directory

    broker = StubBroker()
    broker.client = redis.Redis.from_url(REDIS_URL)  # enqueue counts go to Redis, in the background
    broker.namespace = f"bench-{uuid.uuid4().hex[:8]}"
    directory = Path(tempfile.mkdtemp(prefix="tradeflow-bench-metrics-"))
    use_directory(directory)
    metrics = Metrics(directory=directory)
    metrics.worker_metrics = WorkerMetrics.create()  # as after_process_boot, without claiming a master
    actor = dramatiq.actor(lambda: None, broker=broker, actor_name="bench_metrics")
    best = (float("inf"), float("inf"))
    for _ in range(rounds):
        batch = [actor.message() for _ in range(messages)]
        started = time.process_time()
        for message in batch:
            metrics.after_enqueue(broker, message, None)
        enqueued = time.process_time()
        for message in batch:
            proxy = MessageProxy(message)
            metrics.before_process_message(broker, proxy)
            metrics.after_process_message(broker, proxy)
        done = time.process_time()
        us = 1e6 / messages
        best = (min(best[0], (enqueued - started) * us), min(best[1], (done - enqueued) * us))
    metrics.enqueue_counts.close()
    broker.client.delete(f"{broker.namespace}:__enqueued__")
    print(
        f"\nMetrics hooks, µs CPU per message (best of {rounds}): "
        f"enqueue {best[0]:.1f}, process {best[1]:.1f}"
    )
    harness.figure("metrics_hooks.enqueue_us", best[0], "µs/message")
    harness.figure("metrics_hooks.process_us", best[1], "µs/message")


def full_stack(argv: list[str], sample_ratios: list[float]) -> None:
    """bench/throughput.py (raw Dramatiq, full stack with tracing off) plus full-stack sides with
    tracing on, exporting over OTLP/HTTP to a receiver in another process."""
    import os
    import subprocess

    url_pipe, child_pipe = multiprocessing.Pipe()
    stop = multiprocessing.Event()
    receiver = multiprocessing.Process(target=_receive, args=(child_pipe, stop), daemon=True)
    receiver.start()
    endpoint = url_pipe.recv()
    variants = ";".join(
        f"tracing on {ratio:.0%}:TRADEFLOW_TRACING_EXPORTER=otlp-http,TRADEFLOW_TRACING_ENDPOINT={endpoint},"
        f"TRADEFLOW_TRACING_SAMPLE_RATIO={ratio}"
        for ratio in sample_ratios
    )
    root = Path(__file__).resolve().parent.parent
    try:
        # started as a supervised child: interrupted, it gets SIGTERM and stops its own workers
        bench = harness.start(
            [sys.executable, str(root / "bench" / "throughput.py"), *argv],
            env={**os.environ, "BENCH_VARIANTS": variants},
        )
        if bench.wait():
            raise subprocess.CalledProcessError(bench.returncode, bench.args)
        harness.finish(bench)
    finally:
        stop.set()
    print(f"spans received by the OTLP receiver: {url_pipe.recv()}")
    receiver.join(10)


def _group(pgid: int) -> tuple[int, float]:
    """How many live processes process group ``pgid`` has, and their CPU seconds (user + system)."""
    count, _, cpu = _group_times(pgid)
    return count, cpu


def _group_times(pgid: int) -> tuple[int, float, float]:
    """How many live processes process group ``pgid`` has, their system CPU seconds and their
    CPU seconds in all (user + system)."""
    import os

    count, ticks, system = 0, 0, 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ... utime(11) stime(12)
            count += 1
            ticks += int(fields[11]) + int(fields[12])
            system += int(fields[12])
    hertz = os.sysconf("SC_CLK_TCK")
    return count, system / hertz, ticks / hertz


#: Producer run by :func:`_produce`: sends N no-op messages (or N burning W µs of CPU each), flushes
#: the audit writer and the tracer provider (so export counts), then prints the CPU seconds this
#: took in this process.
PRODUCER_SCRIPT = """
import importlib, resource, sys
module = importlib.import_module(sys.argv[1])
from bench.producing import flush

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime

broker, count, work_us = module.broker, int(sys.argv[2]), int(sys.argv[3])
send = (lambda: module.burn.send(work_us)) if work_us else module.noop.send
send()  # the first send connects and loads scripts: not counted
started, system = cpu()
for _ in range(count):
    send()
flush(broker)
ended, system_ended = cpu()
print(ended - started, system_ended - system)
"""


def _produce(side, count: int, work_us: int = 0) -> tuple[float, float]:
    """CPU seconds the producing process spent sending ``count`` messages (and exporting their
    spans), in all and in the kernel; each message asks for ``work_us`` µs of CPU work (0: a no-op)."""
    import subprocess

    output = subprocess.run(
        [sys.executable, "-c", PRODUCER_SCRIPT, side.module, str(count), str(work_us)],
        env=side.env,
        cwd=side.root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    total, system = output.split()[-2:]
    return float(total), float(system)


def _wait_booted(pgid: int, processes: int, *, timeout: float = 60.0) -> None:
    """Wait until the worker processes have started and gone idle: their boot (imports, forks)
    must not count as CPU per message."""
    deadline = time.monotonic() + timeout
    last = _group(pgid)[1]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        size, now = _group(pgid)
        if size > processes and now - last < 0.02:
            return
        last = now
    raise RuntimeError("worker processes did not boot within a minute")


def _fresh_database(url: str, scratch: str) -> str:
    """An empty audit database for one side's round, migrated: a file of its own under ``scratch``
    for SQLite, the tables of ``url`` emptied otherwise.  Sides that shared one database grew it
    round after round, and whichever came later paid for the bigger indexes."""
    from sqlalchemy import text

    from storage import create_db_engine, upgrade

    if url.startswith("sqlite"):
        url = f"sqlite:///{scratch}/{uuid.uuid4().hex[:8]}.db"
    engine = create_db_engine(url)
    upgrade(engine)
    if not url.startswith("sqlite"):
        with engine.begin() as connection:
            connection.execute(text("TRUNCATE tasks"))
    engine.dispose()
    return url


#: A second tracing-off side of :func:`full_stack_cpu`, run apart from the first in each round:
#: what it measures over the first is the benchmark's own noise and drift.
CONTROL = "off, again"


def full_stack_cpu(
    messages: int,
    rounds: int,
    database_url: str,
    processes: int,
    threads: int,
    sampled: float | None = None,
    work_us: int = 0,
    compare_tree: Path | None = None,
) -> None:
    """CPU per message of real ``dramatiq`` worker processes (and of the producer process), full
    stack, tracing off and on, and raw Dramatiq: sides alternate in rounds, their order rotated by
    one each round and reversed every other cycle, with a second tracing-off side as a control;
    medians are printed.

    The producer fills the queue and counts its own CPU, from its first send to its last span
    exported; the workers then boot and go idle before the queue is handed to them at once.
    CPU time, unlike wall-clock rates, hardly moves with the other processes of a shared machine;
    each round's on/off ratio compares two neighbours.  ``sampled``, when given, adds a side tracing
    that share of traces (``TRADEFLOW_TRACING_SAMPLE_RATIO``).  ``work_us``, when not 0, makes each
    message burn that many µs of CPU in its worker, for the share tracing takes of a message that
    does some work.  ``compare_tree``, when given, adds a side tracing every span with the code of
    that checkout (e.g. ``git worktree add --detach ../before HEAD~1``): an A/B of two commits
    under the same noise."""
    import statistics

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import throughput

    url_pipe, child_pipe = multiprocessing.Pipe()
    stop = multiprocessing.Event()
    receiver = multiprocessing.Process(target=_receive, args=(child_pipe, stop), daemon=True)
    receiver.start()
    endpoint = url_pipe.recv()
    scratch = tempfile.mkdtemp(prefix="tracing-bench-")
    tracing_on = {"TRADEFLOW_TRACING_EXPORTER": "otlp-http", "TRADEFLOW_TRACING_ENDPOINT": endpoint}
    throughput.VARIANTS = [
        ("tracing on", tracing_on),
        (CONTROL, {}),
    ]
    if sampled is not None:
        sampled_side = f"on, {sampled:.0%}"
        throughput.VARIANTS.append(
            (sampled_side, {**tracing_on, "TRADEFLOW_TRACING_SAMPLE_RATIO": str(sampled)})
        )
    if compare_tree is not None:
        compared = f"on, {compare_tree.name}"
        throughput.VARIANTS.append((compared, {**tracing_on, "PYTHONPATH": str(compare_tree)}))
    client = redis.Redis.from_url(REDIS_URL)
    results: dict[str, list[tuple[float, float, float, float]]] = {}
    # Round by round, against that round's tracing-off side: (CPU, user CPU, drain rate) ratios - 1.
    ratios: dict[str, list[tuple[float, float, float]]] = {}
    try:
        for round_number in range(rounds):
            sides = throughput.make_sides(REDIS_URL, [database_url])
            # Each round starts one side further on, and every other cycle of rounds runs the other
            # way round: every side runs in every position, after either neighbour, and never twice
            # in a row across rounds (a side that follows itself runs warm: the control, which did
            # so in the reversed rounds of the old order, came out 7.7 % cheaper over 30 rounds).
            if (round_number // len(sides)) % 2:
                sides.reverse()
            shift = round_number % len(sides)
            sides = sides[shift:] + sides[:shift]
            for side in sides:
                side.env["TRADEFLOW_METRICS_PORT"] = "0"
                if "TRADEFLOW_DATABASE_URL" in side.env:
                    side.env["TRADEFLOW_DATABASE_URL"] = _fresh_database(database_url, scratch)
                side.name = "tracing off" if side.name.startswith("tradeflow") else side.name
                if compare_tree is not None and side.name == compared:
                    side.root = compare_tree
                row = _round(side, client, messages, processes, threads, work_us)
                results.setdefault(side.name, []).append(row)
                print(
                    f"  {side.name:12s} producer {row[0]:6.0f} µs, workers {row[1]:6.0f} µs "
                    f"CPU per message ({row[3]:4.0f} µs of it in the kernel), {row[2]:6.0f} msg/s",
                    flush=True,
                )
            off = results["tracing off"][-1]
            for name, rows in results.items():
                if name not in ("tracing off", "raw dramatiq"):
                    side = rows[-1]
                    ratio = (_cost(side, off), _cost(side, off, user_only=True), side[2] / off[2] - 1)
                    ratios.setdefault(name, []).append(ratio)
    finally:
        stop.set()
        shutil.rmtree(scratch, ignore_errors=True)
    received = url_pipe.recv()
    receiver.join(10)
    print(
        f"\n{messages} {f'{work_us} µs' if work_us else 'no-op'} messages x {rounds} rounds, "
        f"{processes} processes x {threads} threads; medians:"
    )
    median = {
        name: [statistics.median(column) for column in zip(*rows, strict=True)]
        for name, rows in results.items()
    }
    off = median["tracing off"]
    print(
        f"{'side':>12} {'producer µs':>12} {'workers µs':>11} {'total µs':>9} {'kernel µs':>9} "
        f"{'msg/s':>7} {'CPU vs off':>10}"
    )
    for name, (produce, consume, rate, system) in median.items():
        total = produce + consume
        print(
            f"{name:>12} {produce:9.0f} {consume:8.0f} {total:6.0f} {system:9.0f} {rate:7.0f} "
            f"{total / (off[0] + off[1]):10.2f}"
        )
    on = median["tracing on"]
    cost = (on[0] + on[1]) / (off[0] + off[1]) - 1
    print(
        f"tracing on vs off: CPU per message {cost:+.1%} (target +15% at most; producer "
        f"{on[0] - off[0]:+.0f} µs, workers {on[1] - off[1]:+.0f} µs), drain rate {on[2] / off[2] - 1:+.1%}"
    )
    for label, column in (("CPU", 0), ("user CPU (kernel's left out)", 1), ("drain rate", 2)):
        print(f"  round by round, {label}, against the round's tracing-off side ({CONTROL}: the noise):")
        for name, rows in ratios.items():
            costs = [row[column] for row in rows]
            print(
                f"    {name}: "
                + ", ".join(f"{cost:+.1%}" for cost in costs)
                + f"; median {statistics.median(costs):+.1%}"
            )
    expected = 2 * messages * rounds
    print(
        f"spans received by the OTLP receiver: {received} (tracing on sent {expected}, a sampled side more)"
    )
    for name, (produce, consume, rate, system) in median.items():
        name = harness.slug(name)
        harness.figure(f"{name}.producer_cpu_us", produce, "µs/message")
        harness.figure(f"{name}.workers_cpu_us", consume, "µs/message")
        harness.figure(f"{name}.kernel_cpu_us", system, "µs/message")
        harness.figure(f"{name}.drain_per_s", rate, "msg/s")
    harness.figure("tracing_on.cpu_vs_off", cost, "ratio - 1")


def _cost(side: tuple[float, ...], off: tuple[float, ...], *, user_only: bool = False) -> float:
    """What ``side`` costs over ``off`` in CPU per message (producer and workers), as a ratio - 1."""
    kernel = (side[3], off[3]) if user_only else (0.0, 0.0)
    return (side[0] + side[1] - kernel[0]) / (off[0] + off[1] - kernel[1]) - 1


def _round(
    side, client: redis.Redis, messages: int, processes: int, threads: int, work_us: int = 0
) -> tuple[float, float, float, float]:
    """One side's round: (producer µs, workers µs) CPU per message, the drain rate (messages/s),
    and the µs per message of that CPU spent in the kernel (producer and workers)."""
    import throughput

    queue = f"{side.namespace}:bench"
    produce, produce_system = (seconds / messages for seconds in _produce(side, messages, work_us))
    # Hidden while the workers boot, then handed over at once: the workers' CPU counts
    # draining a full queue, not their boot, nor waiting for a producer slowed by tracing.
    client.rename(queue, f"{queue}-held")
    workers = throughput.start_workers(side, processes, threads)
    try:
        _wait_booted(workers.pid, processes)
        _, system, cpu = _group_times(workers.pid)
        started = time.perf_counter()
        client.rename(f"{queue}-held", queue)
        while client.llen(queue) or throughput.unacked(client, side.namespace):
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        # the producer's first (uncounted) send is consumed too
        _, system_ended, cpu_ended = _group_times(workers.pid)
        consume = (cpu_ended - cpu) / (messages + 1)
        consume_system = (system_ended - system) / (messages + 1)
    finally:
        throughput.stop_workers(workers)  # SIGTERM to the master only: workers shut down (and flush) once
        throughput.cleanup(client, side.namespace)
    return produce * 1e6, consume * 1e6, messages / elapsed, (produce_system + consume_system) * 1e6


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--work-ms", type=float, default=0.0, help="CPU each message burns, in ms (also --full-stack-cpu)"
    )
    parser.add_argument("--hooks-only", action="store_true", help="only the hook costs, no broker")
    parser.add_argument("--metrics-hooks", action="store_true", help="only the Metrics middleware's hooks")
    parser.add_argument(
        "--full-stack-cpu",
        metavar="DATABASE_URL",
        help="CPU per message of real worker processes: raw, full stack tracing off/on, and a control",
    )
    parser.add_argument("--processes", type=int, default=2, help="worker processes (--full-stack-cpu)")
    parser.add_argument(
        "--sampled-side", type=float, metavar="RATIO", help="--full-stack-cpu: a side tracing this share"
    )
    parser.add_argument(
        "--compare-tree",
        type=Path,
        metavar="CHECKOUT",
        help="--full-stack-cpu: a side tracing every span with another checkout's code (an A/B)",
    )
    parser.add_argument(
        "--full-stack",
        nargs=argparse.REMAINDER,
        help="run bench/throughput.py with these arguments, plus tracing-on sides (100%% and 10%%)",
    )
    args = harness.parse(parser)
    hook_sizes = {}
    if args.smoke:
        args.messages, args.rounds, args.threads, args.processes = 50, 1, 2, 1
        hook_sizes = {"messages": 50, "rounds": 1}
    with harness.supervised():
        run(args, hook_sizes)


def run(args, hook_sizes: dict[str, int]) -> None:
    """The mode ``args`` asks for."""
    if args.metrics_hooks:
        metrics_hook_costs(**hook_sizes)
        return
    if args.full_stack_cpu:
        full_stack_cpu(
            args.messages,
            args.rounds,
            args.full_stack_cpu,
            args.processes,
            args.threads,
            args.sampled_side,
            round(args.work_ms * 1000),
            args.compare_tree,
        )
        return
    if args.full_stack is not None:
        full_stack(args.full_stack + ["--smoke"] * args.smoke, [1.0, 0.1])
        return

    url_pipe, child_pipe = multiprocessing.Pipe()
    stop = multiprocessing.Event()
    receiver = multiprocessing.Process(target=_receive, args=(child_pipe, stop), daemon=True)
    receiver.start()
    endpoint = url_pipe.recv()
    client = redis.Redis.from_url(REDIS_URL)
    configs = ("raw dramatiq", "tracing off", "tracing on", "tracing on 10%")
    best: dict[str, Round] = {}
    try:
        hook_costs(endpoint, **hook_sizes)
        for round_number in range(0 if args.hooks_only else args.rounds):
            for config in configs:
                namespace = f"bench-{uuid.uuid4().hex[:8]}"
                try:
                    broker, provider = _broker(config, namespace, endpoint)
                    result = _run_round(
                        config,
                        broker,
                        provider=provider,
                        messages=args.messages,
                        threads=args.threads,
                        work=args.work_ms / 1000,
                    )
                finally:
                    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
                    if keys:
                        client.delete(*keys)
                print(
                    f"round {round_number + 1} {config:>15}: enqueue {result.enqueue_per_s:6.0f}/s "
                    f"{result.enqueue_cpu_us:5.0f} µs CPU, process {result.process_per_s:6.0f}/s "
                    f"{result.process_cpu_us:5.0f} µs CPU",
                    flush=True,
                )
                best[config] = best[config].best(result) if config in best else result
    finally:
        stop.set()
    received = url_pipe.recv()
    receiver.join(10)
    if args.hooks_only:
        return

    raw, off, on, sampled = (best[config] for config in configs)
    print(f"\nwork per message: {args.work_ms} ms of CPU, {args.messages} messages, {args.threads} threads")
    print("best rates (messages/s) and least CPU time of this process per message (µs), of all rounds")
    header = f"{'configuration':>15} {'enqueue/s':>10} {'process/s':>10} {'enq µs':>7} {'proc µs':>7}"
    print(f"{header} {'rate vs off':>11} {'CPU vs off':>10}")
    cpu_off = off.enqueue_cpu_us + off.process_cpu_us
    for result in (raw, off, on, sampled):
        cpu = result.enqueue_cpu_us + result.process_cpu_us
        print(
            f"{result.name:>15} {result.enqueue_per_s:10.0f} {result.process_per_s:10.0f} "
            f"{result.enqueue_cpu_us:7.0f} {result.process_cpu_us:7.0f} "
            f"{result.process_per_s / off.process_per_s:11.2f} {cpu / cpu_off:10.2f}"
        )
    for result in (on, sampled):
        rate_cost = 1 - result.process_per_s / off.process_per_s
        cpu_cost = (result.enqueue_cpu_us + result.process_cpu_us) / cpu_off - 1
        print(
            f"{result.name}: processing rate {-rate_cost:+.1%}, CPU per message {cpu_cost:+.1%} (target 15%)"
        )
    for result in (raw, off, on, sampled):
        name = harness.slug(result.name)
        harness.figure(f"{name}.enqueue_per_s", result.enqueue_per_s, "msg/s")
        harness.figure(f"{name}.process_per_s", result.process_per_s, "msg/s")
        harness.figure(f"{name}.enqueue_cpu_us", result.enqueue_cpu_us, "µs/message")
        harness.figure(f"{name}.process_cpu_us", result.process_cpu_us, "µs/message")
    expected = 2 * args.messages * args.rounds
    print(
        f"spans received by the OTLP receiver: {received} (tracing on: {expected}, plus about 10% of that, "
        "plus the hook rows' exports)"
    )


if __name__ == "__main__":
    main()
