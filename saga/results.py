"""Dramatiq's ``Results`` middleware, quiet about workflow steps.

A step's return value is recorded by the saga engine (``workflow_steps.result``),
so an actor that runs as a step has no reason to set ``store_results``; Dramatiq's
``Results`` would log "returned a value that is not None ... store_results" for
every such step.  This subclass stores what ``store_results`` asks for, as
``Results`` does, and skips only that warning for saga messages.
"""

from __future__ import annotations

from dramatiq import Broker, Message
from dramatiq.results import Results

from .engine import SAGA_OPTION


class StepAwareResults(Results):
    """``Results`` that does not warn about an unstored result of a workflow step.

    Parameters: those of :class:`dramatiq.results.Results`.
    """

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        if SAGA_OPTION in message.options and not self._lookup_options(broker, message)[0]:
            return  # the engine recorded the result; nothing to store, nothing to warn about
        super().after_process_message(broker, message, result=result, exception=exception)
