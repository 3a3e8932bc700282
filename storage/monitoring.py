"""Monitoring alerts in SQL: one open row per failing health check until it passes again."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from sqlalchemy import Column, DateTime, Engine, Index, Text, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from .audit import utc_now

#: Severities an alert can have, mildest first.
SEVERITIES = ("warning", "critical")

_OPEN = text("resolved_at IS NULL")


class MonitoringAlert(SQLModel, table=True):
    """An alert raised when a health check failed; ``resolved_at`` is set once it passes.

    A partial unique index keeps one open alert per check, even with
    several monitors racing.  Times are naive UTC.
    """

    __tablename__ = "monitoring_alerts"
    __table_args__ = (
        Index(
            "ux_monitoring_alerts_open_check",
            "check_name",
            unique=True,
            sqlite_where=_OPEN,
            postgresql_where=_OPEN,
        ),
        Index("ix_monitoring_alerts_raised_at", "raised_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    check_name: str = Field(max_length=100)
    severity: str = Field(max_length=20)
    message: str = Field(sa_column=Column(Text, nullable=False))
    raised_at: datetime = Field(sa_column=Column(DateTime, nullable=False))
    resolved_at: datetime | None = Field(default=None, sa_column=Column(DateTime))


def sync_alerts(
    engine: Engine, *, failing: Mapping[str, tuple[str, str]], passing: Iterable[str]
) -> list[MonitoringAlert]:
    """Raise an alert for each failing check without an open one, resolve those of passing checks.

    ``failing`` maps a check's name to ``(severity, message)``; an open alert
    of a still-failing check gets the latest message.  Returns the alerts
    raised now.
    """
    for check, (severity, _) in failing.items():
        if severity not in SEVERITIES:
            raise ValueError(
                f"severity of {check!r} must be one of {', '.join(SEVERITIES)} (got {severity!r})"
            )
    now = utc_now()
    raised = []
    with Session(engine) as session:
        open_alerts = {alert.check_name: alert for alert in session.exec(_open_query())}
        for check in passing:
            if check in open_alerts:
                open_alerts[check].resolved_at = now
        for check, (severity, message) in failing.items():
            alert = open_alerts.get(check)
            if alert is None:
                alert = MonitoringAlert(check_name=check, severity=severity, message=message, raised_at=now)
                raised.append(alert)
            alert.severity, alert.message = severity, message
            session.add(alert)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()  # another monitor raised the same alerts a moment ago
            return []
        for alert in raised:
            session.refresh(alert)
    return raised


def open_alerts(engine: Engine) -> list[MonitoringAlert]:
    """Unresolved alerts, oldest first."""
    with Session(engine) as session:
        return list(session.exec(_open_query()))


def _open_query():
    return (
        select(MonitoringAlert)
        .where(col(MonitoringAlert.resolved_at).is_(None))
        .order_by(col(MonitoringAlert.raised_at), col(MonitoringAlert.id))
    )


def page_alerts(
    engine: Engine, *, state: str | None = None, before_id: int | None = None, limit: int = 50
) -> list[MonitoringAlert]:
    """One keyset page of alerts, newest first (ids below ``before_id``); ``state`` open or resolved."""
    query = select(MonitoringAlert)
    if state == "open":
        query = query.where(col(MonitoringAlert.resolved_at).is_(None))
    elif state == "resolved":
        query = query.where(col(MonitoringAlert.resolved_at).is_not(None))
    if before_id is not None:
        query = query.where(col(MonitoringAlert.id) < before_id)
    with Session(engine) as session:
        return list(session.exec(query.order_by(col(MonitoringAlert.id).desc()).limit(limit)))
