"""Cron specs for periodic actors: periodiq's, with Sunday fixed, plus decorator sugar.

periodiq 0.14 parses ``sun``/``0`` (and ``@weekly``) to day 0 but checks a date
with ``isoweekday()``, where Sunday is 7: such schedules never fire.  :class:`Cron`
reads days of week as cron does (0 and 7 are Sunday) and checks ``isoweekday() % 7``.

    >>> @daily_at(8, 0, queue_name="reports")
    ... def daily_summary(): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
from periodiq import CronSpec

#: Cron's Sunday aliases: both 0 and 7 mean Sunday.
SUNDAY, SUNDAY_ALIAS = 0, 7

#: Day names, Sunday first, as cron numbers them.
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class Cron(CronSpec):
    """A cron spec (``m h dom mon dow`` or ``@daily`` ...) whose Sunday works.

    Calling it on a function declares a periodic actor with it, so that
    ``every_minutes(5)`` is both a ``periodic=`` value and a decorator.

    Parameters:
      actor_options(dict): Options of the actor a decorator use declares.
    """

    actor_options: dict[str, Any]

    @classmethod
    def parse(cls, spec: str, **actor_options: Any) -> Cron:
        """Parse ``spec``; a malformed one raises ``ValueError`` saying what is wrong."""
        try:
            cron = super().parse(spec)
        except KeyError:
            names = ", ".join(sorted(CronSpec._named_spec))
            raise ValueError(f"unknown cron name {spec!r}; use one of {names}") from None
        except (IndexError, ValueError, AttributeError):
            raise ValueError(
                f"invalid cron spec {spec!r}: expected 5 fields 'minute hour day-of-month month "
                f"day-of-week' (e.g. '*/5 * * * *', '0 4 * * sun') or a name like '@daily'"
            ) from None
        cron._check_ranges(spec)
        cron.actor_options = actor_options
        return cron

    def setup(self, m, h, dom, month, dow):
        if dow is not None:
            dow = sorted({SUNDAY if day == SUNDAY_ALIAS else day for day in dow})
        super().setup(m, h, dom, month, dow)

    def validate(self, date) -> bool:
        if date.minute not in self.minute or date.hour not in self.hour or date.month not in self.month:
            return False
        weekday = date.isoweekday() % 7
        if self.is_dow_restricted and self.is_dom_restricted:
            return date.day in self.dom or weekday in self.dow
        return date.day in self.dom and weekday in self.dow

    def __call__(self, fn: Callable[..., Any]) -> dramatiq.Actor:
        return dramatiq.actor(fn, periodic=self, **self.actor_options)

    def _check_ranges(self, spec: str) -> None:
        bounds = (("minute", 0, 59), ("hour", 0, 23), ("dom", 1, 31), ("month", 1, 12), ("dow", 0, 6))
        for field, low, high in bounds:
            values = getattr(self, field)
            if not values or values[0] < low or values[-1] > high:
                raise ValueError(f"invalid cron spec {spec!r}: {field} must be within {low}-{high}")


def cron(spec: str, **actor_options: Any) -> Cron:
    """``Cron.parse``: a periodic spec, also usable as an actor decorator."""
    return Cron.parse(spec, **actor_options)


def every_minutes(minutes: int, **actor_options: Any) -> Cron:
    """Every ``minutes`` minutes, on the hour's multiples of it (``minutes`` divides 60)."""
    if not 1 <= minutes <= 60 or 60 % minutes:
        raise ValueError(f"every_minutes({minutes}): minutes must divide 60 (1, 2, 3, 4, 5, 6, 10, 15, ...)")
    return Cron.parse("* * * * *" if minutes == 1 else f"*/{minutes} * * * *", **actor_options)


def daily_at(hour: int, minute: int = 0, **actor_options: Any) -> Cron:
    """Every day at ``hour:minute`` (in the scheduler's timezone)."""
    _check_time(hour, minute)
    return Cron.parse(f"{minute} {hour} * * *", **actor_options)


def weekly_at(weekday: str, hour: int, minute: int = 0, **actor_options: Any) -> Cron:
    """Every week on ``weekday`` (``"sun"`` .. ``"sat"``) at ``hour:minute``."""
    day = weekday.lower()[:3]
    if day not in WEEKDAYS:
        raise ValueError(f"weekly_at: unknown weekday {weekday!r}; use one of {', '.join(WEEKDAYS)}")
    _check_time(hour, minute)
    return Cron.parse(f"{minute} {hour} * * {day}", **actor_options)


def _check_time(hour: int, minute: int) -> None:
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise ValueError(f"invalid time {hour}:{minute}: hour must be 0-23 and minute 0-59")
