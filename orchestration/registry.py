"""Workflows by name, and the events that start them."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from dramatiq.logging import get_logger

from saga import SagaEngine, Workflow
from saga.versions import check_definitions


class UnknownWorkflow(LookupError):
    """No workflow is registered under a name."""


class WorkflowRegistry:
    """Named workflow definitions, and event triggers: publishing an event starts every
    workflow registered for it, with the event's payload as the run's inputs."""

    def __init__(self) -> None:
        self.logger = get_logger(__name__, type(self))
        self._workflows: dict[str, Workflow] = {}
        self._triggers: dict[str, list[str]] = defaultdict(list)

    def register(self, workflow: Workflow, *, on: tuple[str, ...] = ()) -> Workflow:
        """Add ``workflow`` (started by the events named in ``on``); a name is registered once."""
        if workflow.name in self._workflows and self._workflows[workflow.name] is not workflow:
            raise ValueError(f"a workflow named {workflow.name!r} is already registered")
        self._workflows[workflow.name] = workflow
        for event in on:
            self.on(event, workflow.name)
        return workflow

    def on(self, event: str, workflow_name: str) -> None:
        """Start ``workflow_name`` whenever ``event`` is published."""
        self.get(workflow_name)
        if workflow_name not in self._triggers[event]:
            self._triggers[event].append(workflow_name)

    def get(self, name: str) -> Workflow:
        try:
            return self._workflows[name]
        except KeyError:
            known = ", ".join(sorted(self._workflows)) or "none"
            raise UnknownWorkflow(f"no workflow named {name!r}; registered workflows: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._workflows)

    def check_definitions(self, database) -> None:
        """At a process's start-up: every registered workflow's definition against the one its
        version was first started with; raises ``WorkflowDefinitionError`` naming the difference."""
        check_definitions(database, [self._workflows[name] for name in self.names()])

    def triggered_by(self, event: str) -> list[str]:
        return list(self._triggers.get(event, ()))

    def events_of(self, workflow_name: str) -> list[str]:
        """The events that start ``workflow_name``."""
        return sorted(event for event, names in self._triggers.items() if workflow_name in names)

    def publish(
        self, engine: SagaEngine, event: str, payload: Any = None, *, event_id: str | None = None
    ) -> list[str]:
        """Start the workflows registered for ``event``; returns their run ids.

        With an ``event_id``, publishing the same event again starts nothing
        new (each run's idempotency key is derived from it).
        """
        run_ids = []
        for name in self.triggered_by(event):
            key = f"event:{event}:{event_id}:{name}" if event_id else None
            run_ids.append(engine.start(self.get(name), payload, idempotency_key=key))
        if not run_ids:
            self.logger.info("Event %r published; no workflow is registered for it.", event)
        return run_ids
