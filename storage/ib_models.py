"""Tables of the IB areas: the position request queue, its batches, portfolio snapshots, risk."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index
from sqlmodel import Field, SQLModel


class RequestStatus(StrEnum):
    """Lifecycle of one position-update request."""

    PENDING = "pending"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "failed"


class PositionRequest(SQLModel, table=True):
    """One queued position-update request.

    ``pending_key`` (``account:conid``) is set while the request is pending or processing and
    cleared when it ends: its unique index makes a duplicate of an open request coalesce into it.
    ``batch_id`` is the claim token: only the batch that claimed a request may finish it.
    """

    __tablename__ = "ib_position_requests"
    __table_args__ = (Index("ix_ib_position_requests_status_priority", "status", "priority", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    conid: int = Field(sa_column=Column(BigInteger, nullable=False))
    account: str = Field(default="", max_length=64)
    priority: int = 0
    requested_by: str | None = Field(default=None, max_length=200)
    status: str = Field(default=RequestStatus.PENDING, max_length=16)
    pending_key: str | None = Field(default=None, max_length=100, unique=True)
    coalesced: int = 0
    attempts: int = 0
    reason: str | None = None
    batch_id: str | None = Field(default=None, max_length=64)
    claimed_by: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
    claimed_at: datetime | None = Field(default=None, sa_column=Column(DateTime))
    completed_at: datetime | None = Field(default=None, sa_column=Column(DateTime))


class PositionBatch(SQLModel, table=True):
    """One batch run: what it claimed and how it ended (the source of the statistics)."""

    __tablename__ = "ib_position_batches"

    batch_id: str = Field(primary_key=True, max_length=64)
    worker: str = Field(max_length=200)
    started_at: datetime = Field(sa_column=Column(DateTime, nullable=False, index=True))
    finished_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
    size: int
    succeeded: int
    failed: int
    released: int
    rows_written: int
    error: str | None = None


class PortfolioSnapshot(SQLModel, table=True):
    """Positions, marks and account summary of one account at one time, with its P&L."""

    __tablename__ = "portfolio_snapshots"
    __table_args__ = (Index("ix_portfolio_snapshots_account_taken_at", "account", "taken_at"),)

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(max_length=64)
    taken_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
    net_liquidation: float | None = None
    total_cash: float | None = None
    gross_exposure: float
    unrealized_pnl: float
    realized_pnl: float
    #: Today's P&L as IB reports it (``reqPnL``): trading only, deposits and withdrawals left out.
    daily_pnl: float | None = None
    #: NetLiquidation - PreviousDayEquityWithLoanValue: counts deposits and withdrawals too.
    equity_change: float | None = None
    positions: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    summary: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class RiskBreach(SQLModel, table=True):
    """A risk limit a snapshot broke."""

    __tablename__ = "portfolio_risk_breaches"
    __table_args__ = (Index("ix_portfolio_risk_breaches_account_detected_at", "account", "detected_at"),)

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(max_length=64)
    snapshot_id: int = Field(foreign_key="portfolio_snapshots.id")
    limit_name: str = Field(max_length=64)
    limit_value: float
    actual_value: float
    conid: int | None = Field(default=None, sa_column=Column(BigInteger))
    detail: str
    detected_at: datetime = Field(sa_column=Column(DateTime, nullable=False))


class ActiveContract(SQLModel, table=True):
    """A contract an active strategy trades: its updates are routed to streaming."""

    __tablename__ = "ib_active_contracts"

    conid: int = Field(sa_column=Column(BigInteger, primary_key=True))
    strategy: str = Field(primary_key=True, max_length=200)
    registered_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
