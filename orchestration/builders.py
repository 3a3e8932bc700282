"""Composition helpers: ``pipeline`` (each result feeds the next) and ``group`` (parallel, bounded).

Both return a :class:`saga.Fragment` (a list of steps with entry and exit
steps), so they nest inside each other and sit in a workflow's step list
next to hand-wired DAG steps.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from saga import Fragment, Step, WorkflowDefinitionError


def _fragment(item: Step | Fragment) -> Fragment:
    if isinstance(item, Fragment):
        return item
    if isinstance(item, Step):
        return Fragment([item], entries=[item.name], exits=[item.name])
    raise WorkflowDefinitionError(f"pipeline and group take steps, pipelines and groups, not {item!r}")


def pipeline(*items: Step | Fragment) -> Fragment:
    """Run ``items`` one after the other; each entry step receives the previous item's
    result as its last positional argument (a list when the previous item is a group)."""
    if not items:
        raise WorkflowDefinitionError("a pipeline needs at least one step")
    fragments = [_fragment(item) for item in items]
    steps: list[Step] = list(fragments[0])
    for previous, current in pairwise(fragments):
        exits = tuple(previous.exits)
        for step in current:
            if step.name in current.entries:
                step = replace(step, depends_on=(*step.depends_on, *exits), pipe_from=exits)
            steps.append(step)
    return Fragment(steps, entries=list(fragments[0].entries), exits=list(fragments[-1].exits))


def group(
    items: list[Step | Fragment], *, max_concurrency: int | None = None, name: str | None = None
) -> Fragment:
    """Run ``items`` in parallel, at most ``max_concurrency`` of their steps at once."""
    if not items:
        raise WorkflowDefinitionError("a group needs at least one step")
    fragments = [_fragment(item) for item in items]
    steps = [step for fragment in fragments for step in fragment]
    if max_concurrency is not None:
        if max_concurrency < 1:
            raise WorkflowDefinitionError(f"max_concurrency must be at least 1 (got {max_concurrency})")
        label = name or f"group:{steps[0].name}"
        steps = [replace(step, group=label, group_limit=max_concurrency) for step in steps]
    entries = [entry for fragment in fragments for entry in fragment.entries]
    exits = [exit_ for fragment in fragments for exit_ in fragment.exits]
    return Fragment(steps, entries=entries, exits=exits)
