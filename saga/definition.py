"""Workflow definitions: steps, their edges, conditions and compensations, validated up front.

A definition is plain data: steps name actors (by name, or by the actor
object whose name is taken), and everything a worker needs to run a step is
stored with the run, so workers never need the Python definition.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from graphlib import CycleError, TopologicalSorter
from typing import Any

#: Values of ``Workflow.on_failure``: let running siblings finish, or abort them.
ON_FAILURE_POLICIES = ("finish", "cancel")

#: Key that marks a reference in stored step arguments.
REF_KEY = "$ref"

#: Comparison operators a condition may use, by name.
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "truthy": lambda value, _: bool(value),
    "falsy": lambda value, _: not value,
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
    "in": lambda value, options: value in options,
}


class WorkflowDefinitionError(ValueError):
    """A workflow definition is invalid; the message names the workflow and step."""


@dataclass(frozen=True, eq=False)
class Ref:
    """A value known only at run time: a step's result, or the run's inputs, at ``path``.

    ``result("quote")["price"]`` and ``inputs("symbol")`` build them; used as
    step arguments they are replaced by the value when the step is dispatched,
    and comparing them (``result("risk")["ok"] == True``) builds a
    :class:`Condition` for ``when``.
    """

    source: str
    step: str | None = None
    path: tuple[str | int, ...] = ()

    def __getitem__(self, key: str | int) -> Ref:
        return replace(self, path=(*self.path, key))

    def to_json(self) -> dict[str, Any]:
        return {REF_KEY: self.source, "step": self.step, "path": list(self.path)}

    def truthy(self) -> Condition:
        return Condition(self, "truthy")

    def falsy(self) -> Condition:
        return Condition(self, "falsy")

    def is_in(self, options: Collection[Any]) -> Condition:
        return Condition(self, "in", list(options))

    def __eq__(self, value: object) -> Condition:  # type: ignore[override]
        return Condition(self, "eq", value)

    def __ne__(self, value: object) -> Condition:  # type: ignore[override]
        return Condition(self, "ne", value)

    def __gt__(self, value: object) -> Condition:
        return Condition(self, "gt", value)

    def __ge__(self, value: object) -> Condition:
        return Condition(self, "ge", value)

    def __lt__(self, value: object) -> Condition:
        return Condition(self, "lt", value)

    def __le__(self, value: object) -> Condition:
        return Condition(self, "le", value)

    __hash__ = object.__hash__


def result(step: str, *path: str | int) -> Ref:
    """The result of ``step`` (optionally an item inside it)."""
    return Ref("result", step, tuple(path))


def inputs(*path: str | int) -> Ref:
    """The run's inputs (optionally an item inside them)."""
    return Ref("input", None, tuple(path))


@dataclass(frozen=True)
class Condition:
    """``ref <op> value``: whether a step runs.  False -> the step is ``skipped``."""

    ref: Ref
    op: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise WorkflowDefinitionError(
                f"unknown condition operator {self.op!r}; use one of {list(OPERATORS)}"
            )

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref.to_json(), "op": self.op, "value": self.value}


def actor_name(actor: Any) -> str:
    """The name of an actor given as an object (anything with ``actor_name``) or a name."""
    name = getattr(actor, "actor_name", actor)
    if not isinstance(name, str) or not name:
        raise WorkflowDefinitionError(f"an actor must be an actor object or a non-empty name, not {actor!r}")
    return name


