"""Workflow versions: a version's definition is fixed once started, a changed one is refused
naming the difference, and a running run keeps the definition it started with."""

from __future__ import annotations

import pytest
from saga_helpers import fast, running_stack, steps_of, wait_for_run

from saga import Step, Workflow, WorkflowDefinitionError
from saga.versions import check_definitions
from storage import create_db_engine, get_definition

pytestmark = pytest.mark.timeout(60)


def _flow(label: str, *, version: int = 1, seconds: float = 0.0) -> Workflow:
    return Workflow(
        "versioned",
        [
            Step("wait", "slow", args=("wait", seconds)),
            Step("last", "record", args=(label,), depends_on=["wait"]),
        ],
        version=version,
    )


def test_a_changed_definition_needs_a_new_version(migrated_url):
    database = create_db_engine(migrated_url)
    check_definitions(database, [_flow("v1")])
    check_definitions(database, [_flow("v1")])  # the same definition again: fine
    with pytest.raises(WorkflowDefinitionError) as refused:
        check_definitions(database, [_flow("v2")])
    assert str(refused.value) == (
        "workflow 'versioned' version 1 is already defined differently: "
        "step 'last' args: ['v1'] -> ['v2']; give the changed definition a new version"
    )
    check_definitions(database, [_flow("v2", version=2)])
    assert get_definition(database, "versioned", 1).definition["steps"][1]["spec"]["args"] == ["v1"]
    assert get_definition(database, "versioned", 2).definition["steps"][1]["spec"]["args"] == ["v2"]
    with pytest.raises(WorkflowDefinitionError, match="version must be a positive integer"):
        _flow("v3", version=0)
    database.dispose()


def test_a_running_run_keeps_its_definition_after_a_deploy_changes_it(settings):
    with running_stack(fast(settings)) as stack:
        run_id = stack.engine.start(_flow("v1", seconds=0.5))
        check_definitions(stack.db, [_flow("v2", version=2)])  # the deploy, while the run waits
        stack.engine.start(_flow("v2", version=2))
        run = wait_for_run(stack.db, run_id)
        assert (run.status, run.workflow_version) == ("succeeded", 1)
        assert steps_of(stack.db, run_id)["last"].result["label"] == "v1"
