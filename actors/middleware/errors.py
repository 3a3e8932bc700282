"""Exceptions that steer what happens to a failed job."""

from __future__ import annotations

from dramatiq.threading import Interrupt


class NonRetryableError(Exception):
    """An error a retry cannot fix (bad input, validation): raise it, or a subclass,
    and the message goes straight to the dead letters with this reason.

    Actors can name more such exception types with the ``non_retryable=`` option.
    """


class JobCancelled(Interrupt):
    """Raised inside a running job that was cancelled (``tradeflow jobs cancel``).

    An :class:`~dramatiq.threading.Interrupt` (a ``BaseException``), so an
    actor's ``except Exception`` cannot swallow it.  Never retried.
    """
