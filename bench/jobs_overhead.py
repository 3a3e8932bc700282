"""Cost of tradeflow's job-control middleware per message, against raw Dramatiq, in one run.

Three brokers on the same Redis, each draining N no-op messages with one
in-process worker (8 threads):

* raw:        Dramatiq's RedisBroker with its default middleware;
* base:       tradeflow's stack without the job-control middleware;
* jobs:       tradeflow's full stack (admission gate, cancel watcher, dead-letter
              log, stalled recovery, schedule control, backoff retries).

The audit trail is off in both tradeflow stacks, so the difference is the job
control alone.  Usage: ``python bench/jobs_overhead.py [N] [REDIS_URL] [--rounds 3] [--smoke]``.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.broker import Admission
from actors.middleware import CancelWatcher, DeadLetterLog, StalledRecovery
from actors.runtime import build_broker
from actors.scheduling import ScheduleControl
from actors.settings import Settings
from bench import harness

#: Middleware types that make up job control.
JOB_CONTROL = (Admission, CancelWatcher, DeadLetterLog, StalledRecovery, ScheduleControl)


def drain(broker: RedisBroker, count: int) -> float:
    """Seconds for one worker to process ``count`` messages sent up front."""
    noop = broker.actors.get("_noop") or dramatiq.actor(
        _noop, broker=broker, queue_name="bench", max_retries=0
    )
    for i in range(count):
        noop.send(i)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=50)
    started = time.perf_counter()
    worker.start()
    broker.join("bench", interval=20)
    elapsed = time.perf_counter() - started
    worker.stop()
    return elapsed


def _noop(i: int) -> None:
    pass


def admission_latency(broker: RedisBroker, count: int) -> float:
    """Microseconds of one admission check (the one Redis round trip job control adds per message)."""
    gate = next(m for m in broker.middleware if isinstance(m, Admission))
    messages = [  # as a worker hands them to the middleware: in a proxy
        MessageProxy(dramatiq.Message("bench", "_noop", (), {}, {"redis_message_id": str(uuid.uuid4())}))
        for _ in range(count)
    ]
    started = time.perf_counter()
    for message in messages:
        gate.before_process_message(broker, message)
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("count", nargs="?", type=int, default=3_000, help="messages per drain")
    parser.add_argument("redis_url", nargs="?", default="redis://127.0.0.1:6379/15")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per broker, interleaved; the best round counts"
    )
    args = harness.parse(parser)
    if args.smoke:
        args.count, args.rounds = 100, 1
    count, url, rounds = args.count, args.redis_url, args.rounds
    namespaces = []

    def settings() -> Settings:
        namespaces.append(f"bench-{uuid.uuid4().hex[:8]}")
        return Settings(redis_url=url, namespace=namespaces[-1], audit_enabled=False)

    raw = RedisBroker(url=url, namespace=f"bench-{uuid.uuid4().hex[:8]}")
    namespaces.append(raw.namespace)
    base = build_broker(settings())
    for middleware in [m for m in base.middleware if isinstance(m, JOB_CONTROL)]:
        base.middleware.remove(middleware)
    jobs = build_broker(settings())
    try:
        results: dict[str, float] = {}
        for _ in range(rounds):
            for name, broker in (("raw", raw), ("base", base), ("jobs", jobs)):
                results[name] = min(results.get(name, float("inf")), drain(broker, count))
        admission_us = admission_latency(jobs, count)
    finally:
        client = redis.Redis.from_url(url)
        for namespace in namespaces:
            keys = list(client.scan_iter(match=f"{namespace}*"))
            if keys:
                client.delete(*keys)
    throughput = {name: count / seconds for name, seconds in results.items()}  # msg/s
    for name, seconds in results.items():
        print(f"{name:5s} {throughput[name]:8.0f} msg/s  ({seconds:.2f}s for {count})")
    print(f"best of {rounds} interleaved rounds")
    # jobs msg/s over raw msg/s: below 1 when job control slows the drain (docs/performance.md)
    print(f"jobs/raw  throughput ratio: {throughput['jobs'] / throughput['raw']:.2f}")
    print(f"jobs/base throughput ratio: {throughput['jobs'] / throughput['base']:.2f}")
    print(f"job-control cost per message: {(results['jobs'] - results['base']) / count * 1e6:.0f} us")
    print(f"admission check alone, sequential: {admission_us:.0f} us per message")
    for name, per_second in throughput.items():
        harness.figure(f"{name}.drain_per_s", per_second, "msg/s")
    harness.figure("jobs.cost_per_message_us", (results["jobs"] - results["base"]) / count * 1e6, "µs")
    harness.figure("jobs.admission_check_us", admission_us, "µs")


if __name__ == "__main__":
    main()
