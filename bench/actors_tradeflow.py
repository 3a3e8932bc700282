"""tradeflow: the full middleware stack with the audit trail, configured from TRADEFLOW_* variables."""

import actors  # noqa: F401
from bench.bench_actors import burn, flush_spans, latency_probe, noop  # noqa: F401
