"""Instructions per message of a real producer and a real worker process, counted by callgrind.

    .venv/bin/python bench/worker_instructions.py [--messages 10000] [--compare-tree ../before]

CPU time on the 2-core VM moves by ±20 % between rounds of one configuration, so a change worth a
few % of a message cannot be seen in ``tracing_overhead.py --full-stack-cpu``; an instruction count
moves by well under 1 %.  For each side, valgrind's callgrind counts every instruction of:

* the producer process sending N no-op messages through the full stack (and exporting their spans
  and audit events before it exits);
* the worker process (``dramatiq ... -p 1 -t 8``: audit trail, metrics, tracing, its export
  thread and the garbage collector) draining those N messages, handed to it once it has booted.

The same with ``--baseline`` messages is subtracted, so start-up, idle polls and shutdown cancel
out (``--baseline 0``: nothing is subtracted, the figures include them).  Sides: tracing off;
tracing on, every span exported over OTLP/HTTP to a receiver in another process; and with
``--compare-tree``, tracing on with another checkout's code (e.g. ``git worktree add --detach
../before HEAD~1``).  About 8 minutes a side for 10,000 messages.  ``--smoke``: the tracing-off
side alone, 3 messages and no baseline, every step as above but with callgrind instrumenting
nothing (``--instr-atstart=no``): its counts are 0, its run a fraction of the time.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput
from tracing_overhead import REDIS_URL, _receive

from bench import harness

ROOT = throughput.ROOT

#: The producer: one uncounted-in-effect first send (connects, loads scripts), N sends, then the
#: audit events and spans they caused are written and exported.
PRODUCER_SCRIPT = """
import sys
from bench.actors_tradeflow import broker, noop
from bench.producing import flush

noop.send()
for _ in range(int(sys.argv[1])):
    noop.send()
flush(broker)
"""

#: Run in the side's checkout: creates its audit tables.
MIGRATE_SCRIPT = (
    "import sys; from storage import create_db_engine, upgrade; upgrade(create_db_engine(sys.argv[1]))"
)


#: Whether callgrind instruments nothing (``--smoke``: the pipeline runs, the counts are 0).
INSTRUMENT_NOTHING = False

#: Seconds the worker gets to boot before the queue is handed to it.
BOOT_SECONDS = 10.0


def _callgrind(command: list[str]) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        *(["--instr-atstart=no"] if INSTRUMENT_NOTHING else []),
        *command,
    ]


def _collected(stderr: str) -> int:
    """The instructions of the process that ran most (a worker's master only waits for its child)."""
    return max(int(count) for count in re.findall(r"Collected : (\d+)", stderr))


def _run(root: Path, env: dict[str, str], count: int, client: redis.Redis, scratch: str) -> tuple[int, int]:
    """(producer, worker) instructions of ``count`` messages sent, then drained, with ``env``."""
    namespace = f"bench-ci-{uuid.uuid4().hex[:6]}"
    env = {
        **env,
        "PYTHONPATH": str(root),
        "PYTHONHASHSEED": "0",
        "BENCH_REDIS_URL": REDIS_URL,
        "TRADEFLOW_REDIS_URL": REDIS_URL,
        "TRADEFLOW_NAMESPACE": namespace,
        "TRADEFLOW_DATABASE_URL": f"sqlite:///{scratch}/{namespace}.db",
        "TRADEFLOW_METRICS_PORT": "0",
    }
    subprocess.run(
        [sys.executable, "-c", MIGRATE_SCRIPT, env["TRADEFLOW_DATABASE_URL"]], env=env, cwd=root, check=True
    )
    produced = subprocess.run(
        _callgrind([sys.executable, "-c", PRODUCER_SCRIPT, str(count)]),
        env=env,
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    )
    queue = f"{namespace}:bench"
    client.rename(queue, f"{queue}-held")  # handed over once the worker has booted
    worker = harness.start(
        _callgrind([sys.executable, "-m", "dramatiq", "bench.actors_tradeflow", "-p", "1", "-t", "8"]),
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(BOOT_SECONDS)
        client.rename(f"{queue}-held", queue)
        while client.llen(queue) or throughput.unacked(client, namespace):
            time.sleep(0.5)
    finally:
        os.killpg(worker.pid, 15)
        try:
            stderr = worker.communicate(timeout=900)[1]
        finally:
            harness.finish(worker)  # however the wait ended: nothing left running
            throughput.cleanup(client, namespace)
    return _collected(produced.stderr), _collected(stderr)


def main() -> None:
    global INSTRUMENT_NOTHING, BOOT_SECONDS
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=1_000, help="messages of the run subtracted")
    parser.add_argument("--compare-tree", type=Path, metavar="CHECKOUT", help="a side tracing with its code")
    args = harness.parse(parser)
    if args.smoke:
        args.messages, args.baseline, INSTRUMENT_NOTHING, BOOT_SECONDS = 3, 0, True, 3.0
    if args.messages <= args.baseline:
        parser.error("--messages must be more than --baseline")
    url_pipe, child_pipe = multiprocessing.Pipe()
    stop = multiprocessing.Event()
    receiver = multiprocessing.Process(target=_receive, args=(child_pipe, stop), daemon=True)
    receiver.start()
    tracing_on = {"TRADEFLOW_TRACING_EXPORTER": "otlp-http", "TRADEFLOW_TRACING_ENDPOINT": url_pipe.recv()}
    base = {key: value for key, value in os.environ.items() if not key.startswith(("TRADEFLOW_", "BENCH_"))}
    sides = [("tracing off", ROOT, base), ("tracing on", ROOT, {**base, **tracing_on})]
    if args.compare_tree is not None:
        sides.append((f"on, {args.compare_tree.name}", args.compare_tree.resolve(), {**base, **tracing_on}))
    if args.smoke:
        sides = sides[:1]
    client = redis.Redis.from_url(REDIS_URL)
    figures = {}
    try:
        with harness.supervised(), tempfile.TemporaryDirectory(prefix="worker-instructions-") as scratch:
            for name, root, env in sides:
                small = _run(root, env, args.baseline, client, scratch) if args.baseline else (0, 0)
                big = _run(root, env, args.messages, client, scratch)
                counted = args.messages - args.baseline
                figures[name] = [(b - s) / counted for s, b in zip(small, big, strict=True)]
                producer, worker = figures[name]
                print(f"{name:>14}: producer {producer:,.0f}, worker {worker:,.0f}", flush=True)
    finally:
        stop.set()
    off = figures["tracing off"]
    print(f"\ninstructions per message ({args.messages:,} messages less {args.baseline:,}):")
    for name, (producer, worker) in figures.items():
        total = producer + worker
        print(
            f"{name:>14}: producer {producer:10,.0f}  worker {worker:10,.0f}  total {total:10,.0f}"
            f"  vs off {_change(total, sum(off))} (producer {_change(producer, off[0])},"
            f" worker {_change(worker, off[1])})"
        )
    for name, (producer, worker) in figures.items():
        harness.figure(f"{harness.slug(name)}.producer_instructions", producer, "instructions/message")
        harness.figure(f"{harness.slug(name)}.worker_instructions", worker, "instructions/message")


def _change(value: float, base: float) -> str:
    """``value`` against ``base``, as a signed percentage (``n/a``: nothing counted)."""
    return f"{value / base - 1:+6.1%}" if base else "   n/a"


if __name__ == "__main__":
    main()
