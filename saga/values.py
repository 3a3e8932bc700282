"""Run-time values of a step: references replaced by results, conditions evaluated."""

from __future__ import annotations

from typing import Any

from .definition import OPERATORS, REF_KEY


class MissingValue(LookupError):
    """A reference points at a result or input item that does not exist."""


def referenced_steps(spec: dict[str, Any]) -> set[str]:
    """Names of the steps whose results ``spec`` (a stored step) reads."""
    found: set[str] = set(spec.get("pipe_from", ()))

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if REF_KEY in value and value.get("step"):
                found.add(value["step"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(spec["args"])
    walk(spec["kwargs"])
    walk([condition["ref"] for condition in spec["when"]])
    return found


def lookup(ref: dict[str, Any], *, results: dict[str, Any], inputs: Any) -> Any:
    value = inputs if ref[REF_KEY] == "input" else results.get(ref["step"])
    for key in ref["path"]:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            where = "inputs" if ref[REF_KEY] == "input" else f"result of {ref['step']!r}"
            raise MissingValue(f"{where} has no item {key!r} (path {ref['path']})") from None
    return value


def resolve(value: Any, *, results: dict[str, Any], inputs: Any) -> Any:
    """``value`` with every reference replaced by what it points at."""
    if isinstance(value, dict):
        if REF_KEY in value:
            return lookup(value, results=results, inputs=inputs)
        return {key: resolve(item, results=results, inputs=inputs) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, results=results, inputs=inputs) for item in value]
    return value


def conditions_hold(spec: dict[str, Any], *, results: dict[str, Any], inputs: Any) -> bool:
    """Whether every ``when`` condition of a stored step holds; a missing item counts as false."""
    for condition in spec["when"]:
        try:
            value = lookup(condition["ref"], results=results, inputs=inputs)
            if not OPERATORS[condition["op"]](value, condition["value"]):
                return False
        except (MissingValue, TypeError):
            return False
    return True


def call_arguments(spec: dict[str, Any], *, results: dict[str, Any], inputs: Any) -> list[Any]:
    """``[args, kwargs]`` of a step about to be dispatched, with piped results appended."""
    args = resolve(spec["args"], results=results, inputs=inputs)
    kwargs = resolve(spec["kwargs"], results=results, inputs=inputs)
    pipe_from = spec.get("pipe_from") or []
    if len(pipe_from) == 1:
        args.append(results.get(pipe_from[0]))
    elif pipe_from:
        args.append([results.get(name) for name in pipe_from])
    return [args, kwargs]
