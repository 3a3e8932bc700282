"""Worker inspection and control: what each worker process holds, and ``quiet`` / ``stop`` requests.

Each worker process records itself every ``interval`` seconds in the worker presence
(:mod:`actors.middleware.heartbeat`): host, pid, queues, broker id, version, state, and the
messages it is running with their start times.  ``tradeflow workers list`` shows the processes
that recorded themselves in the last three intervals.  ``tradeflow workers quiet|stop ID`` sets
``<ns>:worker-control:<host:pid>``, which the worker reads at its next record: a quiet worker
stops fetching (it finishes what it holds, nothing new starts); a stopped one shuts down as on
SIGTERM (its messages not started go back to their queues).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from typing import Any

import redis
from dramatiq import Broker, Middleware
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .audit import worker_id
from .heartbeat import beat, leave, read_workers

#: Seconds between two records of a worker process.
WORKER_RECORD_INTERVAL = 2.0

#: Seconds after its last record a worker process is no longer listed (three records missed).
LISTED_WITHIN = 3 * WORKER_RECORD_INTERVAL

#: Commands ``worker-control`` accepts.
CONTROL_COMMANDS = ("quiet", "stop")

#: Seconds a control request waits for its worker.
CONTROL_TTL = 60


def control_key(namespace: str, worker: str) -> str:
    return f"{namespace}:worker-control:{worker}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tradeflow")
    except PackageNotFoundError:
        return "unknown"


class WorkerRegistry(Middleware):
    """Publishes this worker process's state in Redis and obeys ``quiet``/``stop`` requests.

    Parameters:
      interval(float): Seconds between records (and control checks).
        Defaults to :data:`WORKER_RECORD_INTERVAL`.
    """

    def __init__(self, *, interval: float = WORKER_RECORD_INTERVAL) -> None:
        self.logger = get_logger(__name__, type(self))
        self.interval = interval
        self._running: dict[str, tuple[str, float]] = {}
        self._state = "running"
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker = None
        self._broker: Broker | None = None
        self._started_at = time.time()

    def after_worker_boot(self, broker: Broker, worker) -> None:
        self._broker, self._worker = broker, worker
        self._started_at = time.time()
        self._thread = threading.Thread(target=self._run, name="tradeflow-worker-registry", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Broker, worker) -> None:
        # still present (the health check and the API count it) until its threads are done
        self._state = "stopping"

    def after_worker_shutdown(self, broker: Broker, worker) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(self.interval + 1)
        with contextlib.suppress(redis.RedisError):
            leave(broker.client, broker.namespace, worker_id())

    def before_process_message(self, broker: Broker, message: Message) -> None:
        self._running[message.message_id] = (message.actor_name, time.time())

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        self._running.pop(message.message_id, None)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        self._running.pop(message.message_id, None)

    def record(self) -> dict[str, Any]:
        """What ``workers list`` and the API's ``/workers`` show of this process."""
        worker = self._worker
        queues = sorted({q_name(queue) for queue in getattr(worker, "consumers", {})})  # q and q.DQ: q
        return {
            "id": worker_id(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": queues,
            "broker_id": getattr(self._broker, "broker_id", None),  # whose unacked sets are its in-flight
            "threads": len(getattr(worker, "workers", ())),
            "state": self._state,
            "version": _version(),
            "started_at": self._started_at,
            "heartbeat_at": time.time(),
            "running": [
                {"message_id": message_id, "actor": actor, "started_at": started}
                for message_id, (actor, started) in list(self._running.items())
            ],
        }

    def _run(self) -> None:
        broker = self._broker
        control = control_key(broker.namespace, worker_id())
        while not self._stopped.is_set():
            try:
                command = broker.client.getdel(control)
                if command is not None:
                    self._obey(command.decode())
                beat(broker.client, broker.namespace, worker_id(), self.record())
            except redis.RedisError as exc:
                self.logger.warning("Worker record not written (%s); retrying.", exc)
            self._stopped.wait(self.interval)

    def _obey(self, command: str) -> None:
        if command == "quiet" and self._state != "quiet":
            self.logger.info("Quiet: finishing the messages held, fetching no more.")
            self._state = "quiet"
            for thread in list(self._worker.consumers.values()):
                consumer = getattr(thread, "consumer", None)
                if consumer is not None and hasattr(consumer, "pending"):
                    # the waking consumer: fetch nothing more, but keep sending the deferred acks
                    consumer.prefetch = 0
                else:
                    thread.pause()
        elif command == "stop":
            self.logger.info("Stop requested: shutting down as on SIGTERM.")
            self._state = "stopping"
            os.kill(os.getpid(), signal.SIGTERM)


def list_workers(client: redis.Redis, namespace: str) -> list[dict[str, Any]]:
    """The records of every live worker process, oldest first."""
    records = [presence.record for presence in read_workers(client, namespace, within=LISTED_WITHIN)]
    # a process of an older release beats with a shorter record: listed by the API, not here
    records = [record for record in records if "started_at" in record]
    return sorted(records, key=lambda record: (record["started_at"], record["id"]))


def request_control(client: redis.Redis, namespace: str, worker: str, command: str) -> bool:
    """Ask ``worker`` to ``quiet`` or ``stop``; False if no such worker is alive."""
    if command not in CONTROL_COMMANDS:
        raise ValueError(f"unknown command {command!r}; use one of {', '.join(CONTROL_COMMANDS)}")
    if worker not in {presence.id for presence in read_workers(client, namespace, within=LISTED_WITHIN)}:
        return False
    client.set(control_key(namespace, worker), command, ex=CONTROL_TTL)
    return True
