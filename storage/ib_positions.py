"""The durable queue of position-update requests: enqueue (coalescing), claim, finish, statistics."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, bindparam, case, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .audit import utc_now
from .ib_models import PositionBatch, PositionRequest, RequestStatus

#: Longest account code accepted.
MAX_ACCOUNT_LENGTH = 64

#: Pending keys looked up per query after an enqueue.
KEY_CHUNK = 500

#: Priorities accepted (higher first).
PRIORITY_RANGE = range(-1000, 1001)


@dataclass(frozen=True)
class NewRequest:
    """A request to enqueue; ``account`` empty means every account holding the contract."""

    conid: int
    account: str = ""
    priority: int = 0
    requested_by: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.conid, bool) or not isinstance(self.conid, int) or self.conid <= 0:
            raise ValueError(f"conid must be a positive integer (got {self.conid!r})")
        if not isinstance(self.account, str) or len(self.account) > MAX_ACCOUNT_LENGTH:
            raise ValueError(f"account must be a string of at most {MAX_ACCOUNT_LENGTH} characters")
        if not isinstance(self.priority, int) or self.priority not in PRIORITY_RANGE:
            raise ValueError(
                f"priority must be an integer in {PRIORITY_RANGE.start}..{PRIORITY_RANGE.stop - 1} "
                f"(got {self.priority!r})"
            )

    @property
    def pending_key(self) -> str:
        return f"{self.account}:{self.conid}"


@dataclass(frozen=True)
class Enqueued:
    """Where a request went: its row id, and whether it merged into an open request."""

    request_id: int
    coalesced: bool


@dataclass(frozen=True)
class ClaimedRequest:
    request_id: int
    conid: int
    account: str
    attempts: int


@dataclass(frozen=True)
class QueueStats:
    """The statistics of the seed design, from the durable tables."""

    pending: int
    processing: int
    succeeded: int
    failed: int
    coalesced: int
    batches: int
    last_batch_at: datetime | None
    last_batch_size: int | None
    last_batch_error: str | None

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed


def dialect_insert(engine: Engine):
    """The dialect's INSERT, which has ``on_conflict_do_*``."""
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


def enqueue_requests(engine: Engine, requests: Iterable[NewRequest]) -> list[Enqueued]:
    """Queue requests; a duplicate of a pending (or processing) one merges into it.

    A merge keeps the higher priority and counts itself in ``coalesced``.  All requests go in
    one transaction with one multi-row statement (duplicates within the call merged first).
    """
    requests = list(requests)
    groups: dict[str, list[NewRequest]] = {}
    for request in requests:
        groups.setdefault(request.pending_key, []).append(request)
    if not groups:
        return []
    table = PositionRequest.__table__
    now = utc_now()
    rows = [
        {
            "conid": same[0].conid,
            "account": same[0].account,
            "priority": max(r.priority for r in same),
            "requested_by": same[0].requested_by,
            "status": RequestStatus.PENDING,
            "pending_key": key,
            "coalesced": len(same) - 1,
            "attempts": 0,
            "created_at": now,
        }
        for key, same in groups.items()
    ]
    statement = dialect_insert(engine)(table)
    statement = statement.on_conflict_do_update(
        index_elements=["pending_key"],
        set_={
            "coalesced": table.c.coalesced + statement.excluded.coalesced + 1,
            "priority": case(
                (statement.excluded.priority > table.c.priority, statement.excluded.priority),
                else_=table.c.priority,
            ),
        },
    )
    found: dict[str, tuple[int, int]] = {}
    keys = list(groups)
    with engine.begin() as connection:
        connection.execute(statement, rows)
        for start in range(0, len(keys), KEY_CHUNK):
            chunk = keys[start : start + KEY_CHUNK]
            query = select(table.c.pending_key, table.c.id, table.c.coalesced).where(
                table.c.pending_key.in_(chunk)
            )
            found.update({key: (rid, merged) for key, rid, merged in connection.execute(query)})
    return _enqueued(requests, groups, found)


def _enqueued(
    requests: list[NewRequest], groups: dict[str, list[NewRequest]], found: dict[str, tuple[int, int]]
) -> list[Enqueued]:
    # a key's row existed before this call if it merged more duplicates than this call brought
    seen: set[str] = set()
    results = []
    for request in requests:
        key = request.pending_key
        request_id, merged = found[key]
        existed = merged >= len(groups[key])
        results.append(Enqueued(request_id=request_id, coalesced=key in seen or existed))
        seen.add(key)
    return results


def _claimable(lease_expired_before: datetime):
    c = PositionRequest.__table__.c
    return or_(
        c.status == RequestStatus.PENDING,
        (c.status == RequestStatus.PROCESSING) & (c.claimed_at < lease_expired_before),
    )


