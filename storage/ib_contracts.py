"""The registry of contracts that active strategies trade (their updates are streamed)."""

from __future__ import annotations

from sqlalchemy import Engine, delete, select

from .audit import utc_now
from .ib_models import ActiveContract
from .ib_positions import dialect_insert


def register_active_contract(engine: Engine, *, conid: int, strategy: str) -> None:
    """Mark ``conid`` as traded by ``strategy`` (idempotent)."""
    if not isinstance(conid, int) or conid <= 0:
        raise ValueError(f"conid must be a positive integer (got {conid!r})")
    if not strategy:
        raise ValueError("strategy must not be empty")
    table = ActiveContract.__table__
    statement = (
        dialect_insert(engine)(table)
        .values(conid=conid, strategy=strategy, registered_at=utc_now())
        .on_conflict_do_nothing(index_elements=["conid", "strategy"])
    )
    with engine.begin() as connection:
        connection.execute(statement)


def unregister_active_contract(engine: Engine, *, conid: int, strategy: str) -> bool:
    """``strategy`` no longer trades ``conid``; True if it was registered."""
    table = ActiveContract.__table__
    with engine.begin() as connection:
        result = connection.execute(delete(table).where(table.c.conid == conid, table.c.strategy == strategy))
    return result.rowcount > 0


def active_conids(engine: Engine) -> set[int]:
    """Contracts at least one active strategy trades."""
    table = ActiveContract.__table__
    with engine.connect() as connection:
        return set(connection.execute(select(table.c.conid).distinct()).scalars())
