"""A real scheduler process on a fast clock: ``python tests/jobs_scheduler_proc.py START_EPOCH SECONDS``.

Settings come from the environment like any tradeflow process; it schedules
one every-minute actor, ``probe_tick``, on the ``probe`` queue.
"""

import sys
import threading
import time

import pendulum
from jobs_support import FastClock

import actors
from actors.cron import every_minutes
from actors.scheduler import Scheduler

#: The virtual time at the shared real start.
VIRTUAL_START = pendulum.datetime(2026, 11, 22, 9, 59, 59)


@every_minutes(1, queue_name="probe")
def probe_tick() -> None:
    """Never run here: the test counts the messages."""


if __name__ == "__main__":
    real_start, seconds = float(sys.argv[1]), float(sys.argv[2])
    scheduler = Scheduler([probe_tick], clock=FastClock(VIRTUAL_START, real_start, speed=60.0))
    threading.Timer(max(real_start + seconds - time.time(), 0), scheduler.stop).start()
    scheduler.run_forever()
    actors.audit_writer_of(actors.broker).close(5)
