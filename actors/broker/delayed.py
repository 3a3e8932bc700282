"""Sending a job for a given time (``eta``) rather than after a delay.

A delayed job runs once even if Dramatiq's delay-queue move duplicates it:
:class:`actors.broker.admission.Admission` drops the second copy by message id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dramatiq
from dramatiq.message import Message

#: Longest delay the Redis broker accepts, in milliseconds (7 days).
MAX_DELAY_MS = 7 * 86_400_000


def delay_until(eta: datetime, *, now: datetime | None = None) -> int:
    """Milliseconds from ``now`` to ``eta`` (0 if it is past); ``eta`` must be timezone-aware."""
    if eta.tzinfo is None:
        raise ValueError(f"eta {eta.isoformat()} has no timezone: pass an aware datetime (e.g. in UTC)")
    delay = int(((eta - (now or datetime.now(UTC))).total_seconds()) * 1000)
    if delay > MAX_DELAY_MS:
        raise ValueError(
            f"eta {eta.isoformat()} is more than 7 days ahead: the Redis broker cannot delay that long"
        )
    return max(delay, 0)


def send_at(actor: dramatiq.Actor, eta: datetime, *args: Any, **kwargs: Any) -> Message:
    """Send ``actor(*args, **kwargs)`` to run at ``eta``."""
    return actor.send_with_options(args=args, kwargs=kwargs, delay=delay_until(eta))
