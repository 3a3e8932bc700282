"""User strategy code: submit a backtest or a screening, read its result (the seed's format)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Request

from ..access import Principal, Viewer, note_target, require
from ..context import broker_of, context_of
from ..models import StrategyAccepted, StrategyResult, StrategySubmission
from ..problems import API_PROBLEMS, Problem

router = APIRouter(prefix="/api/v1/strategies", tags=["strategies"], responses=API_PROBLEMS)


def _submit(request: Request, task_type: str, body: StrategySubmission) -> StrategyAccepted:
    from actors.strategies import InvalidTask, parse_args
    from actors.strategy import ACTORS  # the queue module: its actors by seed task type

    context = context_of(request)
    broker_of(context)
    args = body.model_dump(exclude_none=True)
    try:
        parse_args(task_type, args)
    except InvalidTask as exc:
        raise Problem("bad-arguments", str(exc)) from None
    task_id = f"api-{uuid.uuid4().hex}"
    ACTORS[task_type].send(task_id, args)
    note_target(request, f"task={task_id}", task_type=task_type)
    return StrategyAccepted(task_id=task_id, task_type=task_type)


@router.post("/backtests", response_model=StrategyAccepted, status_code=202, summary="Submit a backtest")
def backtest(
    request: Request, body: StrategySubmission, principal: Annotated[Principal, require("strategies.submit")]
) -> StrategyAccepted:
    return _submit(request, "backtest", body)


@router.post("/screenings", response_model=StrategyAccepted, status_code=202, summary="Submit a screening")
def screening(
    request: Request, body: StrategySubmission, principal: Annotated[Principal, require("strategies.submit")]
) -> StrategyAccepted:
    return _submit(request, "screening", body)


@router.get("/results/{task_id}", response_model=StrategyResult, summary="A strategy task's result document")
def result(request: Request, task_id: str, principal: Viewer) -> StrategyResult:
    from actors.strategies import TaskResultStore

    context = context_of(request)
    store = TaskResultStore(
        client=context.redis,
        prefix=context.settings.strategy_result_prefix,
        ttl_seconds=context.settings.strategy_result_ttl_s,
    )
    found = store.get(task_id)
    if found is None:
        raise Problem("not-found", f"no result for task {task_id!r} (not started yet, unknown, or expired)")
    return StrategyResult(task_id=task_id, status=found.status.value, data=found.data)
