"""Actors, one module per queue.  Importing this package configures the broker.

``dramatiq actors`` and ``periodiq actors`` import it as it is: the settings
are read from the environment here (this is a process edge), the broker is
built and made global, and every queue module is imported.  The machinery
under the queues lives in subpackages, each with its ``__init__`` as its door:
``broker`` (the Redis transport), ``middleware`` (per-message policies),
``scheduling``, ``telemetry``, ``runtime`` (the stack built from the
settings), and the queues' domain code: ``ib``, ``accounts``, ``market_data``,
``analysis``, ``strategies``.
"""

from actors.middleware import Audit, worker_id
from actors.runtime import audit_writer_of, build_broker, configure, load_modules
from actors.settings import Settings

#: The settings this process read from its ``TRADEFLOW_*`` environment.
current_settings = Settings()
#: The broker built from them, Dramatiq's global broker.
current_broker = configure(current_settings)

# Every queue module (and the leased scheduler that ``periodiq actors`` runs).
from actors import (  # noqa: E402  (actors register on the broker set above)
    ai_analysis,
    data_fetcher,
    ib_positions,
    maintenance,
    monitoring,
    orders,
    portfolio,
    strategy,
    system,
    workflows,
)
from actors.scheduling import scheduler  # noqa: E402

#: The user's modules (``TRADEFLOW_MODULES``), imported last: their actors register on the
#: broker above and they may ``import actors`` themselves.
user_modules = load_modules(current_settings.modules)

__all__ = [
    "Audit",
    "Settings",
    "ai_analysis",
    "audit_writer_of",
    "build_broker",
    "current_broker",
    "current_settings",
    "data_fetcher",
    "ib_positions",
    "maintenance",
    "monitoring",
    "orders",
    "portfolio",
    "scheduler",
    "strategy",
    "system",
    "user_modules",
    "worker_id",
    "workflows",
]
