"""tradeflow: the full middleware stack with the audit trail, configured from TRADEFLOW_* variables."""

import actors
from bench.bench_actors import declare

broker = actors.current_broker

noop, burn, latency_probe, flush_spans = declare(broker)
