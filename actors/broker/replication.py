"""Confirmation that an enqueue reached the replicas (Redis ``WAIT``), and its failure."""

from __future__ import annotations

import redis
from dramatiq.message import Message


class ReplicationTimeout(redis.RedisError):
    """A critical message reached fewer replicas than ``confirm_replicas`` in time.

    It is stored on the primary (and may be on some replicas): sending it again
    could run it twice; a failover before it replicates could lose it.

    Parameters:
      message(Message): The message as enqueued.
      acknowledged(int): Replicas that confirmed it.
      wanted(int): Replicas that had to.
    """

    def __init__(self, message: Message, *, acknowledged: int, wanted: int) -> None:
        super().__init__(f"message {message.message_id} reached {acknowledged} of {wanted} replicas in time")
        self.message = message
        self.acknowledged = acknowledged
