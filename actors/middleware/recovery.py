"""Bounded recovery of messages held by dead workers, on every queue, busy or idle.

Dramatiq requeues a dead worker's unacked messages only when some broker call
on the same queue wins a maintenance draw (0.1 % by default) after the
heartbeat timeout: on an idle queue that can take many minutes.  Every worker
here runs :func:`recover_stalled` each ``interval``: it finds workers silent
for ``heartbeat_timeout``, and runs Dramatiq's own maintenance (its ``dispatch``
script with maintenance forced) on each queue they held messages of.  Recovery
then takes at most ``heartbeat_timeout + interval`` (75 s with the defaults).
With queues routed to Redis instances of their own (:mod:`actors.broker.redis_clients`)
each instance is swept: a worker's acks and heartbeat live where its queues do.
"""

from __future__ import annotations

import threading
import time

from dramatiq import Broker, Middleware
from dramatiq.brokers.redis import RedisBroker
from dramatiq.logging import get_logger

from actors.broker import routes_of

#: The dispatch command run with forced maintenance: it only reads a queue size.
_HARMLESS_COMMAND = "qsize"


def recover_stalled(broker: RedisBroker) -> dict[str, int]:
    """Requeue the unacked messages of every dead worker; how many, per queue.

    Also beats this process's heart: a worker whose threads are all busy with
    long jobs makes no broker call that would, and must not look dead.
    """
    routes = routes_of(broker)
    recovered: dict[str, int] = {}
    for client in routes.clients():
        declared = [queue for queue in broker.get_declared_queues() if routes.client_for(queue) is client]
        for queue, held in _recover_on(broker, client, declared).items():
            recovered[queue] = recovered.get(queue, 0) + held
    return recovered


def _recover_on(broker: RedisBroker, client, declared: list[str]) -> dict[str, int]:
    """:func:`recover_stalled` on one Redis, whose declared queues are ``declared``."""
    namespace = broker.namespace
    now = int(time.time() * 1000)
    client.zadd(f"{namespace}:__heartbeats__", {broker.broker_id: now})
    dead = client.zrangebyscore(f"{namespace}:__heartbeats__", 0, now - broker.heartbeat_timeout)
    recovered: dict[str, int] = {}
    for worker in dead:
        prefix = f"{namespace}:__acks__.{worker.decode()}."
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            queue = key.decode()[len(prefix) :]
            held = client.scard(key)
            _force_maintenance(broker, client, queue, now)
            recovered[queue] = recovered.get(queue, 0) + held
    if dead and not recovered:
        # workers that held nothing: let maintenance drop their heartbeats
        for queue in declared:
            _force_maintenance(broker, client, queue, now)
    return recovered


def _force_maintenance(broker: RedisBroker, client, queue: str, now: int) -> None:
    dispatcher = getattr(broker, "dispatcher_for", None)
    script = dispatcher(queue) if dispatcher is not None else broker.scripts["dispatch"]
    script(
        client=client,
        keys=[broker.namespace],
        args=[
            _HARMLESS_COMMAND,
            now,
            queue,
            broker.broker_id,
            broker.heartbeat_timeout,
            broker.dead_message_ttl,
            1,
            broker._max_unpack_size(),
        ],
    )


class StalledRecovery(Middleware):
    """Runs :func:`recover_stalled` every ``interval`` in each worker process.

    Parameters:
      interval(int): Milliseconds between two recovery passes; must be well
        under the broker's heartbeat timeout.  Defaults to 15 s.
    """

    def __init__(self, *, interval: int = 15_000) -> None:
        self.logger = get_logger(__name__, type(self))
        self.interval = interval / 1000
        self._stopping = threading.Event()

    def after_worker_boot(self, broker: Broker, worker) -> None:
        self._stopping.clear()
        threading.Thread(target=self._run, args=(broker,), name="tradeflow-recovery", daemon=True).start()

    def before_worker_shutdown(self, broker: Broker, worker) -> None:
        self._stopping.set()

    def _run(self, broker: RedisBroker) -> None:
        while not self._stopping.wait(self.interval):
            try:
                recovered = recover_stalled(broker)
            except Exception as exc:  # Redis away: the next pass tries again
                self.logger.warning("Stalled-message recovery failed: %s", exc)
                continue
            if recovered:
                self.logger.warning("Requeued messages of dead workers: %s", recovered)
