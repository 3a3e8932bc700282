"""The no-op actor of the capacity benchmark (``dramatiq bench.capacity_actors -Q capacity``), on
the broker ``actors`` builds from the ``TRADEFLOW_*`` variables."""

import dramatiq

import actors

#: Queue and actor name the benchmark sends to.
QUEUE, ACTOR = "capacity", "capacity_noop"


@dramatiq.actor(queue_name=QUEUE, actor_name=ACTOR, max_retries=0, broker=actors.current_broker)
def capacity_noop(*args) -> None:
    """Does nothing: what is measured is what the stack around it costs."""