def claim_requests(
    engine: Engine, *, batch_id: str, worker: str, limit: int, lease: timedelta
) -> list[ClaimedRequest]:
    """Atomically take up to ``limit`` requests (highest priority, then oldest) for one batch.

    Requests claimed by a batch whose lease ran out (its worker died) are claimable again.
    Two concurrent claims never return the same request: PostgreSQL locks the chosen rows
    (skipping rows another claim holds); on SQLite the update re-checks the status as the
    only writer.
    """
    table = PositionRequest.__table__
    now = utc_now()
    claimable = _claimable(now - lease)
    chosen = (
        select(table.c.id)
        .where(claimable)
        .order_by(table.c.priority.desc(), table.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    with engine.begin() as connection:
        # two statements: PostgreSQL may re-run a LIMIT subquery inside UPDATE ... IN (...)
        ids = connection.execute(chosen).scalars().all()
        if not ids:
            return []
        statement = (
            update(table)
            .where(table.c.id.in_(ids), claimable)
            .values(
                status=RequestStatus.PROCESSING,
                batch_id=batch_id,
                claimed_by=worker,
                claimed_at=now,
                attempts=table.c.attempts + 1,
            )
            .returning(table.c.id, table.c.conid, table.c.account, table.c.attempts)
        )
        rows = connection.execute(statement).all()
    return sorted(
        (
            ClaimedRequest(request_id=r.id, conid=r.conid, account=r.account, attempts=r.attempts)
            for r in rows
        ),
        key=lambda r: r.request_id,
    )


def finish_requests(engine: Engine, *, batch_id: str, outcomes: dict[int, str | None]) -> None:
    """Mark claimed requests SUCCESS (reason ``None``) or FAILED (with the reason).

    Only requests still claimed by ``batch_id`` change, so a batch whose lease was taken over
    cannot overwrite the newer outcome.
    """
    if not outcomes:
        return
    table = PositionRequest.__table__
    statement = (
        update(table)
        .where(
            table.c.id == bindparam("request_id"),
            table.c.batch_id == batch_id,
            table.c.status == RequestStatus.PROCESSING,
        )
        .values(
            status=bindparam("new_status"),
            reason=bindparam("new_reason"),
            pending_key=None,
            completed_at=utc_now(),
        )
    )
    parameters = [
        {
            "request_id": request_id,
            "new_status": RequestStatus.SUCCESS if reason is None else RequestStatus.FAILED,
            "new_reason": reason,
        }
        for request_id, reason in outcomes.items()
    ]
    with engine.begin() as connection:
        connection.execute(statement, parameters)


def release_requests(engine: Engine, *, batch_id: str, reason: str, max_attempts: int) -> tuple[int, int]:
    """Give a failed batch's requests back to the queue; those out of attempts fail for good.

    Returns ``(released, failed)``.
    """
    table = PositionRequest.__table__
    exhausted = table.c.attempts >= max_attempts
    mine = (table.c.batch_id == batch_id) & (table.c.status == RequestStatus.PROCESSING)
    with engine.begin() as connection:
        failed = connection.execute(
            update(table)
            .where(mine, exhausted)
            .values(
                status=RequestStatus.FAILED,
                reason=f"gave up after {max_attempts} attempts: {reason}",
                pending_key=None,
                completed_at=utc_now(),
            )
        ).rowcount
        released = connection.execute(
            update(table).where(mine).values(status=RequestStatus.PENDING, reason=f"retrying: {reason}")
        ).rowcount
    return released, failed


def record_batch(engine: Engine, batch: PositionBatch) -> None:
    with engine.begin() as connection:
        connection.execute(insert(PositionBatch.__table__).values(**batch.model_dump()))


def claimable_count(engine: Engine, *, lease: timedelta) -> int:
    """Requests a batch could take now (pending, or claimed by a batch whose lease ran out)."""
    table = PositionRequest.__table__
    with engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(table).where(_claimable(utc_now() - lease))
        ).scalar_one()


def oldest_claim(engine: Engine) -> datetime | None:
    """When the oldest claim still in progress was taken (``None``: nothing is processing)."""
    table = PositionRequest.__table__
    with engine.connect() as connection:
        return connection.execute(
            select(func.min(table.c.claimed_at)).where(table.c.status == RequestStatus.PROCESSING)
        ).scalar_one()


def queue_stats(engine: Engine) -> QueueStats:
    requests, batches = PositionRequest.__table__, PositionBatch.__table__
    with engine.connect() as connection:
        by_status = dict(
            connection.execute(select(requests.c.status, func.count()).group_by(requests.c.status)).all()
        )
        coalesced = connection.execute(select(func.coalesce(func.sum(requests.c.coalesced), 0))).scalar_one()
        batch_count = connection.execute(select(func.count()).select_from(batches)).scalar_one()
        last = connection.execute(
            select(batches.c.finished_at, batches.c.size, batches.c.error)
            .order_by(batches.c.finished_at.desc())
            .limit(1)
        ).first()
    return QueueStats(
        pending=by_status.get(RequestStatus.PENDING, 0),
        processing=by_status.get(RequestStatus.PROCESSING, 0),
        succeeded=by_status.get(RequestStatus.SUCCESS, 0),
        failed=by_status.get(RequestStatus.FAILED, 0),
        coalesced=coalesced,
        batches=batch_count,
        last_batch_at=last.finished_at if last else None,
        last_batch_size=last.size if last else None,
        last_batch_error=last.error if last else None,
    )


def list_requests(
    engine: Engine, *, status: str | None = None, conid: int | None = None, limit: int = 50
) -> list[PositionRequest]:
    """The newest requests, filtered."""
    from sqlmodel import Session

    query = select(PositionRequest).order_by(PositionRequest.id.desc()).limit(limit)
    if status:
        query = query.where(PositionRequest.status == status)
    if conid:
        query = query.where(PositionRequest.conid == conid)
    with Session(engine) as session:
        return list(session.scalars(query))
