"""The gate every message passes before it runs: cancelled, duplicate or poison?

One Lua call decides, against two keys.  On tradeflow's broker it runs inside
the consumer's fetch (``actors/lua/dispatch.lua``), for every message taken,
so it costs no round trip; the verdict travels on the message.  A message
cancelled after that is still skipped: the cancel is published and the
process's wake-up listener remembers it (if the listener was not connected
throughout, the cancel key is read instead).  A message taken but requeued
unstarted (worker shutdown) has its delivery taken back.  On any other
broker the call is made here, per message.  The keys:

* ``<ns>:cancel:<message id>``: set by :func:`actors.middleware.cancellation.cancel_job`; the
  message is skipped and recorded ``cancelled``.
* ``<ns>:admit:<message id>:<audit base>:<attempt>[:<salt>]``: the first Redis entry
  (``redis_message_id``) to start this attempt claims it.  Another entry of the
  same attempt is a duplicate (Dramatiq's delay-queue move, an outbox relay
  resend, two schedulers) and is dropped; the same entry coming back was
  redelivered after its worker died, and counts a delivery.  After
  ``max_deliveries`` deliveries that never finished, the message is dead-lettered
  with ``worker crashed N times`` instead of killing another worker.  A message
  sent again on purpose (:func:`readmit`: the saga's recovery sweep, a delivery
  postponed by :func:`postpone`) carries a salt that makes its key its own, and
  the deliveries of its earlier copies that died, which still count.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from dramatiq import Broker, Middleware
from dramatiq.logging import get_logger
from dramatiq.message import Message
from dramatiq.middleware import SkipMessage

from .options import (
    ADMISSION_SALT,
    AUDIT_SEQ_BASE,
    DEAD_LETTER_REASON,
    DUPLICATE,
    PRIOR_DELIVERIES,
    SKIP_REASON,
    SKIP_STATUS,
)
from .redis_clients import queue_client, routes_of

_ADMIT = """
if redis.call('exists', KEYS[2]) == 1 then
    return {'cancelled', 0}
end
local owner = redis.call('hget', KEYS[1], 'rid')
if owner and owner ~= ARGV[1] then
    return {'duplicate', 0}
end
local deliveries = redis.call('hincrby', KEYS[1], 'deliveries', 1) + tonumber(ARGV[4])
if not owner then
    redis.call('hset', KEYS[1], 'rid', ARGV[1])
end
redis.call('pexpire', KEYS[1], ARGV[2])
if deliveries > tonumber(ARGV[3]) then
    return {'poison', deliveries - 1}
