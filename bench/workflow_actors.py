"""No-op actors of the workflow benchmark: ``dramatiq bench.workflow_actors``."""

import dramatiq

import actors

#: Redis key counting every no-op call.
CALLS_KEY = "bench-workflow-calls"


@dramatiq.actor(queue_name="bench_workflow", max_retries=0)
def noop(*args):
    """Does nothing but count itself, so both sides of the benchmark pay the same."""
    actors.current_broker.client.incr(f"{actors.current_broker.namespace}:{CALLS_KEY}")
