"""The catalog (actors and workflows), starting runs (registered or ad hoc), reading and operating runs."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from ..access import Principal, Viewer, note_target, require
from ..context import ApiContext, broker_of, context_of
from ..models import (
    ActorInfo,
    Catalog,
    CompensationPreview,
    Edge,
    HistoryEntry,
    InlineWorkflow,
    RunStart,
    RunStarted,
    SignalBody,
    SignalSent,
    TimelineEntry,
    WorkflowInfo,
    WorkflowRunDetail,
    WorkflowRunSummary,
    WorkflowStepView,
)
from ..pagination import Page, page_of, prefixed_filters, time_cursor
from ..problems import API_PROBLEMS, Problem
from .jobs import IdempotencyKey

router = APIRouter(prefix="/api/v1", tags=["workflows"], responses=API_PROBLEMS)


def workflow_version(workflow) -> str:
    """A digest of the definition: the steps' actors, graph and specs."""
    body = [
        (step.name, step.actor, list(step.depends_on), step.spec(), step.group, step.group_limit)
        for step in workflow.steps
    ]
    text = json.dumps([workflow.on_failure, body], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@router.get("/actors", response_model=Catalog, tags=["catalog"], summary="Registered actors and workflows")
def catalog(request: Request, principal: Viewer) -> Catalog:
    context = context_of(request)
    settings = context.settings
    actors = []
    for name, actor in sorted((broker_of(context).actors or {}).items()):
        options = actor.options
        periodic = options.get("periodic")
        actors.append(
            ActorInfo(
                name=name,
                queue=actor.queue_name,
                max_retries=options.get("max_retries", settings.max_retries),
                time_limit_ms=options.get("time_limit", settings.time_limit_ms),
                priority=actor.priority,
                periodic=str(periodic) if periodic is not None else None,
            )
        )
    workflows = []
    registry = context.workflows
    for name in registry.names() if registry is not None else []:
        workflow = registry.get(name)
        workflows.append(
            WorkflowInfo(
                name=name,
                version=workflow_version(workflow),
                steps=[step.name for step in workflow.steps],
                events=registry.events_of(name),
            )
        )
    return Catalog(actors=actors, workflows=workflows)


def _engine(context: ApiContext):
    from saga import engine_of

    return engine_of(broker_of(context))


def _operate(operation, *args, **kwargs):
    from orchestration import UnknownWorkflow
    from saga import ConcurrencyLimitExceeded, WorkflowDefinitionError, WorkflowError

    try:
        return operation(*args, **kwargs)
    except UnknownWorkflow as exc:
        raise Problem("not-found", str(exc)) from None
    except WorkflowDefinitionError as exc:
        raise Problem("invalid-workflow", str(exc)) from None
    except (WorkflowError, ConcurrencyLimitExceeded) as exc:
        text = str(exc)
        raise Problem("not-found" if text.startswith("no run with id") else "conflict", text) from None
    except (TypeError, ValueError) as exc:  # inputs that are not JSON
        raise Problem("validation-error", str(exc)) from None


def _start(request: Request, response: Response, workflow, inputs, deadline_s, idempotency_key) -> RunStarted:
    context = context_of(request)
    engine = _engine(context)
    existing = engine._run_with_key(idempotency_key) if idempotency_key else None
    deadline = timedelta(seconds=deadline_s) if deadline_s is not None else None
    run_id = existing or _operate(
        engine.start, workflow, inputs, idempotency_key=idempotency_key, deadline=deadline
    )
    note_target(request, f"run={run_id}", workflow=workflow.name, replayed=existing is not None)
    response.status_code = 200 if existing else 202
    return RunStarted(run_id=run_id, workflow=workflow.name, replayed=existing is not None)


@router.post(
    "/workflows/{name}/runs",
    response_model=RunStarted,
    status_code=202,
    summary="Start a run of a registered workflow",
)
def start_run(
    request: Request,
    response: Response,
    name: str,
    principal: Annotated[Principal, require("workflows.start")],
    body: RunStart | None = None,
    idempotency_key: IdempotencyKey = None,
) -> RunStarted:
    context = context_of(request)
    if context.workflows is None:
        raise Problem("unavailable", "this API process has no workflow registry")
    workflow = _operate(context.workflows.get, name)
    body = body or RunStart()
    return _start(request, response, workflow, body.inputs, body.deadline_s, _scoped(idempotency_key, name))


def _scoped(key: str | None, name: str) -> str | None:
    return f"api:{name}:{key}" if key else None


@router.post(
    "/workflows:run",
    response_model=RunStarted,
    status_code=202,
    summary="Run an ad-hoc workflow: steps of registered actors with dependencies, groups, compensations",
)
def run_inline(
    request: Request,
    response: Response,
    body: InlineWorkflow,
    principal: Annotated[Principal, require("workflows.start")],
    idempotency_key: IdempotencyKey = None,
) -> RunStarted:
    from saga import Step, Workflow

    def build():
        steps = [
            Step(
                name=step.name,
                actor=step.actor,
                args=step.args,
                kwargs=step.kwargs,
                depends_on=step.depends_on,
                compensate_with=step.compensate_with,
                group=step.group,
                group_limit=step.group_limit,
                max_retries=step.max_retries,
                time_limit=step.time_limit_ms,
            )
            for step in body.steps
        ]
        workflow = Workflow(body.name, steps, on_failure=body.on_failure)
        workflow.check_actors(broker_of(context_of(request)).actors)
        return workflow

    workflow = _operate(build)
    return _start(
        request, response, workflow, body.inputs, body.deadline_s, _scoped(idempotency_key, body.name)
    )


def _summary(run) -> WorkflowRunSummary:
    return WorkflowRunSummary.model_validate(run, from_attributes=True)


@router.get("/workflow-runs", response_model=Page[WorkflowRunSummary], summary="Runs, newest first, filtered")
def list_runs(
    request: Request,
    principal: Viewer,
    workflow: str | None = None,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[WorkflowRunSummary]:
    """Besides the parameters below, ``input.<name>=<value>`` keeps the runs whose input
    ``name`` is the string ``value``."""
    from storage import page_runs

    after = time_cursor(cursor)
    input_equal = prefixed_filters(request.query_params, "input.")
    rows = page_runs(
        context_of(request).database,
        status=status,
        workflow=workflow,
        input_equal=input_equal,
        after=after,
        limit=limit + 1,
    )
    page, next_cursor = page_of(rows, limit=limit, key=lambda run: (run.created_at, run.run_id))
    return Page[WorkflowRunSummary](items=[_summary(run) for run in page], next_cursor=next_cursor)


def _run_and_steps(context: ApiContext, run_id: str):
    from storage import get_run, get_steps

    run = get_run(context.database, run_id)
    if run is None:
        raise Problem("not-found", f"no run with id {run_id!r}")
    return run, get_steps(context.database, run_id)


def _timeline(run, steps) -> list[TimelineEntry]:
    entries = [TimelineEntry(at=run.created_at, step=None, event="run created")]
    for step in steps:
        if step.ready_at:
            entries.append(TimelineEntry(at=step.ready_at, step=step.name, event="ready"))
        if step.started_at:
            entries.append(TimelineEntry(at=step.started_at, step=step.name, event="started"))
        if step.finished_at:
            entries.append(TimelineEntry(at=step.finished_at, step=step.name, event=step.status))
    if run.finished_at:
        entries.append(TimelineEntry(at=run.finished_at, step=None, event=f"run {run.status}"))
    return sorted(entries, key=lambda entry: entry.at)


@router.get("/workflow-runs/{run_id}", response_model=WorkflowRunDetail, summary="One run with its steps")
def get_run(request: Request, run_id: str, principal: Viewer) -> WorkflowRunDetail:
    from storage import compensation_order

    run, steps = _run_and_steps(context_of(request), run_id)
    views = [
        WorkflowStepView(
            name=step.name,
            actor=step.actor,
            status=step.status,
            attempts=step.attempts,
            depends_on=list(step.depends_on),
            compensate_with=(step.spec or {}).get("compensate_with"),
            group=step.group_name,
            progress=step.progress,
            checkpoint=step.checkpoint,
            error=step.error,
            compensation_error=step.compensation_error,
            worker_id=step.worker_id,
            started_at=step.started_at,
            finished_at=step.finished_at,
        )
        for step in steps
    ]
    edges = [Edge(source=dep, target=step.name) for step in steps for dep in step.depends_on]
    order = compensation_order(steps)
    compensation_edges = [Edge(source=a.name, target=b.name) for a, b in itertools.pairwise(order)]
    return WorkflowRunDetail(
        **_summary(run).model_dump(),
        steps=views,
        edges=edges,
        compensation_edges=compensation_edges,
        timeline=_timeline(run, steps),
    )


@router.get(
    "/workflow-runs/{run_id}/compensation-preview",
    response_model=CompensationPreview,
    summary="Which compensations a cancel would run now, in order",
)
def compensation_preview(request: Request, run_id: str, principal: Viewer) -> CompensationPreview:
    from storage import compensation_order

    run, steps = _run_and_steps(context_of(request), run_id)
    plan = [
        {"step": step.name, "actor": step.spec["compensate_with"], "completed": step.completion_seq}
        for step in compensation_order(steps)
    ]
    if run.status not in ("running", "compensating"):
        plan = []  # only a running run can be cancelled
    return CompensationPreview(run_id=run_id, compensations=plan)


@router.post(
    "/workflow-runs/{run_id}/cancel",
    response_model=WorkflowRunSummary,
    status_code=202,
    summary="Cancel a running run (compensating what succeeded unless compensate=false)",
)
def cancel_run(
    request: Request,
    run_id: str,
    principal: Annotated[Principal, require("workflows.control")],
    compensate: bool = True,
) -> WorkflowRunSummary:
    context = context_of(request)
    _run_and_steps(context, run_id)
    _operate(_engine(context).cancel, run_id, compensate=compensate)
    return _summary(_run_and_steps(context, run_id)[0])


@router.post(
    "/workflow-runs/{run_id}/resume",
    response_model=WorkflowRunSummary,
    status_code=202,
    summary="Resume a stopped run from its failed steps",
)
def resume_run(
    request: Request, run_id: str, principal: Annotated[Principal, require("workflows.control")]
) -> WorkflowRunSummary:
    context = context_of(request)
    _run_and_steps(context, run_id)
    _operate(_engine(context).resume, run_id)
    return _summary(_run_and_steps(context, run_id)[0])


@router.post(
    "/workflow-runs/{run_id}/fork",
    response_model=RunStarted,
    status_code=202,
    summary="A new run of the same steps, reusing the results of the steps that succeeded",
)
def fork_run(
    request: Request,
    run_id: str,
    principal: Annotated[Principal, require("workflows.control")],
    body: RunStart | None = None,
) -> RunStarted:
    context = context_of(request)
    run, _ = _run_and_steps(context, run_id)
    new_id = _operate(_engine(context).fork, run_id, inputs=(body.inputs if body else None))
    note_target(request, f"run={run_id}", fork=new_id)
    return RunStarted(run_id=new_id, workflow=run.workflow, replayed=False)


@router.get(
    "/workflow-runs/{run_id}/history",
    response_model=list[HistoryEntry],
    summary="The run's ordered event history (dispatches, claims, outcomes, compensations, signals)",
)
def run_history(request: Request, run_id: str, principal: Viewer) -> list[HistoryEntry]:
    from storage import get_history

    context = context_of(request)
    _run_and_steps(context, run_id)
    return [
        HistoryEntry(at=e.at, kind=e.kind, step=e.step, attempt=e.attempt, detail=e.detail)
        for e in get_history(context.database, run_id)
    ]


@router.post(
    "/workflow-runs/{run_id}/signals/{name}",
    response_model=SignalSent,
    status_code=202,
    summary="Send a signal to a run: its waiting steps run now; if none waits yet, it is kept",
)
def signal_run(
    request: Request,
    run_id: str,
    name: str,
    principal: Annotated[Principal, require("workflows.control")],
    body: SignalBody | None = None,
) -> SignalSent:
    context = context_of(request)
    _run_and_steps(context, run_id)
    woke = _operate(_engine(context).signal, run_id, name, body.payload if body else None)
    note_target(request, f"run={run_id}", signal=name)
    return SignalSent(run_id=run_id, signal=name, woke=woke)