end
return {'run', deliveries}
"""


#: Cancels the messages whose admission key (``KEYS[2i-1]``) counts no delivery by setting
#: their cancel key (``KEYS[2i]``) to ``ARGV[2]`` for ``ARGV[1]`` ms; returns their positions.
_WITHDRAW = """
local withdrawn = {}
for i = 1, #KEYS, 2 do
    if tonumber(redis.call('hget', KEYS[i], 'deliveries') or '0') == 0 then
        redis.call('set', KEYS[i + 1], ARGV[2], 'PX', ARGV[1])
        withdrawn[#withdrawn + 1] = (i + 1) / 2
    end
end
return withdrawn
"""

#: How long a withdrawn message's cancel key is kept, in milliseconds: as long as a job's
#: (``actors.middleware.cancellation.DEFAULT_CANCEL_TTL``), longer than the longest delay.
WITHDRAW_TTL = 8 * 86_400_000

#: Attribute of a MessageProxy holding the :class:`Verdict` of its fetch.
ADMISSION_ATTRIBUTE = "tradeflow_admission"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What admission decided: ``run`` (the ``count``-th delivery), ``cancelled``,
    ``duplicate`` or ``poison`` (``count`` deliveries died), and when the message was fetched."""

    outcome: str
    count: int
    fetched_at: float = 0.0

    @classmethod
    def parse(cls, text: str, *, fetched_at: float = 0.0) -> Verdict:
        outcome, _, count = text.partition(":")
        return cls(outcome, int(count or 0), fetched_at)


def first_delivery(message: Message) -> bool | None:
    """Whether admission counted this delivery as the message's first (None: not admitted).

    A first delivery is the only one of its message that can be running: a
    duplicate send is dropped, and a redelivery counts two or more."""
    verdict = getattr(message, ADMISSION_ATTRIBUTE, None)
    if verdict is None or verdict.outcome != "run":
        return None
    return verdict.count == 1


def withdraw_unstarted(broker: Broker, message_ids: Sequence[str]) -> set[str]:
    """Cancel those of ``message_ids`` (first attempts) that no worker has admitted yet, and
    return them: from now on admission skips them, atomically with respect to a fetch.  The
    saga engine withdraws the messages of steps whose run stopped before they started."""
    if not message_ids:
        return set()
    keys = []
    for message_id in message_ids:
        keys += [attempt_key(broker.namespace, message_id), cancel_key(broker.namespace, message_id)]
    # The ids do not say which queue (so which Redis) holds each message: withdraw on every
    # Redis; a message is withdrawn where it was admitted nowhere (it can only be admitted
    # on its own queue's Redis, so that one decides).
    withdrawn: set[str] | None = None
    for client in routes_of(broker).clients():
        positions = client.eval(_WITHDRAW, len(keys), *keys, WITHDRAW_TTL, "withdrawn: its workflow stopped")
        here = {message_ids[position - 1] for position in positions}
        withdrawn = here if withdrawn is None else withdrawn & here
    return withdrawn or set()


def cancel_key(namespace: str, message_id: str) -> str:
    return f"{namespace}:cancel:{message_id}"


def cancel_channel(namespace: str) -> str:
    """Where cancelled message ids are published (see :func:`actors.middleware.cancellation.cancel_job`)."""
    return f"{namespace}:__cancel__"


def admission_key(namespace: str, message: Message) -> str:
    options = message.options
    key = attempt_key(
        namespace, message.message_id, base=options.get(AUDIT_SEQ_BASE, 0), retries=options.get("retries", 0)
    )
    salt = options.get(ADMISSION_SALT)
    return f"{key}:{salt}" if isinstance(salt, str) else key


def attempt_key(namespace: str, message_id: str, *, base: int = 0, retries: int = 0) -> str:
    """The admission key of one attempt of a message (by default its first)."""
    return f"{namespace}:admit:{message_id}:{base}:{retries}"


def readmit(message: Message, *, prior_deliveries: int = 0) -> Message:
    """``message`` (changed in place) made a copy that admission counts on its own, not a
    duplicate of the copies sent before; ``prior_deliveries`` of those died running it and
    count towards ``max_deliveries``.  The saga engine's recovery sweep sends with it: its
    copy of a lost step must run even if an earlier copy was admitted and then lost."""
    message.options[ADMISSION_SALT] = uuid.uuid4().hex[:12]
    if prior_deliveries:
        message.options[PRIOR_DELIVERIES] = prior_deliveries
    else:
        message.options.pop(PRIOR_DELIVERIES, None)
    return message


def forgo_retry(broker: Broker, message: Message) -> None:
    """Make admission drop, unrecorded, the retry of ``message`` that ``Retries`` just sent
    (its ``retries`` option already counts it): claim that attempt for no Redis entry."""
    key = admission_key(broker.namespace, message)
    # Admitted on the Redis of its queue (see ``redis_clients``): claimed there.
    with queue_client(broker, message.queue_name).pipeline(transaction=False) as pipe:
        pipe.hsetnx(key, "rid", "forgone")
        pipe.pexpire(key, WITHDRAW_TTL)
        pipe.execute()


def postpone(broker: Broker, message: Message, delay_ms: int) -> None:
    """Send a delivered ``message`` again in ``delay_ms`` as a copy of its own (see
    :func:`readmit`) carrying the count of its deliveries that died, and let this delivery
    end unrecorded: the saga middleware postpones a redelivered step whose lease still
    holds (its worker died; acking it would lose the step) until the lease ends."""
    verdict = getattr(message, ADMISSION_ATTRIBUTE, None)
    delivered = verdict.count if verdict is not None and verdict.outcome == "run" else 1
    copy = Message(
        queue_name=message.queue_name,
        actor_name=message.actor_name,
        args=message.args,
        kwargs=message.kwargs,
        options={**message.options},
        message_id=message.message_id,
        message_timestamp=message.message_timestamp,
    )
    broker.enqueue(readmit(copy, prior_deliveries=delivered - 1), delay=delay_ms)
    message.options[SKIP_STATUS] = DUPLICATE  # the copy owns the audit row
    message.options[SKIP_REASON] = f"postponed by {delay_ms} ms"


class Admission(Middleware):
    """Skips cancelled and duplicate messages and quarantines poison ones, before they run.

    Must come before ``Audit`` so a skipped message is never recorded ``running``.

    Parameters:
      max_deliveries(int): Deliveries of one attempt whose worker died before a
        message is dead-lettered.  Defaults to 3.
      ttl(int): How long an attempt's claim is kept, in milliseconds (the window
        in which a duplicate is recognised).  Defaults to one day.
    """

    def __init__(self, *, max_deliveries: int = 3, ttl: int = 86_400_000) -> None:
        self.logger = get_logger(__name__, type(self))
        self.max_deliveries = max_deliveries
        self.ttl = ttl
        self._script = None

    def before_process_message(self, broker: Broker, message: Message) -> None:
        fetched = getattr(message, ADMISSION_ATTRIBUTE, None)
        if fetched is None:
            verdict, count = self._admit(broker, message)
            setattr(message, ADMISSION_ATTRIBUTE, Verdict(verdict, count))
        else:
            verdict, count = fetched.outcome, fetched.count
            if verdict == "run" and self._cancelled_since(broker, message, fetched.fetched_at):
                verdict = "cancelled"
        if verdict == "run":
            return
        if verdict == "cancelled":
            self._skip(message, "cancelled", "cancelled before it started")
        elif verdict == "duplicate":
            message.options["store_results"] = False  # keep the original run's result
            self._skip(message, DUPLICATE, "duplicate delivery")
        reason = f"worker crashed {count} times"
        message.options[DEAD_LETTER_REASON] = reason
        message.fail()
        self._skip(message, "dead_letter", reason)

    def _admit(self, broker: Broker, message: Message) -> tuple[str, int]:
        if self._script is None:
            self._script = broker.client.register_script(_ADMIT)
        namespace = broker.namespace
        verdict, count = self._script(
            keys=[admission_key(namespace, message), cancel_key(namespace, message.message_id)],
            args=[
                message.options.get("redis_message_id", ""),
                self.ttl,
                self.max_deliveries,
                int(message.options.get(PRIOR_DELIVERIES, 0) or 0),
            ],
            client=queue_client(broker, message.queue_name),
        )
        return (verdict.decode() if isinstance(verdict, bytes) else verdict), count

    def _cancelled_since(self, broker: Broker, message: Message, fetched_at: float) -> bool:
        """Was the message cancelled after its fetch admitted it?"""
        listener_for = getattr(broker, "listener_for", None)
        listener = listener_for(message.queue_name) if listener_for is not None else None
        if listener is not None and listener.heard_cancellations_since(fetched_at):
            return message.message_id in listener.cancelled
        client = queue_client(broker, message.queue_name)
        return bool(client.exists(cancel_key(broker.namespace, message.message_id)))

    def _skip(self, message: Message, status: str, reason: str) -> None:
        self.logger.warning("Skipping message %r: %s.", message.message_id, reason)
        message.options[SKIP_STATUS] = status
        message.options[SKIP_REASON] = reason
        raise SkipMessage(reason)
