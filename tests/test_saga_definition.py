"""Workflow definitions are validated when they are built: errors name the workflow and the step."""

from __future__ import annotations

import pytest

from orchestration.builders import group, pipeline
from saga import Step, Workflow, WorkflowDefinitionError, inputs, result


def _error(*steps, **options) -> str:
    with pytest.raises(WorkflowDefinitionError) as caught:
        Workflow("wf", list(steps), **options)
    return str(caught.value)


def test_a_cycle_is_rejected_naming_its_steps():
    text = _error(
        Step("a", "x", depends_on=["c"]),
        Step("b", "x", depends_on=["a"]),
        Step("c", "x", depends_on=["b"]),
    )
    assert text.startswith("workflow 'wf', step ")
    assert "dependency cycle" in text and all(name in text for name in "abc")


def test_an_unknown_dependency_is_rejected_naming_the_step():
    assert _error(Step("a", "x"), Step("b", "x", depends_on=["nope"])) == (
        "workflow 'wf', step 'b': depends on unknown step 'nope'"
    )


def test_non_json_arguments_are_rejected_naming_the_step():
    text = _error(Step("a", "x", args=(object(),)))
    assert text.startswith("workflow 'wf', step 'a': arguments must be JSON values")
    assert "not JSON compliant" in _error(Step("a", "x", kwargs={"v": float("nan")}))


def test_duplicate_names_and_empty_workflows_are_rejected():
    assert "used by more than one step" in _error(Step("a", "x"), Step("a", "y"))
    assert _error() == "workflow 'wf': has no steps"


def test_a_result_reference_must_point_at_an_ancestor():
    text = _error(Step("a", "x"), Step("b", "x", args=(result("a"),)))
    assert text == (
        "workflow 'wf', step 'b': uses the result of 'a', which is not one of its (transitive) dependencies"
    )
    Workflow(
        "ok",
        [
            Step("a", "x"),
            Step("b", "x", depends_on=["a"]),
            Step("c", "x", args=(result("a"),), depends_on=["b"]),
        ],
    )


def test_unknown_actors_are_reported_against_the_broker_actors():
    workflow = Workflow("wf", [Step("a", "known"), Step("b", "missing", compensate_with="known")])
    with pytest.raises(
        WorkflowDefinitionError, match="step 'b': unknown actor 'missing'; known actors: known"
    ):
        workflow.check_actors({"known"})
    workflow = Workflow("wf", [Step("a", "known", compensate_with="gone")])
    with pytest.raises(WorkflowDefinitionError, match="step 'a': unknown compensation actor 'gone'"):
        workflow.check_actors({"known"})


def test_bad_options_are_rejected():
    assert "on_failure must be one of" in _error(Step("a", "x"), on_failure="explode")
    assert "group_limit must be at least 1" in _error(Step("a", "x", group="g", group_limit=0))
    with pytest.raises(WorkflowDefinitionError, match="max_concurrency must be at least 1"):
        group([Step("a", "x")], max_concurrency=0)
    with pytest.raises(WorkflowDefinitionError, match="needs a non-empty name"):
        Step("", "x")
    with pytest.raises(
        WorkflowDefinitionError, match="step 'a': an actor must be an actor object or a non-empty name"
    ):
        Step("a", 42)


def test_pipeline_and_group_wire_edges_and_piping():
    workflow = Workflow(
        "wf",
        [
            pipeline(
                Step("a", "x"),
                group([Step("b", "x"), pipeline(Step("c", "x"), Step("d", "x"))], max_concurrency=2),
                Step("e", "x", args=(inputs("symbol"),)),
            )
        ],
    )
    steps = workflow.by_name
    assert steps["b"].depends_on == ("a",) and steps["b"].pipe_from == ("a",)
    assert (
        steps["c"].depends_on == ("a",) and steps["d"].depends_on == ("c",) and steps["d"].pipe_from == ("c",)
    )
    assert steps["e"].depends_on == ("b", "d") and steps["e"].pipe_from == ("b", "d")
    assert {steps[n].group_limit for n in "bcd"} == {2} and steps["a"].group is None
    assert (
        workflow.order.index("a")
        < workflow.order.index("c")
        < workflow.order.index("d")
        < workflow.order.index("e")
    )
