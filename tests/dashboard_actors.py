"""Actors of the dashboard's browser tests (``dramatiq actors tests.api_actors tests.dashboard_actors``):
workflow steps, a step that waits to be cancelled, and a compensation slow enough that a page
shows each one running."""

import time

import dramatiq

#: Seconds a compensation takes: long enough for the page to show it running, also when a loaded
#: machine delays a redraw (at 0.6 s, under three test workers and chromium, one was never seen).
UNDO_SECONDS = 1.5


def _client():
    return dramatiq.get_broker().client


@dramatiq.actor(queue_name="api_work", max_retries=0)
def dash_step(name: str) -> str:
    return name


@dramatiq.actor(queue_name="api_work", max_retries=0, time_limit=120_000)
def dash_wait(name: str, seconds: float = 60.0) -> str:
    """Runs until cancelled (the cancellation middleware interrupts it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return name


@dramatiq.actor(queue_name="api_work", max_retries=0)
def dash_undo(name: str, result=None) -> None:
    """Undo ``name``: noted in order in ``<namespace>:dash:undone``."""
    time.sleep(UNDO_SECONDS)
    _client().rpush(f"{dramatiq.get_broker().namespace}:dash:undone", name)


@dramatiq.actor(queue_name="api_work", max_retries=0)
def dash_flaky(key: str) -> str:
    """Fails (dead letter) until ``<key>:fixed`` is set: its own fingerprint, apart from ``api_flaky``'s."""
    if not _client().get(f"{key}:fixed"):
        raise RuntimeError("dashboard flake")
    return "ok"


@dramatiq.actor(queue_name="api_idle", max_retries=0)
def dash_idle(name: str) -> None:
    """Never consumed: the steps of a big run that only has to be drawn."""
