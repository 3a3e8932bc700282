"""Actors the HTTP API tests submit through the API and run in a real worker
(``dramatiq actors tests.api_actors -Q api_work system``).  ``api_idle`` has no consumer:
what is sent there stays in Redis for the test to count."""

import dramatiq


def _client():
    return dramatiq.get_broker().client


@dramatiq.actor(queue_name="api_work", max_retries=0)
def api_echo(symbol: str, qty: int = 1) -> dict:
    """Count a run per symbol: the test sees what ran."""
    _client().hincrby(f"{dramatiq.get_broker().namespace}:api-test:runs", symbol, 1)
    return {"symbol": symbol, "qty": qty}


@dramatiq.actor(queue_name="api_work", max_retries=0)
def api_flaky(key: str) -> str:
    """Fails (dead letter) until ``<key>:fixed`` is set."""
    if not _client().get(f"{key}:fixed"):
        raise ValueError("not fixed yet")
    return "ok"


@dramatiq.actor(queue_name="api_idle", max_retries=0)
def api_hold(symbol: str, note: str = "") -> None:
    """Never consumed in the tests: a message of it stays queued."""


@dramatiq.actor(queue_name="api_work", max_retries=0)
def api_sleep(seconds: float) -> None:
    """Hold a worker thread: the message is in flight meanwhile."""
    import time

    time.sleep(seconds)


@dramatiq.actor(queue_name="api_work", max_retries=3)
def api_third_time(key: str) -> str:
    """Fails its first two attempts (``ValueError: attempt N``), then succeeds."""
    attempt = _client().incr(f"{key}:attempts")
    if attempt < 3:
        raise ValueError(f"attempt {attempt}")
    return "ok"
