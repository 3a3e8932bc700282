"""Portfolio snapshots and risk breaches in SQL."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session, select

from .ib_models import PortfolioSnapshot, RiskBreach


def save_snapshot(engine: Engine, snapshot: PortfolioSnapshot) -> PortfolioSnapshot:
    """Store ``snapshot``; returns it with its id."""
    with Session(engine, expire_on_commit=False) as session:
        session.add(snapshot)
        session.commit()
        return snapshot


def latest_snapshot(engine: Engine, account: str) -> PortfolioSnapshot | None:
    query = (
        select(PortfolioSnapshot)
        .where(PortfolioSnapshot.account == account)
        .order_by(PortfolioSnapshot.taken_at.desc(), PortfolioSnapshot.id.desc())
        .limit(1)
    )
    with Session(engine) as session:
        return session.exec(query).first()


def list_snapshots(engine: Engine, *, account: str | None = None, limit: int = 20) -> list[PortfolioSnapshot]:
    query = select(PortfolioSnapshot).order_by(PortfolioSnapshot.id.desc()).limit(limit)
    if account:
        query = query.where(PortfolioSnapshot.account == account)
    with Session(engine) as session:
        return list(session.exec(query))


def save_breaches(engine: Engine, breaches: list[RiskBreach]) -> None:
    with Session(engine, expire_on_commit=False) as session:
        session.add_all(breaches)
        session.commit()


def list_breaches(engine: Engine, *, account: str | None = None, limit: int = 50) -> list[RiskBreach]:
    query = select(RiskBreach).order_by(RiskBreach.id.desc()).limit(limit)
    if account:
        query = query.where(RiskBreach.account == account)
    with Session(engine) as session:
        return list(session.exec(query))
