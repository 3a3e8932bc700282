"""Outputs of the ``ai_analysis`` queue: one row per analysis, queryable by kind and time."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Engine, Index, Text
from sqlmodel import Field, Session, SQLModel, col, select

from .audit import utc_now


class AnalysisRecord(SQLModel, table=True):
    """An analysis: what was asked, which analyzer answered, what it read and what it said.

    ``analyzer`` is the one that produced ``report``; when the configured
    one failed, ``fallback_reason`` says why and ``analyzer`` names the
    fallback.  ``inputs`` holds the versions of the data read (e.g. the
    Delta version of ``market_bars``), so an analysis can be reproduced.
    """

    __tablename__ = "analysis_reports"
    __table_args__ = (Index("ix_analysis_reports_kind_created_at", "kind", "created_at"),)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, primary_key=True, max_length=64)
    kind: str = Field(max_length=40)
    analyzer: str = Field(max_length=200)
    fallback_reason: str | None = Field(default=None, sa_column=Column(Text))
    message_id: str | None = Field(default=None, max_length=64)
    inputs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    report: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utc_now, sa_column=Column(DateTime, nullable=False))


def save_analysis(engine: Engine, record: AnalysisRecord) -> AnalysisRecord:
    """Insert ``record``; a redelivered message with the same id replaces its earlier row.

    Non-finite numbers (NaN, infinity) in ``inputs`` and ``report`` are stored
    as null: PostgreSQL's JSON has no NaN.
    """
    record.inputs, record.report = json_safe(record.inputs), json_safe(record.report)
    with Session(engine) as session:
        merged = session.merge(record)
        session.commit()
        session.refresh(merged)
        session.expunge(merged)
        return merged


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def list_analyses(engine: Engine, *, kind: str | None = None, limit: int = 50) -> list[AnalysisRecord]:
    """The newest analyses first, optionally of one kind."""
    query = select(AnalysisRecord)
    if kind:
        query = query.where(AnalysisRecord.kind == kind)
    query = query.order_by(col(AnalysisRecord.created_at).desc()).limit(limit)
    with Session(engine) as session:
        return list(session.exec(query))


def get_analysis(engine: Engine, analysis_id: str) -> AnalysisRecord | None:
    with Session(engine) as session:
        return session.get(AnalysisRecord, analysis_id)
