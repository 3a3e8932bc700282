"""Settings: the one object that carries configuration from the edge down.

Only edges (the CLI, ``import actors`` in a worker, the HTTP API) build a
:class:`Settings` from the environment; every lower layer takes values as
arguments.
"""

from .settings import DEFAULT_REDIS_URL, Settings

__all__ = ["DEFAULT_REDIS_URL", "Settings"]
