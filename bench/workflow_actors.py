"""No-op actors of the workflow benchmark: ``dramatiq bench.workflow_actors``."""

import dramatiq

import actors

#: Redis key counting every no-op call.
CALLS_KEY = "bench-workflow-calls"

#: The broker measured: the one ``actors`` builds from the ``TRADEFLOW_*`` variables.
broker = actors.current_broker


@dramatiq.actor(broker=broker, queue_name="bench_workflow", max_retries=0)
def noop(*args):
    """Does nothing but count itself, so both sides of the benchmark pay the same."""
    broker.client.incr(f"{broker.namespace}:{CALLS_KEY}")
