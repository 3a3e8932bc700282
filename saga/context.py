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
