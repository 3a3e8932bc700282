"""Worker entry point of the saga process tests: ``dramatiq tests.saga_worker``."""

import actors
from tests.saga_actors import declare_actors

declare_actors(actors.current_broker)
