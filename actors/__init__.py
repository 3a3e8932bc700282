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

from . import system  # noqa: E402  (actors register on the broker set above)
from .monitoring import monitor_health  # noqa: E402, F401

__all__ = ["Audit", "audit_writer_of", "broker", "build_broker", "settings", "system", "worker_id"]
