"""The worked examples of ``docs/workflows.md`` (code blocks starting ``# example:``) run as written."""

from __future__ import annotations

import re

import dramatiq
import pytest
from conftest import REPO_ROOT
from saga_helpers import fast, running_stack, wait_for_run

pytestmark = pytest.mark.timeout(90)

EXAMPLES = re.findall(
    r"```python\n(# example: (\w+)\n.*?)```", (REPO_ROOT / "docs/workflows.md").read_text(), re.S
)


def test_every_feature_has_an_example():
    assert {name for _, name in EXAMPLES} >= {"versions", "history", "timers", "signals", "children"}


@pytest.mark.parametrize(("code", "name"), EXAMPLES, ids=[name for _, name in EXAMPLES])
def test_the_docs_example_runs(settings, code, name):
    from actors import system

    with running_stack(fast(settings)) as stack:
        dramatiq.actor(system.ping.fn, broker=stack.broker, actor_name="ping", queue_name="system")
        namespace = {"engine": stack.engine, "wait": lambda run_id: wait_for_run(stack.db, run_id)}
        exec(compile(code, f"docs/workflows.md:{name}", "exec"), namespace)
