"""Enqueue one tradeflow job from Python without tradeflow (or Dramatiq): only the ``redis`` package.

    python send.py REDIS_URL NAMESPACE QUEUE ACTOR ARGS_JSON
    python send.py redis://127.0.0.1:6379/0 tradeflow system ping '["hello"]'

Prints the message id (the job's id in ``tradeflow jobs show``).  See docs/producers.md.
"""

import json
import sys
import time
import uuid

import redis


def send(client: redis.Redis, namespace: str, queue: str, actor: str, args: list, kwargs: dict) -> str:
    message_id = str(uuid.uuid4())
    message = {
        "queue_name": queue,
        "actor_name": actor,
        "args": args,
        "kwargs": kwargs,
        "options": {},  # the worker adds what it needs; "priority": "high" picks a lane
        "message_id": message_id,
        "message_timestamp": int(time.time() * 1000),
    }
    pipe = client.pipeline(transaction=True)
    pipe.hset(f"{namespace}:{queue}.msgs", message_id, json.dumps(message))
    pipe.rpush(f"{namespace}:{queue}", message_id)
    pipe.publish(f"{namespace}:__wake__.{queue}", "1")  # idle workers fetch at once instead of polling
    pipe.execute()
    return message_id


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit("usage: send.py REDIS_URL NAMESPACE QUEUE ACTOR ARGS_JSON")
    url, namespace, queue, actor, args = sys.argv[1:]
    print(send(redis.Redis.from_url(url), namespace, queue, actor, json.loads(args), {}))
