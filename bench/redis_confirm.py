"""Enqueue throughput with and without ``WAIT`` confirmation of critical messages.

Starts a private primary and a replica (``redis-server``, loopback, no persistence), then
enqueues ``--messages`` critical messages through tradeflow's broker with
``TRADEFLOW_REDIS_CONFIRM_REPLICAS`` 0 (no wait) and 1 (each enqueue waits until the replica
has it), from 1 and from ``--threads`` producer threads, and prints messages per second::

    .venv/bin/python bench/redis_confirm.py [--messages 5000] [--threads 8] [--smoke]

``--smoke``: 100 messages, from 1 and 2 threads; its figures mean nothing.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dramatiq.message import Message  # noqa: E402

from actors import build_broker  # noqa: E402
from actors.settings import Settings  # noqa: E402
from bench import harness  # noqa: E402

#: Seconds a server gets to answer, and the replica to be in sync with the primary.
READY_TIMEOUT = 30.0


@contextlib.contextmanager
def redis_server(*args: str) -> Iterator[int]:
    """A private ``redis-server`` on a free loopback port, with ``args``; yields the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
    folder = tempfile.mkdtemp(prefix="redis-confirm-")  # a replica's full sync writes an RDB file there
    server = harness.start([*command, "--dir", folder, *args], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        _wait_until(lambda: _answers(client), f"redis-server on port {port} answering")
        yield port
    finally:
        client.close()
        harness.finish(server)
        shutil.rmtree(folder, ignore_errors=True)


def _answers(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def _wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {READY_TIMEOUT:.0f} s")
        time.sleep(0.05)


def rate(settings: Settings, *, messages: int, threads: int) -> tuple[float, int]:
    """Critical messages enqueued per second by ``threads`` producer threads, and the
    ``WAIT`` commands the primary ran meanwhile."""
    broker = build_broker(settings)
    waits = _wait_calls(broker.client)
    per_thread = messages // threads

    def produce() -> None:
        for index in range(per_thread):
            message = Message(
                queue_name="bench",
                actor_name="bench",
                args=(index,),
                kwargs={},
                options={"priority": "critical"},
            )
            broker.enqueue(message)

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    waits = _wait_calls(broker.client) - waits
    broker.client.delete("bench-confirm:bench:critical", "bench-confirm:bench.msgs")
    broker.close()
    return per_thread * threads / elapsed, waits


def _wait_calls(client: redis.Redis) -> int:
    return client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5_000, help="critical enqueues per measure")
    parser.add_argument("--threads", type=int, default=8, help="producer threads of the second row")
    args = harness.parse(parser)
    if args.smoke:
        args.messages, args.threads = 100, 2
    with (
        harness.supervised(),
        tempfile.TemporaryDirectory() as folder,
        redis_server() as primary,
        redis_server("--replicaof", "127.0.0.1", str(primary)) as replica,
    ):
        replica_client = redis.Redis(port=replica)
        _wait_until(
            lambda: replica_client.info("replication").get("master_link_status") == "up",
            "replica in sync",
        )
        replica_client.close()
        print(f"{args.messages} critical enqueues, primary :{primary}, replica :{replica}")
        print(f"{'producers':>10} {'no confirm':>12} {'WAIT 1':>12} {'ratio':>7} {'WAITs':>7}")
        for row, threads in (("single", 1), ("threaded", args.threads)):
            rates, waits = [], 0
            for replicas in (0, 1):
                settings = Settings(
                    redis_url=f"redis://127.0.0.1:{primary}/0",
                    namespace="bench-confirm",
                    database_url=f"sqlite:///{Path(folder) / 'bench.db'}",
                    audit_enabled=False,
                    metrics_enabled=False,
                    redis_confirm_replicas=replicas,
                )
                per_second, waits = rate(settings, messages=args.messages, threads=threads)
                rates.append(per_second)
            ratio = rates[1] / rates[0]
            print(f"{threads:>10} {rates[0]:>10.0f}/s {rates[1]:>10.0f}/s {ratio:>7.2f} {waits:>7}")
            # by row, not by thread count, so that a smoke run's names are the full run's
            harness.figure(f"{row}.producers", threads)
            harness.figure(f"{row}.no_confirm_per_s", rates[0], "msg/s")
            harness.figure(f"{row}.wait_1_per_s", rates[1], "msg/s")
            harness.figure(f"{row}.ratio", ratio)
            harness.figure(f"{row}.waits", waits)


if __name__ == "__main__":
    main()
