"""Actors, one module per queue.  Importing this package configures the broker.

``dramatiq actors`` and ``periodiq actors`` import it as it is: the settings
are read from the environment here (this is a process edge), the broker is
built and made global, and every actor module is imported.
"""

import dramatiq

from config import Settings

from .audit import Audit, worker_id
from .broker import audit_writer_of, build_broker

settings = Settings()
broker = build_broker(settings)
dramatiq.set_broker(broker)

# Every actor module, one per queue (and the leased scheduler that ``periodiq actors`` runs).
from . import (  # noqa: E402  (actors register on the broker set above)
    ai_analysis,
    data_fetcher,
    ib_positions,
    ib_routing,
    maintenance,
    monitoring,
    portfolio,
    scheduler,
    strategy,
    system,
)

__all__ = [
    "Audit",
    "ai_analysis",
    "audit_writer_of",
    "broker",
    "build_broker",
    "data_fetcher",
    "ib_positions",
    "ib_routing",
    "maintenance",
    "monitoring",
    "portfolio",
    "scheduler",
    "settings",
    "strategy",
    "system",
    "worker_id",
]
