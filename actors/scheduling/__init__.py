"""Schedules: cron specs, the schedule table and its control middleware, and the leased scheduler
that ``periodiq actors`` runs.
"""

from .cron import cron, daily_at, every_minutes, weekly_at
from .scheduler import Scheduler
from .schedules import SCHEDULE_OPTION, ScheduleControl, ScheduleError, next_tick, schedule_control_of

__all__ = [
    "SCHEDULE_OPTION",
    "ScheduleControl",
    "ScheduleError",
    "Scheduler",
    "cron",
    "daily_at",
    "every_minutes",
    "next_tick",
    "schedule_control_of",
    "weekly_at",
]