@dataclass
class Step:
    """One step: call ``actor`` with ``args``/``kwargs`` once its dependencies are done.

    Parameters:
      name: Unique within the workflow; later steps see the result by it.
      actor: An actor object or an actor name.
      args, kwargs: JSON values; :func:`result` and :func:`inputs` references
        are replaced by their values when the step is dispatched.
      depends_on: Names of steps that must be done (succeeded or skipped) first.
      when: Condition(s), all of which must hold for the step to run.
      compensate_with: Actor that undoes the step; it is called with the
        step's arguments plus ``result=`` the step's result.
      max_retries, min_backoff, max_backoff, time_limit: Per-step overrides of
        the actor's retry policy and time limit (milliseconds).
      pipe_from: Steps whose results are appended as the last positional
        argument (one step: its result; several: the list of their results).
      group, group_limit: At most ``group_limit`` steps of ``group`` are
        ready or running at once.
      wait: Set by :mod:`saga.waits` (``sleep``, ``until``, ``wait_for_signal``): how the step
        waits without holding a worker.  Defaults to None: an ordinary step.
    """

    name: str
    actor: Any
    args: tuple[Any, ...] | list[Any] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] | list[str] = ()
    when: Condition | tuple[Condition, ...] | list[Condition] | None = None
    compensate_with: Any = None
    max_retries: int | None = None
    min_backoff: int | None = None
    max_backoff: int | None = None
    time_limit: int | None = None
    pipe_from: tuple[str, ...] = ()
    group: str | None = None
    group_limit: int | None = None
    wait: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise WorkflowDefinitionError(f"a step needs a non-empty name (got {self.name!r})")
        try:
            self.actor = actor_name(self.actor)
            if self.compensate_with is not None:
                self.compensate_with = actor_name(self.compensate_with)
        except WorkflowDefinitionError as exc:
            raise WorkflowDefinitionError(f"step {self.name!r}: {exc}") from None
        self.args = tuple(self.args)
        self.depends_on = tuple(self.depends_on)
        self.pipe_from = tuple(self.pipe_from)
        if isinstance(self.when, Condition):
            self.when = (self.when,)
        elif self.when is not None:
            self.when = tuple(self.when)

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return self.when or ()  # type: ignore[return-value]

    def options(self) -> dict[str, int]:
        """The message options this step sets (retry policy, time limit)."""
        names = ("max_retries", "min_backoff", "max_backoff", "time_limit")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def spec(self) -> dict[str, Any]:
        """The step's stored form: what a worker needs to dispatch and compensate it."""
        extra = {"wait": dict(self.wait)} if self.wait else {}
        return {
            **extra,
            "args": _encode(list(self.args)),
            "kwargs": _encode(self.kwargs),
            "when": [condition.to_json() for condition in self.conditions],
            "compensate_with": self.compensate_with,
            "options": self.options(),
            "pipe_from": list(self.pipe_from),
        }


class Fragment(list):
    """Steps built by a helper (``pipeline``, ``group``), with the steps a
    following fragment attaches to: ``entries`` (no dependency inside) and
    ``exits`` (nothing inside depends on them)."""

    def __init__(self, steps: Iterable[Step], *, entries: list[str], exits: list[str]) -> None:
        super().__init__(steps)
        self.entries = entries
        self.exits = exits


def flatten(items: Iterable[Step | Fragment]) -> list[Step]:
    steps: list[Step] = []
    for item in items:
        if isinstance(item, Step):
            steps.append(item)
        elif isinstance(item, list):
            steps.extend(flatten(item))
        else:
            raise WorkflowDefinitionError(f"a workflow holds steps, pipelines and groups, not {item!r}")
    return steps


