"""Workflow versions: a definition's canonical form, and the check that a version is never
deployed with two different definitions.

The first start of ``(name, version)`` stores the definition (``workflow_definitions``); a
later start, or a process's start-up check (:func:`check_definitions`), with a different
definition under the same version is refused with the differences named.  A run keeps the
definition it started with whatever is deployed later: its steps (actors, arguments,
dependencies, options) are stored with it and the engine never reads the Python definition
again.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from storage import WorkflowDefinitionRecord, utc_now

from .definition import Workflow, WorkflowDefinitionError

DEFINITIONS = WorkflowDefinitionRecord.__table__

#: Differences named in a refusal at most (the rest are counted).
MAX_DIFFERENCES = 5


def fingerprint(definition: dict[str, Any]) -> str:
    """A stable digest of a definition's canonical JSON."""
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed from ``stored`` to ``new`` (both :meth:`Workflow.definition` forms)."""
    found = [
        f"{key}: {stored.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(stored) | set(new))
        if key != "steps" and stored.get(key) != new.get(key)
    ]
    old_steps = {step["name"]: _flat(step) for step in stored.get("steps", [])}
    new_steps = {step["name"]: _flat(step) for step in new.get("steps", [])}
    found += [f"step {name!r} removed" for name in old_steps if name not in new_steps]
    found += [f"step {name!r} added" for name in new_steps if name not in old_steps]
    for name in old_steps.keys() & new_steps.keys():
        before, after = old_steps[name], new_steps[name]
        found += [
            f"step {name!r} {key}: {before.get(key)!r} -> {after.get(key)!r}"
            for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)
        ]
    if not found and [s["name"] for s in stored.get("steps", [])] != [
        s["name"] for s in new.get("steps", [])
    ]:
        found.append("the steps' order")
    return found


def _flat(step: dict[str, Any]) -> dict[str, Any]:
    """A step's fields and its spec's side by side, so a difference names the field."""
    return {**{k: v for k, v in step.items() if k != "spec"}, **step.get("spec", {})}


class DefinitionRegistry:
    """The definitions this process checked against the database (each once).

    Parameters:
      database(Engine): Where ``workflow_definitions`` lives.
    """

    def __init__(self, *, database: Engine) -> None:
        self.database = database
        self._checked: set[tuple[str, int, str]] = set()
        self._lock = threading.Lock()

    def check(self, workflow: Workflow) -> None:
        """Store ``workflow``'s definition under its version, or raise
        :class:`WorkflowDefinitionError` if that version holds a different one."""
        definition = workflow.definition()
        key = (workflow.name, workflow.version, fingerprint(definition))
        if key in self._checked:
            return
        with self._lock:
            stored = self._stored(workflow)
            if stored is None:
                try:
                    with self.database.begin() as connection:
                        connection.execute(
                            insert(DEFINITIONS).values(
                                name=workflow.name,
                                version=workflow.version,
                                fingerprint=key[2],
                                definition=definition,
                                created_at=utc_now(),
                            )
                        )
                except IntegrityError:  # another process stored it first: compare with theirs
                    stored = self._stored(workflow)
            if stored is not None and stored.fingerprint != key[2]:
                changes = differences(stored.definition, definition)
                shown = "; ".join(changes[:MAX_DIFFERENCES])
                more = (
                    f" (and {len(changes) - MAX_DIFFERENCES} more)" if len(changes) > MAX_DIFFERENCES else ""
                )
                raise WorkflowDefinitionError(
                    f"workflow {workflow.name!r} version {workflow.version} is already defined "
                    f"differently: {shown}{more}; give the changed definition a new version"
                )
            self._checked.add(key)

    def _stored(self, workflow: Workflow):
        query = select(DEFINITIONS).where(
            DEFINITIONS.c.name == workflow.name, DEFINITIONS.c.version == workflow.version
        )
        with self.database.connect() as connection:
            return connection.execute(query).first()


def check_definitions(database: Engine, workflows: Iterable[Workflow]) -> None:
    """Check every workflow (a process's start-up): raises on the first version defined twice."""
    registry = DefinitionRegistry(database=database)
    for workflow in workflows:
        registry.check(workflow)
