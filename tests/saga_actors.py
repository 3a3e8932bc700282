"""Small actors the saga tests run workflows of.  Each writes what it did to Redis."""

from __future__ import annotations

import time
from types import SimpleNamespace

import dramatiq

from saga import current_step


class Boom(Exception):
    """The failure the failing actors raise."""


def declare_actors(broker) -> SimpleNamespace:
    """Declare the test actors on ``broker``.

    They log to the Redis list ``<namespace>:log`` and count in the hash ``<namespace>:count``.
    """
    client = broker.client
    log_key, count_key = f"{broker.namespace}:log", f"{broker.namespace}:count"

    def actor(fn):
        return dramatiq.actor(fn, broker=broker, queue_name="saga_test", max_retries=0, store_results=False)

    @actor
    def record(label, *piped, **kwargs):
        client.rpush(log_key, label)
        return {"label": label, "piped": list(piped), "kwargs": kwargs}

    @actor
    def add(a, b, *piped):
        client.rpush(log_key, f"add:{a}+{b}")
        return a + b

    @actor
    def count(label, *piped):
        client.hincrby(count_key, label, 1)
        return label

    @actor
    def tick(label, ms, *piped):
        client.hincrby(count_key, label, 1)
        time.sleep(ms / 1000)
        return label

    @actor
    def fail(label, *piped):
        client.rpush(log_key, f"fail:{label}")
        raise Boom(f"{label} failed on purpose")

    @actor
    def flaky(label, failures, *piped):
        attempt = client.hincrby(count_key, label, 1)
        if attempt <= failures:
            raise Boom(f"{label} attempt {attempt} failed on purpose")
        client.rpush(log_key, label)
        return attempt

    @actor
    def undo(label, *args, result=None, **kwargs):
        client.rpush(log_key, f"undo:{label}")
        client.hincrby(count_key, f"undo:{label}", 1)

    @actor
    def undo_fail(label, *args, result=None, **kwargs):
        client.hincrby(count_key, f"undo_fail:{label}", 1)
        raise Boom(f"cannot undo {label}")

    @actor
    def slow(label, seconds, *piped):
        client.rpush(log_key, f"start:{label}")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # short sleeps: an abort lands between them
            time.sleep(0.05)
        client.rpush(log_key, label)
        return label

    @actor
    def resumable(label, steps, *piped):
        context = current_step()
        done = (context.checkpoint or {}).get("done", 0)
        client.rpush(log_key, f"{label}:from:{done}:attempt:{context.attempt}")
        for index in range(done, steps):
            context.save(progress=100 * (index + 1) / steps, payload={"done": index + 1})
            if index == 0 and context.attempt == 1:
                raise Boom("crash after the first checkpoint")
        return done

    # The waiting steps' actors (``actors.workflows``), on this broker.
    from actors import workflows

    waiting = [
        dramatiq.actor(f.fn, broker=broker, actor_name=f.actor_name, queue_name=f.queue_name, **f.options)
        for f in (workflows.workflow_timer, workflows.workflow_signal, workflows.workflow_child)
        if f.actor_name not in broker.actors  # ``import actors`` declared them on its broker
    ]
    return SimpleNamespace(
        **{
            a.actor_name: a
            for a in (record, add, count, tick, fail, flaky, undo, undo_fail, slow, resumable, *waiting)
        }
    )
