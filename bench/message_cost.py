"""CPU cost per message: raw Dramatiq vs the tradeflow stack, worker and Redis separately.

Wall-clock rates on a shared 2-core machine move by tens of percent with the
load; CPU time per message does not (much).  For each side this fills a queue
with no-op messages, starts ``dramatiq <module> -p 1 -t 8``, and from the
first message taken to the last one acked counts:

* the CPU time (user + system) of the worker processes, from ``/proc``;
* the CPU time of a private ``redis-server`` started for the run (so other
  clients of the machine's Redis do not count), from ``INFO cpu``;
* the drain rate, for reference.

    .venv/bin/python bench/message_cost.py [--messages 10000] [--rounds 3] [--smoke]
    BENCH_VARIANTS="audit off:TRADEFLOW_AUDIT_ENABLED=false" .venv/bin/python bench/message_cost.py

Sides alternate within each round; the least CPU per message over the rounds
is reported (noise only ever adds CPU), with its ratio to raw Dramatiq.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latency import private_redis  # noqa: E402
from throughput import (  # noqa: E402
    Side,
    cleanup,
    fill,
    make_sides,
    prepare_database,
    start_workers,
    stop_workers,
    unacked,
)

from bench import harness  # noqa: E402

#: Clock ticks per second of ``/proc/<pid>/stat`` times.
TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def context_switches(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                text = (task / "status").read_text()
            except OSError:
                continue
            total += sum(int(line.split()[1]) for line in text.splitlines() if "ctxt_switches" in line)
    return total


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pids``."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    return user / TICKS, system / TICKS


def redis_calls(client: redis.Redis) -> int:
    """Script calls the server ran so far (each broker operation is one)."""
    stats = client.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(side: Side, client: redis.Redis, count: int) -> tuple[float, float, float]:
    """(worker CPU µs, Redis CPU µs, messages/s) for draining ``count`` messages."""
    fill(side, count)
    queue = f"{side.namespace}:bench"
    master = start_workers(side, 1, 8)
    try:
        while client.llen(queue) == count:
            time.sleep(0.001)
        pids = process_tree(master.pid)
        started, rcpu0, calls0 = time.perf_counter(), redis_cpu(client), redis_calls(client)
        (user0, sys0), switches0 = cpu_seconds(pids), context_switches(pids)
        while client.llen(queue) or unacked(client, side.namespace):
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        (user1, sys1), switches1 = cpu_seconds(pids), context_switches(pids)
        cpu, rcpu = user1 + sys1 - user0 - sys0, redis_cpu(client) - rcpu0
        calls = redis_calls(client) - calls0
        print(
            f"    user {(user1 - user0) / count * 1e6:.0f} µs, system {(sys1 - sys0) / count * 1e6:.0f} µs,"
            f" {(switches1 - switches0) / count:.1f} context switches,"
            f" {calls / count:.2f} script calls per message",
            flush=True,
        )
    finally:
        stop_workers(master)
        cleanup(client, side.namespace)
    return cpu / count * 1e6, rcpu / count * 1e6, count / elapsed


def main() -> None:
    parser = harness.parser(__doc__, raw=True)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", help="audit database; default: SQLite in a temporary folder")
    args = harness.parse(parser)
    if args.smoke:
        args.messages, args.rounds = 100, 1
    database_url = args.database_url or f"sqlite:///{tempfile.mkdtemp(prefix='tradeflow-bench-')}/bench.db"
    prepare_database(database_url)
    with harness.supervised(), private_redis() as redis_url:
        client = redis.Redis.from_url(redis_url)
        sides = make_sides(redis_url, [database_url])
        best: dict[str, tuple[float, float, float]] = {}
        for round_ in range(args.rounds):
            for side in sides:
                worker, server, rate = measure(side, client, args.messages)
                print(
                    f"round {round_ + 1} {side.name:32s} worker {worker:6.0f} µs  redis {server:5.0f} µs"
                    f"  {rate:6.0f} msg/s",
                    flush=True,
                )
                old = best.get(side.name)
                best[side.name] = (
                    min(worker, old[0]) if old else worker,
                    min(server, old[1]) if old else server,
                    max(rate, old[2]) if old else rate,
                )
    raw = best[sides[0].name]
    print(f"\n{args.messages} no-op messages, 1 process x 8 threads, least CPU of {args.rounds} rounds")
    print(
        f"{'side':34s} {'worker µs':>10s} {'redis µs':>9s} {'total µs':>9s} {'x raw':>6s} {'best msg/s':>10s}"
    )
    for side in sides:
        worker, server, rate = best[side.name]
        total = worker + server
        ratio = total / sum(raw[:2])
        print(f"{side.name:34s} {worker:10.0f} {server:9.0f} {total:9.0f} {ratio:6.2f} {rate:10.0f}")
    for side in sides:
        worker, server, rate = best[side.name]
        name = harness.slug(side.name)
        harness.figure(f"{name}.worker_cpu_us", worker, "µs/message")
        harness.figure(f"{name}.redis_cpu_us", server, "µs/message")
        harness.figure(f"{name}.drain_per_s", rate, "msg/s")


if __name__ == "__main__":
    main()
