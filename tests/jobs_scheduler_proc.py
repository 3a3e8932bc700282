"""A real scheduler process on a fast clock: ``python tests/jobs_scheduler_proc.py PEERS SECONDS``.

Settings come from the environment like any tradeflow process; it schedules
one every-minute actor, ``probe_tick``, on the ``probe`` queue.  The ``PEERS``
processes meet at a barrier in Redis, then share one virtual clock (a minute
per real second) for ``SECONDS`` real seconds.
"""

import logging
import sys
import threading
import time

import pendulum
from jobs_support import FastClock

import actors
from actors.scheduling import Scheduler, every_minutes

#: The virtual time at the shared real start.
VIRTUAL_START = pendulum.datetime(2026, 11, 22, 9, 59, 59)


@every_minutes(1, queue_name="probe")
def probe_tick() -> None:
    """Never run here: the test counts the messages."""


def shared_start(peers: int) -> float:
    """Wait for every peer to be ready, then agree on one real start time."""
    client, prefix = actors.current_broker.client, f"{actors.current_broker.namespace}:test-barrier"
    client.incr(f"{prefix}:ready")
    while int(client.get(f"{prefix}:ready")) < peers:
        time.sleep(0.05)
    client.set(f"{prefix}:start", time.time() + 0.5, nx=True)
    return float(client.get(f"{prefix}:start"))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s")
    peers, seconds = int(sys.argv[1]), float(sys.argv[2])
    real_start = shared_start(peers)
    time.sleep(max(real_start - time.time(), 0))
    scheduler = Scheduler([probe_tick], clock=FastClock(VIRTUAL_START, real_start, speed=60.0))
    threading.Timer(max(real_start + seconds - time.time(), 0), scheduler.stop).start()
    scheduler.run_forever()
    actors.audit_writer_of(actors.current_broker).close(5)
