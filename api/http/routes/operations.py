"""Queues (depths, pause/resume), workers, schedules and alerts."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from ..access import Principal, Viewer, note_target, require
from ..context import ApiContext, broker_of, context_of
from ..models import (
    Alert,
    JobAction,
    QueueAction,
    QueueStats,
    Schedule,
    ScheduleChange,
    ScheduleCreate,
    Worker,
)
from ..pagination import Page, decode_cursor, page_of
from ..problems import API_PROBLEMS, Problem

#: The window of ``enqueued_last_minute``.
_MINUTE = timedelta(minutes=1)

router = APIRouter(prefix="/api/v1", tags=["operations"], responses=API_PROBLEMS)


def _in_flight(context: ApiContext) -> dict[tuple[str, str], int]:
    """Messages taken by a consumer and not acked yet, per (broker id, queue): Dramatiq's
    ``__acks__.<broker id>.<queue>`` sets (a handful of keys: workers x queues)."""
    prefix = f"{context.namespace}:__acks__."
    counts: dict[tuple[str, str], int] = {}
    for client in _clients(context):
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            broker_id, _, queue = key.decode()[len(prefix) :].partition(".")
            if queue and not queue.endswith(".DQ"):
                counts[(broker_id, queue)] = counts.get((broker_id, queue), 0) + client.scard(key)
    return counts


def _clients(context: ApiContext) -> list:
    """Every Redis the broker's queues live on (one, unless queues are routed to their own)."""
    from actors.broker import routes_of

    return routes_of(context.broker).clients() if context.broker is not None else [context.redis]


def _queue_client(context: ApiContext, queue: str):
    from actors.broker import queue_client

    return queue_client(context.broker, queue) if context.broker is not None else context.redis