@dataclass
class Workflow:
    """A named DAG of steps.

    Parameters:
      name: The workflow's name (runs are listed by it).
      steps: Steps, ``pipeline(...)`` and ``group(...)`` fragments, in any order.
      on_failure: ``"finish"`` (default) lets running siblings of a failed step
        finish before compensating; ``"cancel"`` aborts them.
      deadline: How long a run may take; past it the run fails (and compensates).
      concurrency_key: A template formatted with the run's inputs, e.g.
        ``"backtest:{user_id}"``: at most ``concurrency_limit`` runs with the same
        key are active at once.
      concurrency_limit: Defaults to 1.
      version: The definition's version (a positive integer, default 1).  A changed
        definition needs a new version: the first start of a version stores its definition
        and a different one under the same version is refused (``saga.versions``).
    """

    name: str
    steps: list[Step | Fragment]
    on_failure: str = "finish"
    deadline: timedelta | None = None
    concurrency_key: str | None = None
    concurrency_limit: int = 1
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise WorkflowDefinitionError(f"a workflow needs a non-empty name (got {self.name!r})")
        self.steps = flatten(self.steps)
        if self.on_failure not in ON_FAILURE_POLICIES:
            raise self._error(f"on_failure must be one of {ON_FAILURE_POLICIES} (got {self.on_failure!r})")
        if self.concurrency_limit < 1:
            raise self._error(f"concurrency_limit must be at least 1 (got {self.concurrency_limit})")
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise self._error(f"version must be a positive integer (got {self.version!r})")
        self._check_steps()
        self.order = self._topological_order()
        self._check_references()

    @property
    def by_name(self) -> dict[str, Step]:
        return {step.name: step for step in self.steps}

    def dependents(self) -> dict[str, list[str]]:
        """For each step, the steps that depend on it, in definition order."""
        found: dict[str, list[str]] = {step.name: [] for step in self.steps}
        for step in self.steps:
            for dependency in step.depends_on:
                found[dependency].append(step.name)
        return found

    def definition(self) -> dict[str, Any]:
        """The canonical JSON form of the definition, as its version stores it."""
        return {
            "on_failure": self.on_failure,
            "deadline_s": self.deadline.total_seconds() if self.deadline is not None else None,
            "concurrency_key": self.concurrency_key,
            "concurrency_limit": self.concurrency_limit,
            "steps": [
                {
                    "name": step.name,
                    "actor": step.actor,
                    "depends_on": list(step.depends_on),
                    "group": step.group,
                    "group_limit": step.group_limit,
                    "spec": step.spec(),
                }
                for step in self.steps
            ],
        }

    def check_actors(self, known: Collection[str]) -> None:
        """Raise if a step or compensation names an actor not in ``known``."""
        for step in self.steps:
            for role, name in (("actor", step.actor), ("compensation actor", step.compensate_with)):
                if name is not None and name not in known:
                    raise self._error(
                        f"unknown {role} {name!r}; known actors: {', '.join(sorted(known)) or 'none'}",
                        step,
                    )

    def _error(self, text: str, step: Step | None = None) -> WorkflowDefinitionError:
        where = f"workflow {self.name!r}" + (f", step {step.name!r}" if step else "")
        return WorkflowDefinitionError(f"{where}: {text}")

    def _check_steps(self) -> None:
        if not self.steps:
            raise self._error("has no steps")
        seen: set[str] = set()
        for step in self.steps:
            if step.name in seen:
                raise self._error("the name is used by more than one step", step)
            seen.add(step.name)
        for step in self.steps:
            for dependency in step.depends_on:
                if dependency not in seen:
                    raise self._error(f"depends on unknown step {dependency!r}", step)
            if step.group_limit is not None and step.group_limit < 1:
                raise self._error(f"group_limit must be at least 1 (got {step.group_limit})", step)
            if step.max_retries is not None and step.max_retries < 0:
                raise self._error(f"max_retries must be >= 0 (got {step.max_retries})", step)
            try:
                json.dumps(step.spec(), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise self._error(f"arguments must be JSON values: {exc}", step) from None

    def _topological_order(self) -> list[str]:
        sorter = TopologicalSorter({step.name: step.depends_on for step in self.steps})
        try:
            return list(sorter.static_order())
        except CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            first = self.by_name[exc.args[1][0]]
            raise self._error(f"is part of a dependency cycle: {cycle}", first) from None

    def _check_references(self) -> None:
        ancestors: dict[str, set[str]] = {}
        by_name = self.by_name
        for name in self.order:
            step = by_name[name]
            ancestors[name] = set(step.depends_on).union(*(ancestors[d] for d in step.depends_on))
            referenced = [ref.step for ref in _refs(step) if ref.source == "result"]
            for other in [*referenced, *step.pipe_from]:
                if other not in ancestors[name]:
                    raise self._error(
                        f"uses the result of {other!r}, which is not one of its (transitive) dependencies",
                        step,
                    )


def step_rows(definition: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a run of ``definition`` (:meth:`Workflow.definition`) starts with, in order."""
    dependents: dict[str, list[str]] = {step["name"]: [] for step in definition["steps"]}
    for step in definition["steps"]:
        for dependency in step["depends_on"]:
            dependents[dependency].append(step["name"])
    return [
        {
            "name": step["name"],
            "position": position,
            "actor": step["actor"],
            "spec": step["spec"],
            "depends_on": list(step["depends_on"]),
            "dependents": dependents[step["name"]],
            "group_name": step["group"],
            "group_limit": step["group_limit"],
        }
        for position, step in enumerate(definition["steps"])
    ]


def _refs(step: Step) -> list[Ref]:
    found = [condition.ref for condition in step.conditions]

    def walk(value: Any) -> None:
        if isinstance(value, Ref):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(list(step.args))
    walk(step.kwargs)
    return found


def _encode(value: Any) -> Any:
    """``value`` with references turned into their JSON form."""
    if isinstance(value, Ref):
        return value.to_json()
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    return value
