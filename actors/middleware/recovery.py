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

A death seen by a supervisor (``tradeflow up`` polls its worker processes) needs no
timeout: each worker process records its broker id under its master's pid
(:func:`register_process`), and :func:`requeue_observed_death` requeues the dead
process's messages at once.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from dramatiq import Broker, Middleware
from dramatiq.brokers.redis import RedisBroker
from dramatiq.logging import get_logger
from dramatiq.message import Message

from actors.broker import routes_of
from saga import SAGA_OPTION, engine_of

#: The dispatch command run with forced maintenance: it only reads a queue size.
_HARMLESS_COMMAND = "qsize"

#: Redis hash (under the namespace, then ``:<host>:<master pid>``) of the worker processes
#: of one master: field ``pid``, value the process's broker id.
PROCESSES_KEY = "__processes__"

#: Seconds a master's hash of processes is kept (a host that died keeps none forever).
PROCESSES_TTL = 7 * 86_400


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
    return _requeue_held(broker, client, [worker.decode() for worker in dead], declared, now)


def _requeue_held(
    broker: RedisBroker, client, dead: list[str], declared: list[str], now: int
) -> dict[str, int]:
    """Requeue what the ``dead`` brokers (heartbeats older than the timeout) held on ``client``."""
    namespace = broker.namespace
    recovered: dict[str, int] = {}
    for worker in dead:
        prefix = f"{namespace}:__acks__.{worker}."
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


def processes_key(namespace: str, *, master_pid: int, host: str | None = None) -> str:
    return f"{namespace}:{PROCESSES_KEY}:{host or socket.gethostname()}:{master_pid}"


def register_process(broker: RedisBroker) -> None:
    """Record this worker process's broker id under its master's pid (see :func:`requeue_observed_death`)."""
    key = processes_key(broker.namespace, master_pid=os.getppid())
    with broker.client.pipeline(transaction=False) as pipe:
        pipe.hset(key, str(os.getpid()), broker.broker_id)
        pipe.expire(key, PROCESSES_TTL)
        pipe.execute()


def unregister_process(broker: RedisBroker) -> None:
    broker.client.hdel(processes_key(broker.namespace, master_pid=os.getppid()), str(os.getpid()))


def worker_processes(broker: RedisBroker, *, master_pid: int) -> dict[int, str]:
    """The worker processes of master ``master_pid`` on this host: broker id by pid."""
    raw = broker.client.hgetall(processes_key(broker.namespace, master_pid=master_pid))
    return {int(pid): broker_id.decode() for pid, broker_id in raw.items()}


def requeue_observed_death(broker: RedisBroker, *, master_pid: int, pids: list[int]) -> dict[str, int]:
    """Worker processes ``pids`` of master ``master_pid`` on this host are known dead (their
    supervisor saw them exit): requeue their unacked messages now, on every Redis, without
    waiting for their heartbeats to time out.  How many, per queue."""
    key = processes_key(broker.namespace, master_pid=master_pid)
    registered = broker.client.hmget(key, [str(pid) for pid in pids])
    ids = [broker_id.decode() for broker_id in registered if broker_id]
    if not ids:
        return {}
    _release_step_claims(broker, ids, workers=[f"{socket.gethostname()}:{pid}" for pid in pids])
    routes, now = routes_of(broker), int(time.time() * 1000)
    recovered: dict[str, int] = {}
    for client in routes.clients():
        declared = [queue for queue in broker.get_declared_queues() if routes.client_for(queue) is client]
        # A heartbeat at the epoch: dead for the maintenance below, whatever the timeout.
        client.zadd(f"{broker.namespace}:__heartbeats__", dict.fromkeys(ids, 0))
        for queue, held in _requeue_held(broker, client, ids, declared, now).items():
            recovered[queue] = recovered.get(queue, 0) + held
    broker.client.hdel(key, *[str(pid) for pid in pids])
    return recovered


def _release_step_claims(broker: RedisBroker, broker_ids: list[str], *, workers: list[str]) -> None:
    """End the leases of the workflow steps the dead processes ran (claimed by them, or by the
    dispatch their message carries): the requeued messages run them at once instead of
    waiting for the leases to run out."""
    try:
        engine = engine_of(broker)
    except LookupError:
        return
    namespace, tokens = broker.namespace, []
    for client in routes_of(broker).clients():
        for broker_id in broker_ids:
            prefix = f"{namespace}:__acks__.{broker_id}."
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                queue = key.decode()[len(prefix) :]
                held = list(client.smembers(key))
                for data in client.hmget(f"{namespace}:{queue}.msgs", held) if held else ():
                    marker = Message.decode(data).options.get(SAGA_OPTION) if data else None
                    if isinstance(marker, dict) and isinstance(marker.get("token"), str):
                        tokens.append(marker["token"])
    engine.expire_claims(workers=workers, tokens=tokens)


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

    def before_worker_boot(self, broker: Broker, worker) -> None:
        # Before the consumers start: a poison message fetched at once must find it registered.
        try:
            register_process(broker)
        except Exception as exc:  # Redis away: only an observed death's fast requeue is lost
            self.logger.warning("Worker process not registered for fast recovery: %s", exc)

    def after_worker_boot(self, broker: Broker, worker) -> None:
        self._stopping.clear()
        threading.Thread(target=self._run, args=(broker,), name="tradeflow-recovery", daemon=True).start()

    def before_worker_shutdown(self, broker: Broker, worker) -> None:
        self._stopping.set()

    def after_worker_shutdown(self, broker: Broker, worker) -> None:
        try:
            unregister_process(broker)
        except Exception as exc:
            self.logger.debug("Worker process not unregistered: %s", exc)

    def _run(self, broker: RedisBroker) -> None:
        while not self._stopping.wait(self.interval):
            try:
                recovered = recover_stalled(broker)
            except Exception as exc:  # Redis away: the next pass tries again
                self.logger.warning("Stalled-message recovery failed: %s", exc)
                continue
            if recovered:
                self.logger.warning("Requeued messages of dead workers: %s", recovered)
