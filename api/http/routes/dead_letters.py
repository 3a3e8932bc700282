"""Dead letters: list (keyset pages), grouped by exception fingerprint, retry, purge."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from ..access import Principal, Viewer, note_target, require
from ..bulk import Plan, bulk_action, operations_of, planner
from ..context import broker_of, context_of
from ..models import (
    BulkAccepted,
    Count,
    DeadLetter,
    DeadLetterGroup,
    DeadLetterSelection,
    JobAction,
    Operation,
)
from ..pagination import Page, decode_cursor, page_of
from ..problems import API_PROBLEMS, Problem

router = APIRouter(prefix="/api/v1", tags=["dead letters"], responses=API_PROBLEMS)

#: ``older_than`` of a purge: a whole number and a unit.
DURATION_PATTERN = r"^\d+[smhd]$"

#: Letters a bulk retry moves in one go (one atomic dispatch-script call) before it pauses.
RETRY_SLICE = 100

#: The pause after each slice, as a share of the time the slice took (at least
#: :data:`MIN_RETRY_PAUSE_S`), where the operation runs in a process that also answers requests:
#: its thread holds the GIL while it works, and short bursts with pauses between let the
#: other requests through.  An operations runner (``api/http/runner.py``) does not pause.
RETRY_PAUSE_SHARE = 0.25

#: Shortest pause after a slice, in seconds.
MIN_RETRY_PAUSE_S = 0.001


def dead_letter_view(letter) -> DeadLetter:
    from actors.middleware import fingerprint

    return DeadLetter(
        job_id=letter.message_id,
        actor=letter.message.actor_name,
        queue=letter.queue,
        args=list(letter.message.args),
        kwargs=dict(letter.message.kwargs),
        error=letter.reason,
        fingerprint=fingerprint(letter).digest,
        failed_at=letter.failed_at,
        attempts=letter.attempts,
        traceback=letter.traceback,
    )


def _broker(request: Request):
    return broker_of(context_of(request))


@router.get("/dead-letters", response_model=Page[DeadLetter], summary="Dead letters, oldest death first")
def list_dead_letters(
    request: Request,
    principal: Viewer,
    queue: str | None = None,
    fingerprint: Annotated[
        str | None, Query(description="Only this group (see /dead-letters/groups).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[DeadLetter]:
    from actors.middleware import page_dead_letters

    after = None
    if cursor:
        score, redis_id = decode_cursor(cursor, arity=2)
        if not isinstance(score, int | float) or not isinstance(redis_id, str):
            raise Problem("invalid-cursor", "not a dead-letter cursor")
        after = (float(score), redis_id)
    broker = _broker(request)
    views: list[tuple[DeadLetter, tuple]] = []
    # a fingerprint filter may skip letters: read pages until this one is full or the queues end
    while len(views) <= limit:
        letters = page_dead_letters(broker, queue=queue, after=after, limit=limit + 1)
        for letter in letters:
            view = dead_letter_view(letter)
            if fingerprint is None or view.fingerprint == fingerprint:
                views.append((view, (letter.failed_at_ms, letter.redis_id)))
        if len(letters) <= limit:
            break
        after = (letters[-1].failed_at_ms, letters[-1].redis_id)
    page, next_cursor = page_of(views, limit=limit, key=lambda pair: pair[1])
    return Page[DeadLetter](items=[view for view, _ in page], next_cursor=next_cursor)


@router.get(
    "/dead-letters/groups",
    response_model=list[DeadLetterGroup],
    summary="Dead letters grouped by exception fingerprint (type + innermost frame), biggest first",
)
def dead_letter_groups(
    request: Request, principal: Viewer, queue: str | None = None
) -> list[DeadLetterGroup]:
    from actors.middleware import fingerprint, iter_dead_letters

    groups: dict[str, DeadLetterGroup] = {}
    for letter in iter_dead_letters(_broker(request), queue=queue):
        mark = fingerprint(letter)
        group = groups.get(mark.digest)
        if group is None:
            groups[mark.digest] = DeadLetterGroup(
                fingerprint=mark.digest,
                exception=mark.exception,
                top_frame=mark.top_frame,
                count=1,
                queues=[letter.queue],
                example_job_id=letter.message_id,
                last_failed_at=letter.failed_at,
            )
            continue
        group.count += 1
        # the group's time is aware (the model's), the letter's naive UTC
        group.last_failed_at = max(group.last_failed_at, letter.failed_at.replace(tzinfo=UTC))
        if letter.queue not in group.queues:
            group.queues.append(letter.queue)
    return sorted(groups.values(), key=lambda group: (-group.count, group.fingerprint))


@router.post(
    "/dead-letters/{job_id}/retry",
    response_model=JobAction,
    status_code=202,
    summary="Enqueue a dead letter again with a fresh retry budget",
)
def retry_dead_letter(
    request: Request, job_id: str, principal: Annotated[Principal, require("dlq.retry")]
) -> JobAction:
    from actors.middleware import UnknownDeadLetter, find_dead_letter
    from actors.middleware import retry_dead_letter as retry

    broker = _broker(request)
    try:
        letter = find_dead_letter(broker, job_id)
    except UnknownDeadLetter as exc:
        raise Problem("not-found", str(exc)) from None
    if retry(broker, letter) is None:
        raise Problem("conflict", f"dead letter {job_id} was retried or purged meanwhile")
    note_target(request, f"job={job_id}", actor=letter.message.actor_name)
    return JobAction(job_id=job_id, outcome="retried")


@router.delete("/dead-letters", response_model=Count, summary="Purge dead letters (admin)")
def purge_dead_letters(
    request: Request,
    principal: Annotated[Principal, require("dlq.purge")],
    older_than: Annotated[str | None, Query(pattern=DURATION_PATTERN, description="e.g. 7d, 12h")] = None,
) -> Count:
    from actors.middleware import purge_dead_letters as purge

    units = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    older_than_ms = int(older_than[:-1]) * units[older_than[-1]] if older_than else None
    count = purge(_broker(request), older_than_ms=older_than_ms)
    note_target(request, f"dead-letters older_than={older_than or 'any'}", purged=count)
    return Count(count=count)


def _count(broker, selection: DeadLetterSelection) -> int:
    """How many letters ``selection`` covers: the queues' sizes when it filters by queue at most."""
    from actors.middleware import dead_letter_counts

    if selection.ids is None and selection.fingerprint is None:
        return sum(dead_letter_counts(broker, queue=selection.queue).values())
    return sum(1 for _ in _selected(broker, selection))


