"""Baseline: a stock Dramatiq RedisBroker with its default middleware and the same actors.

``broker`` is also made Dramatiq's global broker, which ``dramatiq bench.actors_raw`` runs.
"""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from bench.bench_actors import declare

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"], namespace=os.environ["BENCH_NAMESPACE"])
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)

noop, burn, latency_probe, flush_spans = declare(broker)
