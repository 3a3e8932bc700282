"""Baseline: a stock Dramatiq RedisBroker with its default middleware and the same actors."""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"], namespace=os.environ["BENCH_NAMESPACE"])
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)

from bench.bench_actors import burn, flush_spans, latency_probe, noop  # noqa: E402,F401
