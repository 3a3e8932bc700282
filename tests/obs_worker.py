"""Loaded by the test workers (``dramatiq actors tests.obs_worker``): the test actors on the global broker."""

import dramatiq

from tests.obs_actors import declare

declare(dramatiq.get_broker())
