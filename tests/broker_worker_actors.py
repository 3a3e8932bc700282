"""Actors the broker tests run in real worker processes (``dramatiq actors broker_worker_actors``)."""

import dramatiq
from broker_support import declare_slow

declare_slow(dramatiq.get_broker())
