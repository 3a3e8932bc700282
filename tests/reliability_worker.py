"""Worker entry point of the reliability tests: ``dramatiq tests.reliability_worker``."""

import actors
from tests.reliability_actors import declare_actors

declare_actors(actors.current_broker)
