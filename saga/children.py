"""Child workflows: a step that starts another workflow and completes with its outcome.

``child(name, workflow, inputs=...)`` is a step of :data:`CHILD_ACTOR` that waits without
holding a worker (see :mod:`saga.waits`).  Its dispatch starts the child run, in the
parent's transaction, from the child's definition stored in the step's spec (so a worker
needs no Python definition); the child's rows name the parent run and step.  When the child
run ends, the step's message is sent: the actor reports the child's results (``{"run_id",
"status", "results"}``), or fails the step when the child did not succeed, so the parent
unwinds.  When the parent stops (a failure, a cancel, its deadline), its running children
are cancelled first, with their compensations; the parent's own compensations wait until
its child steps have ended.
"""

from __future__ import annotations

import uuid
from typing import Any

from .definition import Step, Workflow, WorkflowDefinitionError

#: The actor of child steps (declared by the ``workflows`` queue of ``actors``).
CHILD_ACTOR = "workflow_child"

#: Kind of wait of a child step (``spec["wait"]["kind"]``).
CHILD = "child"

#: Namespace of child run ids: one child run per parent run, step and dispatch.
CHILD_NAMESPACE = uuid.UUID("0b5e7a52-6f0e-4d8c-9a41-2c7d3e1f8b60")


class ChildWorkflowFailed(Exception):
    """A child run ended without succeeding; its parent's step fails with this."""


def child(name: str, workflow: Workflow, *, inputs: Any = None, **options: Any) -> Step:
    """A step that runs ``workflow`` as a child run with ``inputs`` (JSON, may hold references)."""
    if not isinstance(workflow, Workflow):
        raise WorkflowDefinitionError(f"step {name!r}: a child step needs a Workflow, not {workflow!r}")
    wait = {"kind": CHILD, "workflow": workflow.name, "version": workflow.version}
    wait["definition"] = workflow.definition()
    return Step(name, CHILD_ACTOR, kwargs={"inputs": inputs}, wait=wait, **options)


def child_run_id(parent_run_id: str, step: str, epoch: int) -> str:
    return uuid.uuid5(CHILD_NAMESPACE, f"{parent_run_id}/{step}/{epoch}").hex
