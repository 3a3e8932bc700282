"""The actor the Sentinel failover test runs in a real worker process
(``dramatiq actors tests.failover_actors``): each run appends its index to ``FAILOVER_LOG``."""

import os
import time

import dramatiq

#: File each run appends its index to (outside Redis, which the test fails over).
LOG = os.environ.get("FAILOVER_LOG", os.devnull)


@dramatiq.actor(queue_name="failover", max_retries=3)
def failover_job(index: int) -> None:
    time.sleep(0.02)  # slower than the producer: a backlog builds, as in a burst
    with open(LOG, "a") as log:
        log.write(f"{index}\n")