def _per_queue(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for (_, queue), count in counts.items():
        totals[queue] = totals.get(queue, 0) + count
    return totals


def _oldest_age(context: ApiContext, queue: str, lanes: list[str]) -> float | None:
    """Seconds since the oldest ready message of ``queue`` was enqueued (the heads of its lanes)."""
    from dramatiq.message import Message

    client = _queue_client(context, queue)
    heads = [client.lindex(lane, 0) for lane in lanes]
    ids = [head.decode() for head in heads if head is not None]
    if not ids:
        return None
    bodies = client.hmget(f"{context.namespace}:{queue}.msgs", ids)
    stamps = [Message.decode(body).message_timestamp for body in bodies if body is not None]
    return round(max(0.0, time.time() - min(stamps) / 1000), 3) if stamps else None


@router.get("/queues", response_model=list[QueueStats], summary="Every queue: depths, in flight, age, rate")
def list_queues(request: Request, principal: Viewer) -> list[QueueStats]:
    from actors.broker import DEFAULT_LANE, LANES, paused_queues
    from actors.telemetry import RedisStateCollector
    from storage import enqueued_since, utc_now

    context = context_of(request)
    queues = sorted(
        {actor.queue_name for actor in (context.broker.actors.values() if context.broker else [])}
    )
    from actors.broker import routes_of

    collector = RedisStateCollector(
        client=context.redis,
        namespace=context.namespace,
        queues=queues,
        heartbeat_timeout=context.settings.heartbeat_timeout_ms / 1000,
        routes=routes_of(context.broker) if context.broker is not None else None,
    )
    depths, lanes = collector.depths_and_lanes()
    in_flight = _per_queue(_in_flight(context))
    paused = set().union(*(paused_queues(client, context.namespace) for client in _clients(context)))
    rates = enqueued_since(context.database, utc_now().replace(microsecond=0) - _MINUTE)
    stats = []
    for queue, depth in sorted(depths.items()):
        keys = [
            f"{context.namespace}:{queue}" + ("" if lane == DEFAULT_LANE else f":{lane}") for lane in LANES
        ]
        stats.append(
            QueueStats(
                name=queue,
                ready=lanes[queue],
                delayed=depth["delayed"],
                in_flight=in_flight.get(queue, 0),
                dead=depth["dead_letter"],
                oldest_age_s=_oldest_age(context, queue, keys) if depth["ready"] else None,
                enqueued_last_minute=rates.get(queue, 0),
                paused=queue in paused,
            )
        )
    return stats


def _known_queue(context: ApiContext, queue: str) -> None:
    known = {actor.queue_name for actor in broker_of(context).actors.values()}
    if queue not in known:
        raise Problem("not-found", f"no queue {queue!r}; known queues: {', '.join(sorted(known))}")


@router.post("/queues/{queue}/pause", response_model=QueueAction, summary="Pause a queue (messages are kept)")
def pause(
    request: Request, queue: str, principal: Annotated[Principal, require("queues.pause")]
) -> QueueAction:
    from actors.broker import pause_queue

    context = context_of(request)
    _known_queue(context, queue)
    pause_queue(_queue_client(context, queue), context.namespace, queue)  # where its fetch script runs
    return QueueAction(queue=queue, paused=True)


@router.post("/queues/{queue}/resume", response_model=QueueAction, summary="Resume a paused queue")
def resume(
    request: Request, queue: str, principal: Annotated[Principal, require("queues.pause")]
) -> QueueAction:
    from actors.broker import resume_queue

    context = context_of(request)
    _known_queue(context, queue)
    resume_queue(_queue_client(context, queue), context.namespace, queue)
    return QueueAction(queue=queue, paused=False)


@router.get("/workers", response_model=list[Worker], summary="Worker processes by last heartbeat")
def list_workers(request: Request, principal: Viewer) -> list[Worker]:
    from actors.middleware import read_workers

    context = context_of(request)
    timeout = context.settings.heartbeat_timeout_ms / 1000
    now = time.time()
    in_flight = _in_flight(context)
    workers = []
    for presence in read_workers(context.redis, context.namespace):
        host, _, pid = presence.id.rpartition(":")
        broker_id = presence.record.get("broker_id")
        workers.append(
            Worker(
                id=presence.id,
                host=host or socket.gethostname(),
                pid=int(pid) if pid.isdigit() else None,
                queues=presence.record.get("queues", []),
                in_flight=sum(count for (owner, _), count in in_flight.items() if owner == broker_id),
                last_heartbeat=datetime.fromtimestamp(presence.beat_at, UTC).replace(tzinfo=None),
                alive=now - presence.beat_at <= timeout,
            )
        )
    return workers


def _schedule_view(view, timezone: str) -> Schedule:
    from orchestration.schedules import describe_cron

    row = view.row
    return Schedule(
        name=row.name,
        spec=row.spec,
        description=describe_cron(row.spec),
        queue=row.queue,
        timezone=timezone,
        enabled=row.enabled,
        source=row.source,
        actor=row.actor or row.name,
        args=row.args,
        kwargs=row.kwargs,
        catch_up=row.catch_up,
        last_run_at=row.last_run_at,
        last_status=row.last_status,
        next_run_at=view.next_run_at,
    )


def _views(context: ApiContext):
    from orchestration.schedules import schedule_views

    return schedule_views(broker_of(context), context.database, timezone=context.settings.schedule_timezone)


@router.get(
    "/schedules",
    response_model=list[Schedule],
    summary="Schedules (code's and run-time) with next and last run",
)
def list_schedules(request: Request, principal: Viewer) -> list[Schedule]:
    context = context_of(request)
    return [_schedule_view(view, context.settings.schedule_timezone) for view in _views(context)]


def _one(context: ApiContext, name: str) -> Schedule:
    view = next((view for view in _views(context) if view.row.name == name), None)
    if view is None:
        raise Problem("not-found", f"no schedule named {name!r}")
    return _schedule_view(view, context.settings.schedule_timezone)


def _schedule_change(operation, *args):
    """Run a schedule change; its refusals as problems."""
    from orchestration.jobs import SubmissionError
    from storage import ScheduleConflict, UnknownSchedule

    from .jobs import submission_problem

    try:
        return operation(*args)
    except UnknownSchedule as exc:
        raise Problem("not-found", str(exc)) from None
    except ScheduleConflict as exc:
        raise Problem("conflict", str(exc)) from None
    except SubmissionError as exc:
        raise submission_problem(exc) from None
    except ValueError as exc:  # the cron spec
        raise Problem("validation-error", str(exc)) from None


@router.post(
    "/schedules",
    response_model=Schedule,
    status_code=201,
    summary="Create a run-time schedule (running schedulers fire it from their next tick)",
)
def create_schedule(
    request: Request, body: ScheduleCreate, principal: Annotated[Principal, require("schedules.control")]
) -> Schedule:
    from orchestration.schedules import RuntimeSchedule
    from orchestration.schedules import create_schedule as create

    context = context_of(request)
    schedule = RuntimeSchedule(
        name=body.name,
        actor=body.actor,
        spec=body.cron,
        args=body.args,
        kwargs=body.kwargs,
        catch_up=body.catch_up,
        enabled=body.enabled,
    )
    _schedule_change(create, broker_of(context), context.database, schedule)
    note_target(request, f"schedule={body.name}", actor=body.actor, cron=body.cron)
    return _one(context, body.name)


@router.patch("/schedules/{name}", response_model=Schedule, summary="Change a run-time schedule")
def change_schedule(
    request: Request,
    name: str,
    body: ScheduleChange,
    principal: Annotated[Principal, require("schedules.control")],
) -> Schedule:
    from orchestration.schedules import change_schedule as change

    context = context_of(request)
    _schedule_change(
        lambda: change(
            broker_of(context),
            context.database,
            name,
            spec=body.cron,
            args=body.args,
            kwargs=body.kwargs,
            catch_up=body.catch_up,
            enabled=body.enabled,
        )
    )
    return _one(context, name)


@router.delete("/schedules/{name}", status_code=204, summary="Delete a run-time schedule")
def delete_schedule(
    request: Request, name: str, principal: Annotated[Principal, require("schedules.control")]
) -> Response:
    from orchestration.schedules import delete_schedule as delete

    _schedule_change(delete, context_of(request).database, name)
    return Response(status_code=204)


def _schedule_operation(request: Request, operation, name: str, *args):
    from storage import UnknownSchedule

    context = context_of(request)
    try:
        return operation(broker_of(context), context.database, name, *args)
    except UnknownSchedule as exc:
        raise Problem("not-found", str(exc)) from None


@router.post("/schedules/{name}/enable", response_model=QueueAction, summary="Enable a schedule")
def enable_schedule(
    request: Request, name: str, principal: Annotated[Principal, require("schedules.control")]
) -> QueueAction:
    from orchestration.schedules import set_schedule_enabled

    _schedule_operation(request, set_schedule_enabled, name, True)
    return QueueAction(queue=name, paused=False)


@router.post("/schedules/{name}/disable", response_model=QueueAction, summary="Disable a schedule")
def disable_schedule(
    request: Request, name: str, principal: Annotated[Principal, require("schedules.control")]
) -> QueueAction:
    from orchestration.schedules import set_schedule_enabled

    _schedule_operation(request, set_schedule_enabled, name, False)
    return QueueAction(queue=name, paused=True)


@router.post("/schedules/{name}/run", response_model=JobAction, status_code=202, summary="Run a schedule now")
def run_schedule(
    request: Request, name: str, principal: Annotated[Principal, require("schedules.control")]
) -> JobAction:
    from orchestration.schedules import run_schedule_now

    job_id = _schedule_operation(request, run_schedule_now, name)
    note_target(request, f"schedule={name}", job=job_id)
    return JobAction(job_id=job_id, outcome="sent")


@router.get("/alerts", response_model=Page[Alert], summary="Monitoring alerts, newest first")
def list_alerts(
    request: Request,
    principal: Viewer,
    state: Annotated[str | None, Query(pattern="^(open|resolved)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[Alert]:
    from storage import page_alerts

    before = None
    if cursor:
        before = decode_cursor(cursor, arity=1)[0]
        if not isinstance(before, int):
            raise Problem("invalid-cursor", "not an alert cursor")
    rows = page_alerts(context_of(request).database, state=state, before_id=before, limit=limit + 1)
    page, next_cursor = page_of(rows, limit=limit, key=lambda row: (row.id,))
    items = [
        Alert(
            id=row.id,
            check=row.check_name,
            severity=row.severity,
            message=row.message,
            raised_at=row.raised_at,
            resolved_at=row.resolved_at,
            open=row.resolved_at is None,
        )
        for row in page
    ]
    return Page[Alert](items=items, next_cursor=next_cursor)
