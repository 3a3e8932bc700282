"""A user's own workflow, on the actors of ``tests.user_actors``: ``-m tests.user_workflows``."""

from orchestration import registry
from tests.user_actors import user_flow_of

user_flow = registry.register(user_flow_of("a"))
