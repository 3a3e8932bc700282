"""``POST /api/v1/dead-letters:purge``: purge the dead letters of a selection (ids, queue,
fingerprint) as a tracked operation, so a dashboard can purge one fingerprint group."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response

from ..access import Principal, require
from ..bulk import Plan, planner
from ..models import BulkAccepted, DeadLetterSelection
from ..problems import API_PROBLEMS
from .dead_letters import bulk_letters, letters_plan

router = APIRouter(prefix="/api/v1", tags=["dead letters"], responses=API_PROBLEMS)


@router.post(
    "/dead-letters:purge",
    response_model=BulkAccepted,
    status_code=202,
    summary="Purge many dead letters (ids or filters) as a tracked operation (admin); dry_run counts",
    responses={200: {"model": BulkAccepted, "description": "Dry run: the count"}},
)
def purge_many(
    request: Request,
    response: Response,
    body: DeadLetterSelection,
    principal: Annotated[Principal, require("dlq.purge")],
) -> BulkAccepted:
    return bulk_letters(request, response, body, principal, kind="dead-letters.purge")


@planner("dead-letters.purge")
def _plan_purge(context, params: dict[str, Any]) -> Plan:
    from actors.middleware import purge_letters

    return letters_plan(context, params, apply=purge_letters)
