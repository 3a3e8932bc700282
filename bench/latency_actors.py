"""What ``bench/latency.py``'s worker processes run (``dramatiq actors latency_actors``): its actors
on the broker ``actors`` builds from the ``TRADEFLOW_*`` variables."""

import actors
from bench.bench_actors import declare_latency

stamp, noop, busy = declare_latency(actors.current_broker)
