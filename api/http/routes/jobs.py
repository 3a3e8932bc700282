"""Jobs: submit (one, or a batch through ``send_many``), list, read, cancel, retry, delete."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from ..access import Principal, Viewer, note_target, require
from ..bulk import Plan, bulk_action, planner
from ..context import ApiContext, broker_of, context_of
from ..models import (
    BulkAccepted,
    Job,
    JobAccepted,
    JobAction,
    JobAttempt,
    JobBatch,
    JobBatchAccepted,
    JobDetail,
    JobRetry,
    JobSelection,
    JobSubmission,
)
from ..pagination import Page, naive_utc, page_of, prefixed_filters, time_cursor
from ..problems import API_PROBLEMS, Problem, problem_responses
from .dead_letters import dead_letter_view

router = APIRouter(prefix="/api/v1", tags=["jobs"], responses=API_PROBLEMS)

#: Query parameters of ``GET /jobs`` that filter on a keyword argument: ``args.<name>=<value>``.
ARGS_FILTER_PREFIX = "args."

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="The same key within 24 h returns the first job and sends nothing.",
    ),
]


def _request_of(body: JobSubmission, principal: Principal):
    from actors.broker import delay_until
    from orchestration.jobs import BadArguments, JobRequest

    try:
        delay = body.delay_ms if body.run_at is None else delay_until(body.run_at)
    except ValueError as exc:  # over the broker's longest delay
        raise BadArguments(str(exc)) from None
    options = {"user_id": body.user_id or principal.key_name}
    if principal.address:
        options["ip_address"] = principal.address
    return JobRequest(
        actor=body.actor,
        args=body.args,
        kwargs=body.kwargs,
        priority=body.priority,
        delay_ms=delay or None,
        options=options,
    )


def submission_problem(exc: Exception) -> Problem:
    """The problem of a refused submission (:class:`orchestration.jobs.SubmissionError`)."""
    from orchestration.jobs import BadArguments, PayloadTooLarge, UnknownActor

    if isinstance(exc, UnknownActor):
        return Problem("unknown-actor", str(exc))
    if isinstance(exc, PayloadTooLarge):
        return Problem("payload-too-large", str(exc))
    if isinstance(exc, BadArguments):
        return Problem("bad-arguments", str(exc))
    return Problem("validation-error", str(exc))


@router.post(
    "/jobs",
    response_model=JobAccepted,
    status_code=202,
    summary="Submit a job",
    responses={
        200: {"model": JobAccepted, "description": "Idempotency-Key seen before: the first job"},
        **problem_responses(413),
    },
)
def submit(
    request: Request,
    response: Response,
    body: JobSubmission,
    principal: Annotated[Principal, require("jobs.submit")],
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    from actors.broker import LANES
    from orchestration.jobs import IdempotencyKeys, SubmissionError, find_actor, submit_once
    from storage import get_task

    context = context_of(request)
    broker = broker_of(context)
    keys = IdempotencyKeys(
        client=context.redis, namespace=context.namespace, ttl=context.settings.api_idempotency_ttl_s
    )
    try:
        job_id, sent = submit_once(
            broker,
            _request_of(body, principal),
            keys=keys,
            idempotency_key=idempotency_key,
            max_bytes=context.settings.api_max_payload_bytes,
        )
    except SubmissionError as exc:
        raise submission_problem(exc) from None
    note_target(request, f"job={job_id}", actor=body.actor, replayed=not sent)
    actor, priority = find_actor(broker, body.actor), body.priority
    if not sent:
        response.status_code = 200
        first = get_task(context.database, job_id)  # the first job's own actor and lane
        if first is not None:
            actor = broker.actors.get(first.task_type, actor)
            priority = first.priority if first.priority in LANES else priority
    return JobAccepted(
        job_id=job_id, actor=actor.actor_name, queue=actor.queue_name, priority=priority, replayed=not sent
    )


@router.post(
    "/jobs:batch",
    response_model=JobBatchAccepted,
    status_code=202,
    summary="Submit many jobs in one round trip (all checked first: one refused, none sent)",
    responses=problem_responses(413),
)
def submit_batch(
    request: Request, body: JobBatch, principal: Annotated[Principal, require("jobs.submit")]
) -> JobBatchAccepted:
    from orchestration.jobs import SubmissionError, submit_jobs

    context = context_of(request)
    try:
        messages = submit_jobs(
            broker_of(context),
            [_request_of(job, principal) for job in body.jobs],
            max_bytes=context.settings.api_max_payload_bytes,
        )
    except SubmissionError as exc:
        raise submission_problem(exc) from None
    note_target(request, f"jobs={len(messages)}")
    return JobBatchAccepted(job_ids=[message.message_id for message in messages])


def job_view(row, cls=Job):
    arguments = row.args or {}
    return cls(
        job_id=row.task_id,
        actor=row.task_type,
        queue=row.queue,
        status=row.status,
        priority=row.priority,
        args=arguments.get("args"),
        kwargs=arguments.get("kwargs"),
        user_id=row.user_id,
        retry_count=row.retry_count,
        max_retries=row.max_retries,
        error=row.error_message,
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        processing_time_ms=row.processing_time_ms,
        worker_id=row.worker_id,
        **({"timeout_ms": row.timeout, "ip_address": row.ip_address} if cls is JobDetail else {}),
    )


def attempt_view(row, number: int) -> JobAttempt:
    host, _, pid = (row.worker_id or "").rpartition(":")
    return JobAttempt(
        number=number,
        retry_count=row.retry_count,
        status=row.status,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_ms=row.duration_ms,
        worker_id=row.worker_id,
        worker_host=host or None,
        worker_pid=int(pid) if pid.isdigit() else None,
        error_type=row.error_type,
        error=row.error_message,
        traceback=row.traceback,
        trace_id=row.trace_id,
    )


@router.get(
    "/jobs",
    response_model=Page[Job],
    summary="Jobs, newest first, filtered; keyset pages (`cursor`)",
    description="Besides the parameters below, `args.<name>=<value>` keeps the jobs whose keyword "
    "argument `<name>` equals the string `<value>` (e.g. `args.symbol=AAPL`).",
)
def list_jobs(
    request: Request,
    principal: Viewer,
    status: str | None = None,
    actor: str | None = None,
    queue: str | None = None,
    priority: str | None = None,
    user: str | None = None,
    created_from: Annotated[datetime | None, Query(alias="from")] = None,
    created_to: Annotated[datetime | None, Query(alias="to")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[Job]:
    from storage import TaskFilter, page_tasks

    after = time_cursor(cursor)
    kwargs_equal = prefixed_filters(request.query_params, ARGS_FILTER_PREFIX)
    task_filter = TaskFilter(
        status=status,
        task_type=actor,
        queue=queue,
        priority=priority,
        user_id=user,
        created_from=naive_utc(created_from) if created_from else None,
        created_to=naive_utc(created_to) if created_to else None,
        kwargs_equal=kwargs_equal,
    )
    rows = page_tasks(context_of(request).database, task_filter, after=after, limit=limit + 1)
    page, next_cursor = page_of(rows, limit=limit, key=lambda row: (row.created_at, row.task_id))
    return Page[Job](items=[job_view(row) for row in page], next_cursor=next_cursor)


def _task(context: ApiContext, job_id: str):
    from storage import get_task

    row = get_task(context.database, job_id)
    if row is None:
        raise Problem("not-found", f"no job with id {job_id!r}")
    return row


@router.get(
    "/jobs/{job_id}",
    response_model=JobDetail,
    summary="One job: every attempt, and its dead letter if it died",
)
def get_job(request: Request, job_id: str, principal: Viewer) -> JobDetail:
    from actors.middleware import UnknownDeadLetter, find_dead_letter
    from storage import get_attempts

    context = context_of(request)
    task = _task(context, job_id)
    detail = job_view(task, JobDetail)
    attempts = get_attempts(context.database, job_id, task=task)
    detail.attempts = [attempt_view(row, number) for number, row in enumerate(attempts, 1)]
    if detail.status == "dead_letter" and context.broker is not None:
        with contextlib.suppress(UnknownDeadLetter):  # retried or purged meanwhile
            detail.dead_letter = dead_letter_view(find_dead_letter(context.broker, job_id))
    return detail


@router.post("/jobs/{job_id}/cancel", response_model=JobAction, summary="Cancel a waiting or running job")
def cancel_job(
    request: Request, job_id: str, principal: Annotated[Principal, require("jobs.cancel")]
) -> JobAction:
    from actors.middleware import cancel_job as cancel

    context = context_of(request)
    outcome = cancel(broker_of(context), job_id, engine=context.database, ttl=context.settings.cancel_ttl_ms)
    return JobAction(job_id=job_id, outcome=outcome.state.value, detail=outcome.status)


@router.post(
    "/jobs/{job_id}/retry",
    response_model=JobAction,
    status_code=202,
    summary="Retry a dead, failed or cancelled job (optionally with new arguments)",
)
def retry_job(
    request: Request,
    job_id: str,
    principal: Annotated[Principal, require("jobs.retry")],
    body: JobRetry | None = None,
) -> JobAction:
    from orchestration.jobs import SubmissionError
    from orchestration.jobs import retry_job as retry

    context = context_of(request)
    row = _task(context, job_id)
    edits = body or JobRetry()
    try:
        outcome = retry(
            broker_of(context),
            row,
            args=edits.args,
            kwargs=edits.kwargs,
            max_bytes=context.settings.api_max_payload_bytes,
        )
    except SubmissionError as exc:
        raise submission_problem(exc) from None
    except LookupError as exc:
        raise Problem("conflict", str(exc)) from None
    note_target(request, f"job={job_id}", retried_as=outcome.job_id)
    return JobAction(job_id=outcome.job_id, outcome=outcome.how, detail=f"retry of {job_id}")


@router.delete("/jobs/{job_id}", status_code=204, summary="Delete a finished job's audit row (admin)")
def delete_job(
    request: Request, job_id: str, principal: Annotated[Principal, require("jobs.delete")]
) -> Response:
    from storage import TERMINAL_STATUSES, delete_task

    context = context_of(request)
    row = _task(context, job_id)
    if row.status not in TERMINAL_STATUSES:
        raise Problem("conflict", f"job {job_id} is {row.status}: cancel it first")
    delete_task(context.database, job_id)
    return Response(status_code=204)


#: Audit statuses a bulk cancel selects: the jobs that may still run.
CANCELLABLE = ("pending", "running", "retrying")


@router.post(
    "/jobs:cancel",
    response_model=BulkAccepted,
    status_code=202,
    summary="Cancel many waiting or running jobs (ids or the list's filters) as a tracked operation",
    responses={200: {"model": BulkAccepted, "description": "Dry run: the count"}},
)
def cancel_many(
    request: Request,
    response: Response,
    body: JobSelection,
    principal: Annotated[Principal, require("jobs.cancel")],
) -> BulkAccepted:
    broker_of(context_of(request))  # 503 before anything, without a broker
    return bulk_action(
        request,
        response,
        dry_run=body.dry_run,
        kind="jobs.cancel",
        params=body.model_dump(mode="json", by_alias=True, exclude={"dry_run"}),
        principal=principal,
    )


@planner("jobs.cancel")
def _plan_cancel(context: ApiContext, params: dict) -> Plan:
    """Cancel the jobs the selection ``params`` covers that may still run.  A cancelled job
    leaves the selection: planned again, it is what is left."""
    from actors.middleware import cancel_job as cancel
    from storage import TaskFilter, count_tasks, iter_tasks

    body = JobSelection.model_validate(params)
    broker = broker_of(context)
    task_filter = TaskFilter(
        statuses=CANCELLABLE,
        status=body.status,
        task_type=body.actor,
        queue=body.queue,
        priority=body.priority,
        user_id=body.user,
        created_from=naive_utc(body.created_from) if body.created_from else None,
        created_to=naive_utc(body.created_to) if body.created_to else None,
        kwargs_equal=body.args,
        task_ids=tuple(body.ids) if body.ids is not None else None,
    )
    ttl = context.settings.cancel_ttl_ms

    def apply(rows) -> int:
        outcomes = [cancel(broker, row.task_id, engine=context.database, ttl=ttl) for row in rows]
        return sum(1 for outcome in outcomes if outcome.state.value in ("cancelled", "cancelling"))

    return Plan(
        # a keyset walk: a cancelled row leaves the selection without shifting the next page
        items=lambda: iter_tasks(context.database, task_filter),
        apply=apply,
        count=lambda: count_tasks(context.database, task_filter),
    )
