"""A Redis broker whose idle consumers wake when work arrives, with priority lanes and batch enqueue.

Dramatiq's Redis consumer never blocks: after an empty fetch it sleeps with
a back-off that grows to ``worker_timeout`` (1 s), so a sparse message waits
up to a second.  This broker keeps Dramatiq's Redis semantics (one Lua
dispatch script, ack sets, heartbeats, dead-worker requeue, delay and dead
letter queues) and adds:

* **wake-up**: a push that makes a queue's lane non-empty publishes on
  ``<namespace>:__wake__.<queue>`` inside the same script.  One pub/sub
  connection per process (:class:`WakeupListener`) turns that into a
  ``threading.Event`` the idle consumer waits on.  The wait is bounded by
  the worker timeout, after which the consumer polls as before, so a lost
  notification costs at most the old latency and never a message.  Waiting
  on the event costs Redis nothing, so idle load is the polling alone.
* **priority lanes**: the ``priority`` message option (``critical``,
  ``high``, ``normal``, ``low``) picks one of four lists per queue; see
  :class:`LanePolicy` for the order and the anti-starvation rule.
* **batch enqueue**: :meth:`WakeupRedisBroker.enqueue_many` sends many
  messages in one pipelined round trip (see :mod:`actors.broker.batch`).

Needs Redis (or Valkey) 7.0 or newer, for ``LMPOP``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from uuid import uuid4

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.logging import get_logger
from dramatiq.message import Message

from .acks import ACK_HOLD_ATTRIBUTE, PendingAcks
from .admission import ADMISSION_ATTRIBUTE, Admission, Verdict, cancel_channel
from .batch import EnqueueBatch, ReviveBatch
from .hooks import HookTable
from .lanes import DEFAULT_LANE, LanePolicy, lane_of
from .options import dead_letter_reasons_key
from .received import ReceivedMessage
from .redis_clients import RedisRoutes, dedicated_client, queue_client
from .replication import ReplicationTimeout

#: The dispatch script: Dramatiq's, plus lanes, wake-up and enqueue_many.
DISPATCH_SCRIPT = (Path(__file__).parent / "lua" / "dispatch.lua").read_bytes()

#: Oldest Redis whose commands the dispatch script uses (LMPOP).
MIN_SERVER_VERSION = (7, 0)

#: Client name of the wake-up listener's connection (shown by ``CLIENT LIST``).
LISTENER_CLIENT_NAME = "tradeflow-wakeup"

#: Longest pause before the wake-up listener reconnects, in seconds.
LISTENER_MAX_BACKOFF = 5.0

#: Cancelled message ids a process remembers (to skip messages fetched before the cancel).
MAX_REMEMBERED_CANCELLATIONS = 100_000

#: Default seconds between two reclaims of a consumer when no call failed: a client that retries
#: a command on its own (redis-py does for ``Redis(host=...)``) can lose a fetch's reply unseen.
RECLAIM_INTERVAL = 60.0


#: Redis set (under the namespace) of paused queues: the fetch script hands out none of their messages.
PAUSED_KEY = "__paused__"


def pause_queue(client: redis.Redis, namespace: str, queue_name: str) -> bool:
    """Stop consumers taking messages of ``queue_name`` (they stay queued); whether it was running.

    Only the waking broker's fetch honours it (``TRADEFLOW_STOCK_BROKER`` consumers do not).
    """
    return bool(client.sadd(f"{namespace}:{PAUSED_KEY}", queue_name))


def resume_queue(client: redis.Redis, namespace: str, queue_name: str) -> bool:
    """Let consumers take ``queue_name``'s messages again, waking idle ones; whether it was paused."""
    removed = bool(client.srem(f"{namespace}:{PAUSED_KEY}", queue_name))
    if removed:
        client.publish(f"{namespace}:__wake__.{queue_name}", 1)
    return removed


def paused_queues(client: redis.Redis, namespace: str) -> set[str]:
    return {member.decode() for member in client.smembers(f"{namespace}:{PAUSED_KEY}")}


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern."""
    return "".join(f"\\{char}" if char in "\\*?[]" else char for char in text)


class UniqueIds:
    """Ids unique across processes and hosts, cheaper than one ``uuid4`` each.

    A random 128-bit prefix, drawn again in a forked child, and a counter:
    ``<32 hex digits>-<n>``.  Used for Redis entry ids, which only need to be unique.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._source = ("", itertools.count())

    def next(self) -> str:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._source = (uuid4().hex, itertools.count())
                    self._pid = os.getpid()
        prefix, counter = self._source
        return f"{prefix}-{next(counter)}"


