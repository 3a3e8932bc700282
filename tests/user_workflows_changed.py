"""``tests.user_workflows`` after a deploy that changed its workflow but not its version."""

from orchestration import registry
from tests.user_actors import user_flow_of

user_flow = registry.register(user_flow_of("b"))