def _selected(broker, selection: DeadLetterSelection):
    from actors.middleware import fingerprint, iter_dead_letters

    ids = set(selection.ids) if selection.ids is not None else None
    for letter in iter_dead_letters(broker, queue=selection.queue):
        if ids is not None and letter.message_id not in ids:
            continue
        if selection.fingerprint and fingerprint(letter).digest != selection.fingerprint:
            continue
        yield letter


@router.post(
    "/dead-letters:retry",
    response_model=BulkAccepted,
    status_code=202,
    summary="Retry many dead letters (ids or filters) as a tracked, throttled operation; dry_run counts",
    responses={200: {"model": BulkAccepted, "description": "Dry run: the count"}},
)
def retry_many(
    request: Request,
    response: Response,
    body: DeadLetterSelection,
    principal: Annotated[Principal, require("dlq.retry")],
) -> BulkAccepted:
    return bulk_letters(request, response, body, principal, kind="dead-letters.retry")


@planner("dead-letters.retry")
def _plan_retry(context, params: dict[str, Any]) -> Plan:
    return letters_plan(context, params, apply=retry_gently if context.serves_requests else retry_at_once)


def letters_plan(context, params: dict[str, Any], *, apply: Callable[[Any, list], int]) -> Plan:
    """``apply(broker, letters)`` over the dead letters the selection ``params`` covers.  A
    letter acted on leaves the dead letters: planned again, the selection is what is left."""
    broker = broker_of(context)
    selection = DeadLetterSelection.model_validate(params)
    return Plan(
        items=lambda: _selected(broker, selection),
        apply=lambda letters: apply(broker, letters),
        count=lambda: _count(broker, selection),
    )


def retry_gently(broker, letters: list) -> int:
    """Retry ``letters`` :data:`RETRY_SLICE` at a time, pausing after each slice; how many were
    retried (not those someone else retried or purged first).  A crash leaves each letter either
    dead or enqueued once (``actors.middleware.retry_dead_letters``): rerun what is left."""
    from actors.middleware import retry_dead_letters

    done = 0
    for start in range(0, len(letters), RETRY_SLICE):
        began = time.monotonic()
        done += len(retry_dead_letters(broker, letters[start : start + RETRY_SLICE]))
        time.sleep(max(MIN_RETRY_PAUSE_S, RETRY_PAUSE_SHARE * (time.monotonic() - began)))
    return done


def retry_at_once(broker, letters: list) -> int:
    """Retry ``letters`` in one go (one atomic dispatch-script call per queue); how many were
    retried.  What an operations runner does, with no requests to let through."""
    from actors.middleware import retry_dead_letters

    return len(retry_dead_letters(broker, letters))


def bulk_letters(
    request: Request, response: Response, body: DeadLetterSelection, principal: Principal, *, kind: str
) -> BulkAccepted:
    """Run ``kind``'s plan over the selected dead letters as a tracked operation (``dry_run``:
    only their count)."""
    _broker(request)  # 503 before anything, without a broker
    return bulk_action(
        request,
        response,
        dry_run=body.dry_run,
        kind=kind,
        params=body.model_dump(mode="json", by_alias=True, exclude={"dry_run"}),
        principal=principal,
    )


@router.get(
    "/operations/{operation_id}", response_model=Operation, tags=["operations"], summary="A bulk operation"
)
def get_operation(request: Request, operation_id: str, principal: Viewer) -> Operation:
    record = operations_of(context_of(request)).get(operation_id)
    if record is None:
        raise Problem("not-found", f"no operation {operation_id!r} (kept 7 days)")
    total = int(record["total"])
    heartbeat = record.get("heartbeat")
    return Operation(
        id=record["id"],
        kind=record["kind"],
        status=record["status"],
        total=None if total < 0 else total,
        done=int(record["done"]),
        skipped=int(record["skipped"]),
        requested_by=record["requested_by"],
        started_at=datetime.fromtimestamp(float(record["started_at"]), UTC),
        finished_at=datetime.fromtimestamp(float(record["finished_at"]), UTC)
        if "finished_at" in record
        else None,
        error=record.get("error"),
        owner=record.get("owner"),
        heartbeat_at=datetime.fromtimestamp(float(heartbeat), UTC) if heartbeat else None,
        resumed=int(record.get("resumed") or 0),
    )
