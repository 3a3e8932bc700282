"""Deferred acks: a finished message is acked on its consumer's next broker call.

Stock Dramatiq acks each message with its own Redis round trip, from the
worker thread, and the audit trail made that thread wait for the message's
row to commit first (so a SIGKILL can never leave a row ``running`` for a
message that completed).  Here the worker thread only records the ack and
moves on; the queue's consumer sends every ack whose hold is released
together with its next fetch, in one script call.

A *hold* is what an ack must wait for (:class:`AckHold`; the audit trail's
commit is one).  A message without a hold is acked on the next call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from dramatiq.broker import MessageProxy

#: Attribute of a :class:`~dramatiq.broker.MessageProxy` naming what its ack waits for.
ACK_HOLD_ATTRIBUTE = "tradeflow_ack_hold"


class AckHold(Protocol):
    """What a deferred ack waits for."""

    def released(self) -> bool:
        """True once the ack may go to Redis."""

    def notify(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once) when :meth:`released` may have become true."""

    def wait(self, timeout: float) -> None:
        """Block until released, for at most ``timeout`` seconds."""


def hold_ack(message: MessageProxy, hold: AckHold) -> None:
    """Make ``message``'s ack wait for ``hold`` (on brokers that defer acks)."""
    setattr(message, ACK_HOLD_ATTRIBUTE, hold)


class PendingAcks:
    """The finished messages of one queue whose ack has not reached Redis yet, and what else
    this process holds of the queue.

    Shared by every consumer of the queue in a process, so the consumer
    Dramatiq starts after a connection error sends what the old one could not.
    A message is *in hand* from the fetch that took it until its ack is
    recorded (then it is pending) or its nack or requeue reached Redis;
    :meth:`held` (in hand or pending) is what a reclaim must leave alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[str, AckHold | None]] = []
        self._in_hand: set[str] = set()
        #: Open consumers of the queue in this process (a reclaim needs to be the only one).
        self.consumers = 0
        #: Set when a broker call may have left messages in the ack set that nobody holds.
        self.suspect = False

    def opened(self) -> None:
        with self._lock:
            self.consumers += 1

    def closed(self) -> None:
        with self._lock:
            self.consumers -= 1

    def taken(self, redis_message_ids: Iterable[str]) -> None:
        """Messages a fetch took: in hand until acked, nacked or requeued."""
        with self._lock:
            self._in_hand.update(redis_message_ids)

    def dropped(self, redis_message_ids: Iterable[str]) -> None:
        """Messages no longer held (nacked, requeued, or left to a reclaim)."""
        with self._lock:
            self._in_hand.difference_update(redis_message_ids)

    def held(self) -> list[str]:
        """Every id in hand or pending, at one instant."""
        with self._lock:
            return [*self._in_hand, *(redis_message_id for redis_message_id, _ in self._entries)]

    def add(self, redis_message_id: str, hold: AckHold | None) -> None:
        with self._lock:
            self._entries.append((redis_message_id, hold))
            self._in_hand.discard(redis_message_id)

    def any_released(self) -> bool:
        """Whether an ack could go now."""
        with self._lock:
            return any(hold is None or hold.released() for _, hold in self._entries)

    def take_released(self, wake: Callable[[], None]) -> list[str]:
        """The ids whose ack may go now; ``wake`` is called when a held one is released."""
        with self._lock:
            if not self._entries:
                return []
            ready, held = [], []
            for entry in self._entries:
                hold = entry[1]
                (ready if hold is None or hold.released() else held).append(entry)
            self._entries = held
        if held:
            held[0][1].notify(wake)
        return [redis_message_id for redis_message_id, _ in ready]

    def put_back(self, redis_message_ids: list[str]) -> None:
        """Ids whose ack call failed: sent again with the next call."""
        with self._lock:
            self._entries[:0] = [(redis_message_id, None) for redis_message_id in redis_message_ids]

    def take_all(self, *, timeout: float) -> list[str]:
        """Every id, after waiting (up to ``timeout`` seconds in all) for their holds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            entries, self._entries = self._entries, []
        for _, hold in entries:
            if hold is not None:
                hold.wait(max(0.0, deadline - time.monotonic()))
        return [redis_message_id for redis_message_id, _ in entries]
