"""The saga engine: durable DAG workflows with compensations, on Dramatiq.

Refers to actors by name and sends through the broker it is given; it never
imports ``actors``.
"""

from .children import CHILD_ACTOR, ChildWorkflowFailed, child
from .context import StepContext, checkpoint, current_step, idempotency_key
from .definition import Condition, Fragment, Ref, Step, Workflow, WorkflowDefinitionError, inputs, result
from .engine import SAGA_OPTION, SagaEngine, WorkflowError, dispatch
from .leases import ConcurrencyLeases, ConcurrencyLimitExceeded
from .middleware import Saga, StepAborted, engine_of
from .results import StepAwareResults
from .waits import SIGNAL_ACTOR, TIMER_ACTOR, sleep, until, wait_for_signal

__all__ = [
    "CHILD_ACTOR",
    "SAGA_OPTION",
    "SIGNAL_ACTOR",
    "TIMER_ACTOR",
    "ChildWorkflowFailed",
    "ConcurrencyLeases",
    "ConcurrencyLimitExceeded",
    "Condition",
    "Fragment",
    "Ref",
    "Saga",
    "SagaEngine",
    "Step",
    "StepAborted",
    "StepAwareResults",
    "StepContext",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowError",
    "checkpoint",
    "child",
    "current_step",
    "dispatch",
    "engine_of",
    "idempotency_key",
    "inputs",
    "result",
    "sleep",
    "until",
    "wait_for_signal",
]