class WakeupListener:
    """One pub/sub connection per process that wakes idle consumers and hears cancellations.

    Subscribes to ``<namespace>:__wake__.*`` and sets the events of the
    consumers registered for the queue named in each notification; remembers
    the message ids published on the cancel channel, so a message admitted at
    fetch time and cancelled before it starts is still skipped.  On a
    connection error it reconnects with a back-off; meanwhile consumers poll.
    Fork-safe: a child process starts its own thread on first use.

    Parameters:
      client(redis.Redis): Connection settings to subscribe with.
      namespace(str): The broker's key prefix.
    """

    def __init__(self, *, client: redis.Redis, namespace: str) -> None:
        self.logger = get_logger(__name__, type(self))
        self.client = client
        self.prefix = f"{namespace}:__wake__."
        self.cancel_channel = cancel_channel(namespace)
        self.connected = threading.Event()
        self.connected_at = math.inf
        #: Ids of recently cancelled messages, oldest first.
        self.cancelled: dict[str, None] = {}
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._events: dict[str, set[threading.Event]] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: redis.client.PubSub | None = None
        self._failing = False

    def register(self, queue_name: str) -> threading.Event:
        """An event set whenever ``queue_name`` gets work (see :meth:`wait_connected`)."""
        self._ensure_started()
        event = threading.Event()
        with self._lock:
            self._events.setdefault(queue_name, set()).add(event)
        return event

    def unregister(self, queue_name: str, event: threading.Event) -> None:
        with self._lock:
            self._events.get(queue_name, set()).discard(event)

    def close(self) -> None:
        """Stop listening; a later consumer starts a new listener."""
        self._stopping.set()
        if self._thread is not None and self._pid == os.getpid():
            if self.connected.is_set():
                # A notification of no queue ends the thread's wait for the next one now.
                with contextlib.suppress(redis.RedisError):
                    self.client.publish(self.prefix, b"")
            self._thread.join(2)
        self._pid = None

    def _ensure_started(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._events = {}
            self.connected.clear()
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="tradeflow-wakeup", daemon=True)
            self._thread.start()

    def wait_connected(self, timeout: float = 1.0) -> None:
        """Give a new subscription a moment: a consumer that fetches before it is in place
        would miss a first notification (and poll for it)."""
        self.connected.wait(timeout)

    def _run(self) -> None:
        backoff = 0.05
        client = self._subscriber()
        while not self._stopping.is_set():
            try:
                self._listen(client)
                backoff = 0.05
            except Exception as exc:  # this thread must outlive any error: consumers rely on it
                self.connected.clear()
                log = self.logger.debug if self._failing else self.logger.warning
                log("Wake-up listener failed (%s); consumers poll until it reconnects.", exc)
                self._failing = True
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, LISTENER_MAX_BACKOFF)
        client.close()

    def heard_cancellations_since(self, moment: float) -> bool:
        """Whether every cancellation published since ``moment`` (``time.monotonic()``) was heard."""
        return self.connected.is_set() and self.connected_at <= moment

    def _listen(self, client: redis.Redis) -> None:
        pubsub = self._pubsub = client.pubsub()
        try:
            pubsub.psubscribe(glob_escape(self.prefix) + "*")
            pubsub.subscribe(self.cancel_channel)
            while not self._stopping.is_set():
                notification = pubsub.get_message(timeout=1.0)
                if notification is None:
                    continue
                kind = notification["type"]
                if kind == "pmessage":
                    self._wake(notification["channel"].decode()[len(self.prefix) :])
                elif kind == "message":
                    self._remember_cancelled(notification["data"].decode())
                elif kind == "subscribe":  # confirmed after the psubscribe: both are in place
                    self._on_subscribed()
        finally:
            self.connected.clear()
            pubsub.close()

    def _remember_cancelled(self, message_id: str) -> None:
        self.cancelled[message_id] = None
        if len(self.cancelled) > MAX_REMEMBERED_CANCELLATIONS:
            del self.cancelled[next(iter(self.cancelled))]

    def _on_subscribed(self) -> None:
        if self._failing:
            self.logger.info("Wake-up listener reconnected.")
            self._failing = False
        self.connected_at = time.monotonic()
        self.connected.set()

    def _subscriber(self) -> redis.Redis:
        """A client like the broker's, named so ``CLIENT LIST`` shows what the connection is."""
        return dedicated_client(self.client, client_name=LISTENER_CLIENT_NAME)

    def _wake(self, queue_name: str) -> None:
        with self._lock:
            events = tuple(self._events.get(queue_name, ()))
        for event in events:
            event.set()


class WakeupConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, waiting on a wake-up event instead of sleeping.

    After an empty fetch it waits until a notification arrives or the
    timeout passes (then it polls: the fallback for lost notifications); on
    a delay queue it also wakes when the earliest held message becomes due.
    With its prefetch full it waits for an ack instead of a growing sleep.
    Acks are deferred (:mod:`actors.broker.acks`): sent with the next fetch, once
    their holds are released.

    After a broker call failed (and every ``reclaim_interval``) it
    *reclaims*: puts back the messages of its ack set that this process does
    not hold, such as those a fetch took whose reply the connection lost.
    Otherwise they would wait for this process to die (Dramatiq's behaviour).
    Construction makes no broker call, like Dramatiq's consumer; the first
    ``__next__`` checks the server and waits for the wake-up subscription.
    """

    def __init__(self, broker: WakeupRedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self.is_delay_queue = queue_name.endswith(".DQ")
        self.lanes = LanePolicy(aging_every=broker.aging_every)
        self.room = threading.Event()
        self.etas: dict[str, int] = {}
        self.wakeup = broker.listener_for(queue_name).register(queue_name)
        self.pending = broker.pending_acks(queue_name)
        self.pending.opened()
        admission = None if self.is_delay_queue else broker.admission
        #: ARGV of fetch that turns admission at fetch time on (ttl, max deliveries) or off.
        self.admit_args = (admission.ttl, admission.max_deliveries) if admission else (0, 0)
        self._fetched_at = 0.0
        self._started = False
        self._closed = False
        self._reclaimed_at = time.monotonic()

    def ack(self, message: MessageProxy) -> None:
        self.pending.add(message.options["redis_message_id"], getattr(message, ACK_HOLD_ATTRIBUTE, None))
        self.queued_message_ids.discard(message.message_id)
        self._release(message)

    def nack(self, message: MessageProxy) -> None:
        try:
            super().nack(message)
            self.pending.dropped((message.options["redis_message_id"],))
        finally:
            self._release(message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        messages = list(messages)
        self._requeue_ids([message.options["redis_message_id"] for message in messages])
        for message in messages:
            self.etas.pop(message.message_id, None)

    def close(self) -> None:
        if self._closed:  # Dramatiq closes a consumer twice after an unexpected error
            return
        self._closed = True
        self.broker.listener_for(self.queue_name).unregister(self.queue_name, self.wakeup)
        self._send_acks(self.pending.take_all(timeout=self.broker.ack_flush_timeout))
        # Fetched but never handed to a worker thread: back to the queue now,
        # not after the heartbeat timeout, and not counted as delivered.
        cached, self.message_cache = self.message_cache, []
        ids = [message.options["redis_message_id"] for message, _ in cached if message is not None]
        try:
            self._requeue_ids(ids)
        except redis.ConnectionError as exc:
            self.logger.warning("Could not requeue %d fetched messages (%s): reclaimed later.", len(ids), exc)
        if self.is_delay_queue:
            # What the consumer thread still holds of a delay queue here is lost to it (it drops
            # its delay queue on a connection error, after requeueing it on a clean stop).
            self.pending.dropped(self.pending.held())
            self.pending.suspect = True
        self.pending.closed()

    def _requeue_ids(self, redis_message_ids: list[str]) -> None:
        if not redis_message_ids:
            return
        command = "requeue_admitted" if self.admit_args[0] else "requeue"
        try:
            self.broker.do_dispatch(command, self.queue_name, *redis_message_ids)
        except redis.ConnectionError:
            self.pending.suspect = True  # it may not have run: the next reclaim puts them back
            raise
        finally:
            self.pending.dropped(redis_message_ids)

    def __next__(self) -> MessageProxy | None:
        try:
            if not self._started:
                self.broker.check_server()
                self.broker.listener_for(self.queue_name).wait_connected()
                self._started = True
            if self.pending.suspect or time.monotonic() - self._reclaimed_at > self.broker.reclaim_interval:
                self._reclaim()
            while True:
                if self.message_cache:
                    message = self._take()
                    if message is not None:
                        return message
                    continue
                acks = self.pending.take_released(self._poke)
                room = self.prefetch - self.outstanding_message_count
                if room <= 0 and not acks:
                    self._wait_for_room()
                    return None
                self.wakeup.clear()
                self.message_cache = self._fetch(max(room, 0), acks)
                if room <= 0:
                    continue
                if not self.message_cache:
                    self.wakeup.wait(self._idle_wait())
                    return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def _fetch(self, room: int, acks: list[str]) -> list[tuple[Message | None, str | None]]:
        """(message, verdict) of up to ``room`` messages; ``acks`` go out in the same call."""
        self._fetched_at = time.monotonic()
        try:
            reply = self.broker.do_dispatch(
                "fetch", self.queue_name, room, *self.admit_args, len(acks), *acks, *self._lane_order()
            )
        except Exception:
            self.pending.put_back(acks)
            self.pending.suspect = True  # the call may have run (a lost reply): what it took is reclaimed
            raise
        foreign = reply.pop() if reply and isinstance(reply[-1], list) else None
        if self.admit_args[0]:
            fetched = [(reply[i], reply[i + 1].decode()) for i in range(0, len(reply), 2)]
        else:
            fetched = [(data, None) for data in reply]
        # Decoded now, not when handed out: the process holds them from here on.
        if foreign:
            messages = self._decode_with_foreign(fetched, foreign)
        else:
            messages = [
                (None if data is None else Message.decode(data), verdict) for data, verdict in fetched
            ]
        self.pending.taken(message.options["redis_message_id"] for message, _ in messages if message)
        return messages

    def _reclaim(self) -> None:
        """Put back what this worker's ack set of the queue holds that this process does not."""
        self._reclaimed_at = time.monotonic()
        if self.pending.consumers != 1:  # another consumer here may be between a fetch and its reply
            return
        self.pending.suspect = False
        held = self.pending.held()
        try:
            admitted = int(bool(self.admit_args[0]))
            reclaimed = self.broker.do_dispatch("reclaim", self.queue_name, admitted, *held)
        except Exception:
            self.pending.suspect = True
            raise
        if reclaimed:
            self.logger.warning(
                "Put back %d messages of %r taken by calls whose reply was lost.", reclaimed, self.queue_name
            )

    def _decode_with_foreign(
        self, fetched: list[tuple[bytes | None, str | None]], foreign: list
    ) -> list[tuple[Message | None, str | None]]:
        """Decode ``fetched``; messages of non-Dramatiq producers get the Redis id they were stored under.

        ``foreign`` is ``[index, id, ...]`` (1-based) from the fetch script: the
        entries without a ``redis_message_id`` option.  One that does not decode
        as a message goes to the dead letters with the reason, not to a worker.
        """
        redis_ids = {int(foreign[i]) - 1: foreign[i + 1].decode() for i in range(0, len(foreign), 2)}
        messages: list[tuple[Message | None, str | None]] = []
        for index, (data, verdict) in enumerate(fetched):
            redis_id = redis_ids.get(index)
            if data is None:
                messages.append((None, verdict))
            elif redis_id is None:
                messages.append((Message.decode(data), verdict))
            else:
                messages.append((self._adopt(redis_id, data), verdict))
        return messages

    def _adopt(self, redis_id: str, data: bytes) -> Message | None:
        try:
            message = Message.decode(data)
            if not isinstance(message.options, dict):
                raise DecodeError(f"options must be an object, not {type(message.options).__name__}")
        except DecodeError as exc:
            self._reject_undecodable(redis_id, data, exc)
            return None
        return Message(**{**vars(message), "options": {**message.options, "redis_message_id": redis_id}})

    def _reject_undecodable(self, redis_id: str, data: bytes, exc: Exception) -> None:
        reason = f"not a Dramatiq message: {exc.__cause__ or exc}"
        self.logger.error(
            "Message %r on queue %r goes to the dead letters: %s (data %.200r)",
            redis_id,
            self.queue_name,
            reason,
            data,
        )
        record = json.dumps({"reason": reason, "attempts": 1})
        queue_client(self.broker, self.queue_name).hset(
            dead_letter_reasons_key(self.broker.namespace), redis_id, record
        )
        self.broker.do_dispatch("nack", self.queue_name, redis_id)

    def _send_acks(self, acks: list[str]) -> None:
        """Ack ``acks`` now (on close).  On a failure they stay pending, for the consumer
        Dramatiq starts after a connection error; if the process stops first, they run again."""
        if not acks:
            return
        try:
            self._fetch(0, acks)
        except redis.ConnectionError as exc:
            self.logger.error(
                "Could not ack %d finished messages of %r (%s): kept for the next consumer; "
                "if this process stops first, they run again after the heartbeat timeout.",
                len(acks),
                self.queue_name,
                exc,
            )

    def _take(self) -> MessageProxy | None:
        message, verdict = self.message_cache.pop(0)
        if message is None:  # its data is gone (acked elsewhere after a requeue): nothing to run
            return None
        self.queued_message_ids.add(message.message_id)
        eta = message.options.get("eta")
        if self.is_delay_queue and isinstance(eta, int | float):
            self.etas[message.message_id] = eta
        proxy = ReceivedMessage(message)
        if verdict is not None:
            setattr(proxy, ADMISSION_ATTRIBUTE, Verdict.parse(verdict, fetched_at=self._fetched_at))
        return proxy

    def _lane_order(self) -> Sequence[str]:
        return (DEFAULT_LANE,) if self.is_delay_queue else self.lanes.next_order()

    def _idle_wait(self) -> float:
        """Seconds to wait for a notification: the poll interval, or less if a delayed message falls due."""
        wait_ms = self.timeout
        if self.etas:
            wait_ms = min(wait_ms, max(0, min(self.etas.values()) - current_millis()))
        return wait_ms / 1000

    def _wait_for_room(self) -> None:
        self.room.clear()
        if self.outstanding_message_count >= self.prefetch and not self.pending.any_released():
            self.room.wait(self._idle_wait())

    def _release(self, message: MessageProxy) -> None:
        self.etas.pop(message.message_id, None)
        self._poke()

    def _poke(self) -> None:
        """Make the consumer loop run again now: room freed, or an ack to send."""
        self.room.set()
        self.wakeup.set()


class WakeupRedisBroker(HookTable, RedisBroker):
    """Dramatiq's :class:`~dramatiq.brokers.redis.RedisBroker` with wake-up, lanes and batch enqueue.

    Middleware hooks go only to the middleware that implement them (:class:`~actors.broker.hooks.HookTable`).

    Parameters:
      aging_every(int): See :class:`LanePolicy`.  Defaults to 8.
      prefetch_scale(float): Fraction of Dramatiq's queue prefetch (twice
        the worker threads) a consumer keeps.  Defaults to 0.5: one message
        per thread, so a critical message fetched when a thread frees up
        starts at once instead of queueing behind locally held ones.
      ack_flush_timeout(float): Seconds a closing consumer waits for the
        holds of its deferred acks (e.g. audit rows being committed).
        Defaults to 5.
      reclaim_interval(float): Seconds between two reclaims of a consumer
        when none of its calls failed (see :class:`WakeupConsumer`).
        Defaults to :data:`RECLAIM_INTERVAL` (60).
      routes(RedisRoutes | None): Which Redis each queue lives on
        (:mod:`actors.broker.redis_clients`); its default client is the broker's
        ``client``.  Defaults to the one client for every queue.
      confirm_replicas(int): ``enqueue`` of a ``critical`` message returns once
        this many replicas acknowledged it (Redis ``WAIT``).  Defaults to 0: never waits.
      confirm_timeout(int): Milliseconds such a wait may take before
        :class:`ReplicationTimeout` is raised.  Defaults to 1000.
      **kwargs: Everything :class:`~dramatiq.brokers.redis.RedisBroker` takes.
    """

    #: Acks are deferred and honour :data:`actors.broker.acks.ACK_HOLD_ATTRIBUTE`.
    defers_acks = True

    def __init__(
        self,
        *,
        aging_every: int = 8,
        prefetch_scale: float = 0.5,
        ack_flush_timeout: float = 5.0,
        reclaim_interval: float = RECLAIM_INTERVAL,
        routes: RedisRoutes | None = None,
        confirm_replicas: int = 0,
        confirm_timeout: int = 1_000,
        **kwargs,
    ) -> None:
        if reclaim_interval <= 0:
            raise ValueError(f"reclaim_interval must be > 0 (got {reclaim_interval})")
        if aging_every < 0:
            raise ValueError(f"aging_every must be >= 0 (got {aging_every})")
        if not 0 < prefetch_scale <= 1:
            raise ValueError(f"prefetch_scale must be in (0, 1] (got {prefetch_scale})")
        if routes is not None:
            kwargs["client"] = routes.default
        super().__init__(**kwargs)
        self.routes = routes or RedisRoutes(default=self.client)
        self.aging_every = aging_every
        self.prefetch_scale = prefetch_scale
        self.confirm_replicas = confirm_replicas
        self.confirm_timeout = confirm_timeout
        self.scripts["dispatch"] = self.client.register_script(DISPATCH_SCRIPT)
        # one dispatch script object and one wake-up listener per distinct Redis
        self._dispatchers = {id(self.client): self.scripts["dispatch"]}
        self._listeners = {id(self.client): WakeupListener(client=self.client, namespace=self.namespace)}
        for client in self.routes.clients()[1:]:
            self._dispatchers[id(client)] = client.register_script(DISPATCH_SCRIPT)
            self._listeners[id(client)] = WakeupListener(client=client, namespace=self.namespace)
        self.listener = self._listeners[id(self.client)]
        self.ack_flush_timeout = ack_flush_timeout
        self.reclaim_interval = reclaim_interval
        self._redis_ids = UniqueIds()
        self._pending_acks: dict[str, PendingAcks] = {}
        self._server_checked = False

    @property
    def admission(self) -> Admission | None:
        """The Admission middleware, which consumers then run at fetch time."""
        return next((m for m in self.middleware if isinstance(m, Admission)), None)

    def do_dispatch(self, command: str, queue_name: str, *args) -> object:
        """One call of the dispatch script.

        What Dramatiq's ``do_<command>`` attributes do, as a method: those come
        from ``RedisBroker.__getattr__``, reached only after a failed lookup
        has built an ``AttributeError``, and build a closure per call.
        """
        return self.dispatcher_for(queue_name)(
            args=self._dispatch_args(command, queue_name, *args), keys=[self.namespace]
        )

    def _dispatch(self, command: str):
        """Dramatiq's ``do_<command>`` (flush, join, its consumer's calls), routed by queue."""
        return lambda queue_name, *args: self.do_dispatch(command, queue_name, *args)

    def client_for(self, queue_name: str) -> redis.Redis:
        """The Redis ``queue_name`` lives on."""
        return self.routes.client_for(queue_name)

    def dispatcher_for(self, queue_name: str) -> redis.commands.core.Script:
        """The dispatch script registered with the Redis of ``queue_name``."""
        return self._dispatchers[id(self.routes.client_for(queue_name))]

    def listener_for(self, queue_name: str) -> WakeupListener:
        """The wake-up listener subscribed on the Redis of ``queue_name``."""
        return self._listeners[id(self.routes.client_for(queue_name))]

    def listeners(self) -> list[WakeupListener]:
        """Every wake-up listener, one per distinct Redis, the default's first."""
        return list(self._listeners.values())

    def pending_acks(self, queue_name: str) -> PendingAcks:
        """The deferred acks of ``queue_name`` in this process."""
        pending = self._pending_acks.get(queue_name)
        if pending is None:
            pending = self._pending_acks.setdefault(queue_name, PendingAcks())
        return pending

    @property
    def consumer_class(self) -> type[WakeupConsumer]:
        return WakeupConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> WakeupConsumer:
        if not queue_name.endswith(".DQ"):
            prefetch = max(1, math.ceil(prefetch * self.prefetch_scale))
        return self.consumer_class(self, queue_name, prefetch, timeout)

    def close(self) -> None:
        for listener in self.listeners():
            listener.close()
        super().close()

    def check_server(self) -> None:
        """Fail with the fix when a server is too old for the dispatch script."""
        if self._server_checked:
            return
        for client in self.routes.clients():
            version = str(client.info("server").get("redis_version", "0"))
            if tuple(int(part) for part in version.split(".")[:2] if part.isdigit()) < MIN_SERVER_VERSION:
                raise RuntimeError(
                    f"tradeflow's broker needs Redis or Valkey >= 7.0 (LMPOP); this server is {version}."
                    " Upgrade it, or set TRADEFLOW_STOCK_BROKER=true for Dramatiq's own broker."
                )
        self._server_checked = True

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        """Enqueue ``message`` on the lane its ``priority`` option names (see :data:`LANES`)."""
        lane = lane_of(message)
        message, queue_name = self._prepare(message, delay)
        lane = DEFAULT_LANE if delay is not None else lane  # the delay queue has one lane
        self.logger.debug("Enqueueing message %r on queue %r.", message.message_id, queue_name)
        self.emit_before("enqueue", message, delay)
        args = (message.options["redis_message_id"], message.encode(), lane)
        if lane == "critical" and self.confirm_replicas:
            self._enqueue_confirmed(queue_name, message, args)
        else:
            self.do_dispatch("enqueue", queue_name, *args)
        self.emit_after("enqueue", message, delay)
        return message

    def _enqueue_confirmed(self, queue_name: str, message: Message, args: tuple) -> None:
        """Enqueue, then ``WAIT`` for ``confirm_replicas`` replicas: on the same connection
        (a pipeline holds one), since ``WAIT`` covers the writes of its own connection."""
        with self.client_for(queue_name).pipeline(transaction=False) as pipe:
            self.dispatcher_for(queue_name)(
                args=self._dispatch_args("enqueue", queue_name, *args), keys=[self.namespace], client=pipe
            )
            pipe.execute_command("WAIT", self.confirm_replicas, self.confirm_timeout)
            acknowledged = pipe.execute()[-1]
        if acknowledged < self.confirm_replicas:
            raise ReplicationTimeout(message, acknowledged=acknowledged, wanted=self.confirm_replicas)

    def enqueue_many(self, messages: Sequence[Message], *, delay: int | None = None) -> list[Message]:
        """Enqueue ``messages`` in one pipelined round trip; returns them as enqueued, in order.

        Each message gets its ``before_enqueue`` hook first and its
        ``after_enqueue`` hook once Redis confirmed it.  Raises
        :class:`actors.broker.batch.SendManyError` (naming the enqueued, not
        enqueued and unknown messages) if anything fails part way.
        """
        return EnqueueBatch(self, messages, delay=delay).run()

    def revive_many(self, queue_name: str, letters: Sequence[tuple[str, Message]]) -> list[Message]:
        """Dead letters of ``queue_name`` back on it: ``letters`` are (Redis id in the dead-letter
        queue, fresh message); returns the messages revived (not those retried or purged
        meanwhile), in order.  Atomic per :data:`~actors.broker.batch.ENQUEUE_CHUNK` letters: see
        :class:`actors.broker.batch.ReviveBatch`.
        """
        reasons_key = dead_letter_reasons_key(self.namespace)
        return ReviveBatch(self, queue_name=queue_name, letters=letters, reasons_key=reasons_key).run()

    def _prepare(self, message: Message, delay: int | None) -> tuple[Message, str]:
        """The message as stored (own Redis id, eta when delayed) and the queue it goes to."""
        options = {**message.options, "redis_message_id": self._redis_ids.next()}
        queue_name = message.queue_name
        if delay is not None:
            queue_name = dq_name(queue_name)
            options["eta"] = current_millis() + delay
        # The constructor, not message.copy(): dataclasses.replace costs more than the rest of a send.
        stored = Message(
            queue_name=queue_name,
            actor_name=message.actor_name,
            args=message.args,
            kwargs=message.kwargs,
            options=options,
            message_id=message.message_id,
            message_timestamp=message.message_timestamp,
        )
        return stored, queue_name

    def _dispatch_args(self, command: str, queue_name: str, *args) -> list:
        """ARGV of one dispatch call, as Dramatiq's ``_dispatch`` builds it."""
        return [
            command,
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            self._should_do_maintenance(command),
            self._max_unpack_size(),
            *args,
        ]
