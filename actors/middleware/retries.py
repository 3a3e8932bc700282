"""Retries with exponential backoff and jitter; non-retryable errors go straight to the dead letters.

Replaces Dramatiq's ``Retries`` (same actor options, same ``throws`` meaning) with:

* a backoff of ``min_backoff * 2**attempt`` capped at ``max_backoff``, stretched or
  shrunk by up to ``jitter`` (a fraction) so retries of one outage spread out;
  with the seed's defaults (2 min, 1 h, 3 retries, 10 %): ~2, ~4, ~8 minutes;
* ``NonRetryableError`` (and the actor's ``non_retryable=`` types) failing the
  message at once, with the reason kept for ``tradeflow dlq``;
* a cancelled job (:class:`JobCancelled`) never retried.
"""

from __future__ import annotations

import random
import time
import traceback

from dramatiq import Broker, Middleware
from dramatiq.errors import Retry
from dramatiq.logging import get_logger
from dramatiq.message import Message

from actors.broker import DEAD_LETTER_REASON, PRIOR_DELIVERIES

from .audit import describe_exception
from .errors import JobCancelled, NonRetryableError, missing_extra

#: Longest delay the Redis broker accepts for a message, in milliseconds.
MAX_DELAY = 7 * 86_400_000


def backoff_ms(
    attempt: int, *, min_backoff: int, max_backoff: int, jitter: float, rng: random.Random | None = None
) -> int:
    """Delay before retry number ``attempt + 1`` (``attempt`` counts from 0), in milliseconds."""
    base = min(min_backoff * 2 ** min(attempt, 32), max_backoff)
    spread = (rng or random).uniform(1 - jitter, 1 + jitter)
    return int(min(base * spread, max_backoff, MAX_DELAY))


class Retries(Middleware):
    """Retries failed messages with exponential backoff and jitter.

    Parameters:
      max_retries(int): Retries after the first attempt.  Defaults to 3.
      min_backoff(int): Delay before the first retry, in milliseconds.  Defaults to 2 minutes.
      max_backoff(int): Longest delay, in milliseconds.  Defaults to 1 hour.
      jitter(float): Fraction (0..1) of random spread of each delay.  Defaults to 0.1.

    All four are also actor (and message) options, as are ``throws`` (expected
    errors: failed, not retried), ``non_retryable`` (dead-lettered at once) and
    ``retry_when(retries, exception) -> bool``.
    """

    actor_options = {
        "max_retries",
        "min_backoff",
        "max_backoff",
        "jitter",
        "retry_when",
        "throws",
        "non_retryable",
    }

    def __init__(
        self,
        *,
        max_retries: int = 3,
        min_backoff: int = 120_000,
        max_backoff: int = 3_600_000,
        jitter: float = 0.1,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.max_retries = max_retries
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.jitter = jitter

    def after_process_message(
        self, broker: Broker, message: Message, *, result=None, exception: BaseException | None = None
    ) -> None:
        if exception is None or isinstance(exception, JobCancelled):
            return
        actor = broker.get_actor(message.actor_name)
        option = _options_of(message, actor.options)
        throws = option("throws", None)
        if throws and isinstance(exception, throws):
            self.logger.info(
                "Message %r failed with expected %s.", message.message_id, type(exception).__name__
            )
            message.fail()
            return
        extra = missing_extra(exception)
        if extra is not None:  # a retry cannot install it
            self._dead_letter(message, f"{message.actor_name} {extra}")
            return
        if isinstance(exception, (NonRetryableError, *option("non_retryable", ()))):
            self._dead_letter(message, f"non-retryable {describe_exception(exception)}")
            return
        retries = message.options.setdefault("retries", 0)
        message.options["traceback"] = traceback.format_exc(limit=30)
        message.options["requeue_timestamp"] = int(time.time() * 1000)
        if not self._should_retry(option, retries, exception):
            attempts = retries + 1
            self._dead_letter(message, f"failed {attempts} attempts, last: {describe_exception(exception)}")
            return
        message.options["retries"] = retries + 1
        message.options.pop(PRIOR_DELIVERIES, None)  # a new attempt: its crashes count afresh
        if isinstance(exception, Retry) and exception.delay is not None:
            delay = exception.delay
        else:
            delay = backoff_ms(
                retries,
                min_backoff=option("min_backoff", self.min_backoff),
                max_backoff=option("max_backoff", self.max_backoff),
                jitter=option("jitter", self.jitter),
            )
        self.logger.info("Retrying message %r in %d milliseconds.", message.message_id, delay)
        broker.enqueue(message, delay=delay)

    def _should_retry(self, option, retries: int, exception: BaseException) -> bool:
        retry_when = option("retry_when", None)
        if retry_when is not None:
            return bool(retry_when(retries, exception))
        max_retries = option("max_retries", self.max_retries)
        return max_retries is None or retries < max_retries

    def _dead_letter(self, message: Message, reason: str) -> None:
        self.logger.warning("Message %r goes to the dead letters: %s", message.message_id, reason)
        message.options[DEAD_LETTER_REASON] = reason
        message.fail()


def _options_of(message: Message, actor_options: dict):
    """``option(name, default)``: the message's option, else the actor's, else ``default``."""

    def option(name: str, default):
        if name in message.options:
            return message.options[name]
        return actor_options.get(name, default)

    return option
