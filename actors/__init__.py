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

from . import ai_analysis, data_fetcher, strategy, system  # noqa: E402, F401  (actors register on the broker set above)

__all__ = ["Audit", "audit_writer_of", "broker", "build_broker", "settings", "system", "worker_id"]

# Job control: the seed's housekeeping schedules, and the leased scheduler ``periodiq actors`` runs.
from . import maintenance, scheduler  # noqa: E402, F401
