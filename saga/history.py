"""A run's history: an ordered log of what happened to it, written by the engine in the
transaction of each transition (so an entry exists exactly when its transition committed).

Entries are ordered by ``workflow_events.id``; a run's transitions are serialized by its
row lock, so within a run the ids follow the transitions.  A delivery's outcome is one row
that also holds when the delivery started (``started_at``; a first delivery's claim is taken
at dispatch and writes nothing of its own): ``storage.get_history`` shows it as a ``claimed``
entry before the outcome.  One insert per step outcome, compiled once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert

from storage import WorkflowEvent, utc_now

from .driver import DriverStatement

EVENTS = WorkflowEvent.__table__

#: Kinds of history entries.
STARTED, FORKED, RESUMED, CANCEL_REQUESTED, RESOLVED = (
    "started",
    "forked",
    "resumed",
    "cancel_requested",
    "resolved",
)
DISPATCHED, CLAIMED, SUCCEEDED, FAILED, RETRYING = "dispatched", "claimed", "succeeded", "failed", "retrying"
SKIPPED, STEP_CANCELLED, UNWINDING = "skipped", "step_cancelled", "unwinding"
COMPENSATION_STARTED, COMPENSATED, COMPENSATION_FAILED = (
    "compensation_started",
    "compensated",
    "compensation_failed",
)
SIGNAL_RECEIVED, CHILD_STARTED = "signal_received", "child_started"
#: A run's final status is recorded as ``run_<status>``.
RUN_PREFIX = "run_"

#: Longest ``detail`` kept, in characters.
MAX_DETAIL = 2_000

INSERT_EVENT = insert(EVENTS).values(
    {
        name: bindparam(f"b_{name}")
        for name in ("run_id", "at", "kind", "step", "attempt", "detail", "started_at")
    }
)


def event(
    run_id: str,
    kind: str,
    *,
    step: str | None = None,
    attempt: int | None = None,
    detail: Any = None,
    at: datetime | None = None,
    started_at: datetime | None = None,
) -> dict[str, Any]:
    """One history entry, ready for :meth:`History.write`; ``started_at``: a delivery's outcome
    records when the delivery started (read back as a ``claimed`` entry)."""
    text = None if detail is None else str(detail)[:MAX_DETAIL]
    entry = {"run_id": run_id, "at": at or utc_now(), "kind": kind, "step": step, "attempt": attempt}
    entry.update(detail=text, started_at=started_at)
    return entry


class History:
    """Writes history entries inside the engine's transactions (compiled once per dialect;
    in psycopg's pipeline mode the insert is only queued).

    Parameters:
      dialect: The database's dialect.
    """

    def __init__(self, dialect) -> None:
        self._insert = DriverStatement(INSERT_EVENT, dialect, param_prefix="b_")

    def write(self, connection, events: list[dict[str, Any]]) -> None:
        if events:
            self._insert.executemany(connection, events)
