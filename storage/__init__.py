"""Durable state in SQL: the audit trail of every task (SQLite or PostgreSQL)."""

from .audit import AuditWriter, TaskEvent, describe_database_error, utc_from_millis, utc_now
from .db import create_db_engine, normalize_url
from .migrate import current_revisions, head_revisions, upgrade
from .models import TERMINAL_STATUSES, TaskRecord, TaskStatus
from .tasks import get_task, list_tasks, status_counts

__all__ = [
    "TERMINAL_STATUSES",
    "AuditWriter",
    "TaskEvent",
    "TaskRecord",
    "TaskStatus",
    "create_db_engine",
    "current_revisions",
    "describe_database_error",
    "get_task",
    "head_revisions",
    "list_tasks",
    "normalize_url",
    "status_counts",
    "upgrade",
    "utc_from_millis",
    "utc_now",
]

from .monitoring import SEVERITIES, MonitoringAlert, open_alerts, sync_alerts

__all__ += ["SEVERITIES", "MonitoringAlert", "open_alerts", "sync_alerts"]
