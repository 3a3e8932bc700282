"""``GET /api/v1/stats/throughput``: jobs finished per minute over the last hour(s), by outcome.

The dashboard's throughput and failure-rate charts read it; it is an aggregate in
the database (one row per minute and outcome), never the rows themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import func
from sqlmodel import Session, col, select

from ..access import Viewer
from ..context import context_of
from ..models import Time
from ..problems import API_PROBLEMS

router = APIRouter(prefix="/api/v1", tags=["stats"], responses=API_PROBLEMS)

#: Audit statuses counted as a failure (the job ended without success).
FAILED_STATUSES = ("failed", "dead_letter")

#: Audit statuses counted as done at all (a success or a failure).
FINISHED_STATUSES = ("completed", *FAILED_STATUSES)


class MinuteBucket(BaseModel):
    start: Time = Field(description="Start of the minute (UTC).")
    completed: int
    failed: int = Field(description="Failed or dead-lettered in that minute.")


class Throughput(BaseModel):
    minutes: int
    buckets: list[MinuteBucket] = Field(description="One per minute, oldest first, empty minutes included.")


def _minute(engine):
    """A SQL expression of ``completed_at`` truncated to the minute, as text, on either dialect."""
    from storage import TaskRecord

    if engine.dialect.name == "postgresql":
        return func.to_char(func.date_trunc("minute", TaskRecord.completed_at), "YYYY-MM-DD HH24:MI")
    return func.strftime("%Y-%m-%d %H:%M", TaskRecord.completed_at)


@router.get("/stats/throughput", response_model=Throughput, summary="Jobs finished per minute, by outcome")
def throughput(
    request: Request, principal: Viewer, minutes: Annotated[int, Query(ge=1, le=1440)] = 60
) -> Throughput:
    from storage import TaskRecord

    engine = context_of(request).database
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    since = now - timedelta(minutes=minutes - 1)
    minute = _minute(engine)
    query = (
        select(minute, TaskRecord.status, func.count())
        .where(col(TaskRecord.completed_at) >= since.replace(tzinfo=None))
        .where(col(TaskRecord.status).in_(FINISHED_STATUSES))
        .group_by(minute, TaskRecord.status)
    )
    counts: dict[str, list[int]] = {}
    with Session(engine) as session:
        for label, status, count in session.exec(query):
            slot = counts.setdefault(label, [0, 0])
            slot[1 if status in FAILED_STATUSES else 0] += count
    buckets = []
    for index in range(minutes):
        start = since + timedelta(minutes=index)
        completed, failed = counts.get(start.strftime("%Y-%m-%d %H:%M"), (0, 0))
        buckets.append(MinuteBucket(start=start, completed=completed, failed=failed))
    return Throughput(minutes=minutes, buckets=buckets)
