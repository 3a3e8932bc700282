"""The outbox relay: committed outbox rows to Redis, at least once, in order of commit.

Services write with :func:`enqueue_in_transaction` (or ``storage.add_to_outbox``)
on their own connection; ``tradeflow outbox relay`` runs :class:`OutboxRelay`.
A relay that dies after enqueueing a batch but before marking it sent sends it
again: the copies carry the same message id and :class:`actors.broker.admission.Admission`
runs only one of them.  On PostgreSQL several relays can run at once (rows are
claimed with ``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.logging import get_logger
from dramatiq.message import Message
from sqlalchemy import Connection, Engine

from storage import OutboxMessage, add_to_outbox, claim_unsent, mark_sent

#: Longest pause after a failed relay pass (Redis or database away), in seconds.
MAX_ERROR_PAUSE = 5.0


def enqueue_in_transaction(connection: Connection, actor: dramatiq.Actor, *args: Any, **kwargs: Any) -> str:
    """Send ``actor(*args, **kwargs)`` when ``connection``'s transaction commits; the message id."""
    return add_to_outbox(
        connection,
        queue_name=actor.queue_name,
        actor_name=actor.actor_name,
        args=list(args),
        kwargs=kwargs,
    )


class OutboxRelay:
    """Moves committed outbox messages to the broker.

    Parameters:
      broker(RedisBroker): Where messages go.
      engine(Engine): Where the outbox table is.
      batch_size(int): Most rows moved per transaction.  Defaults to 500.
      poll_interval(float): Seconds to wait when the outbox is empty.  Defaults to 0.2.
    """

    def __init__(
        self, *, broker: RedisBroker, engine: Engine, batch_size: int = 500, poll_interval: float = 0.2
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.engine = engine
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._stopping = threading.Event()
        self.relayed = 0

    def relay_once(self) -> int:
        """Move one batch; how many messages."""
        with self.engine.begin() as connection:
            batch = claim_unsent(connection, limit=self.batch_size)
            for row in batch:
                self.broker.enqueue(_message(row))
            if batch:
                mark_sent(connection, [row.message_id for row in batch])
        self.relayed += len(batch)
        return len(batch)

    def run_forever(self) -> None:
        """Relay until :meth:`stop`; outages of Redis or the database are waited out."""
        pause = self.poll_interval
        while not self._stopping.is_set():
            try:
                moved = self.relay_once()
            except Exception as exc:
                self.logger.warning("Outbox relay pass failed, retrying in %.1fs: %s", pause, exc)
                self._stopping.wait(pause)
                pause = min(pause * 2, MAX_ERROR_PAUSE)
                continue
            pause = self.poll_interval
            if moved < self.batch_size:
                self._stopping.wait(self.poll_interval)

    def stop(self) -> None:
        self._stopping.set()


def _message(row: OutboxMessage) -> Message:
    return Message(
        queue_name=row.queue_name,
        actor_name=row.actor_name,
        args=tuple(row.args),
        kwargs=row.kwargs,
        options=row.options,
        message_id=row.message_id,
    )
