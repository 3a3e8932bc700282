"""What a running step knows about itself: its run, attempt and last checkpoint."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Claim, SagaEngine

_local = threading.local()


@dataclass
class StepContext:
    """The step the current worker thread is executing.

    ``checkpoint`` and ``progress`` are the last ones saved, so a step that
    was redelivered (its worker died) can continue from there.
    """

    claim: Claim
    engine: SagaEngine
    checkpoint: Any = None
    progress: float | None = None
    #: The dispatch of the step this delivery belongs to (a step run again after it was
    #: compensated, or a compensation sent again by ``resume``, is a new dispatch).
    epoch: int = 0

    @property
    def idempotency_key(self) -> str:
        """``<run id>:<step>:<kind>:<epoch>``: the same for every delivery and retry of one
        dispatch of this step (or compensation), different for any other.  Steps run at least
        once: pass it to the external system the step changes (an order reference, an
        idempotency header) so a repeated delivery changes nothing there."""
        return idempotency_key(self.claim.run_id, self.claim.step, self.claim.kind, self.epoch)

    @property
    def run_id(self) -> str:
        return self.claim.run_id

    @property
    def step(self) -> str:
        return self.claim.step

    @property
    def attempt(self) -> int:
        """1 for the first delivery that ran the step, 2 for the next, ..."""
        return self.claim.attempt

    def save(self, progress: float | None = None, payload: Any = None) -> bool:
        """Record progress (0-100) and a JSON checkpoint; False if this delivery lost its claim."""
        saved = self.engine.save_checkpoint(self.claim, progress=progress, payload=payload)
        if saved:
            self.checkpoint, self.progress = payload, progress
        return saved


def idempotency_key(run_id: str, step: str, kind: str, epoch: int) -> str:
    """The idempotency key of one dispatch of a step (``kind`` ``step``) or compensation
    (``compensate``); see :attr:`StepContext.idempotency_key`."""
    return f"{run_id}:{step}:{kind}:{epoch}"


def current_step() -> StepContext | None:
    """The workflow step running in this thread, or None outside a workflow step."""
    return getattr(_local, "context", None)


def checkpoint(progress: float | None = None, payload: Any = None) -> bool:
    """Save progress and a checkpoint for the current step (see :meth:`StepContext.save`)."""
    context = current_step()
    if context is None:
        raise RuntimeError("checkpoint() is only available inside a workflow step")
    return context.save(progress, payload)


def enter(context: StepContext | None) -> None:
    _local.context = context
