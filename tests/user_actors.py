"""A user's own actors, loaded through ``TRADEFLOW_MODULES`` / ``-m`` by ``tests.user_workflows``.

``user_first`` fails the first time it runs for a label (a Redis counter in the
test's namespace) and succeeds after, so a run fails once and a resume finishes it.
"""

import dramatiq

import actors
from saga import Step, Workflow

#: The queue of the user's actors (a worker listens to every declared queue).
QUEUE = "user_flows"


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def user_first(label: str) -> int:
    broker = actors.current_broker
    attempt = broker.client.incr(f"{broker.namespace}:user:{label}")
    if attempt == 1:
        raise RuntimeError(f"{label}: the first attempt fails on purpose")
    return attempt


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def user_second(previous: int) -> dict:
    return {"after": previous}


def user_flow_of(label: str) -> Workflow:
    """The user's workflow; its first step's argument is what a deploy changes."""
    return Workflow(
        "user_flow",
        [
            Step("first", user_first, args=(label,)),
            Step("second", user_second, depends_on=["first"], pipe_from=("first",)),
        ],
    )
