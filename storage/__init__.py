"""Durable state in SQL (SQLite or PostgreSQL): audit trail, workflows, schedules, outbox, domain tables."""

from .analysis import AnalysisRecord, get_analysis, list_analyses, save_analysis
from .audit import AuditWriter, TaskEvent, describe_database_error, utc_from_millis, utc_now
from .db import SQLiteWriteLock, create_db_engine, normalize_url, sqlite_write_lock
from .housekeeping import delete_finished_before, status_counts_since, vacuum
from .migrate import current_revisions, head_revisions, upgrade
from .models import TERMINAL_STATUSES, TaskRecord, TaskStatus
from .outbox import OutboxMessage, OutboxRecord, add_to_outbox, claim_unsent, mark_sent, unsent_count
from .schedules import (
    ScheduleDefinition,
    ScheduleRecord,
    UnknownSchedule,
    get_schedule,
    list_schedules,
    record_fired,
    record_manual_run,
    record_outcome,
    register_schedules,
    set_enabled,
)
from .task_control import cancel_waiting_task
from .tasks import get_task, list_tasks, status_counts
from .workflows import (
    DONE_STEP_STATUSES,
    FINAL_RUN_STATUSES,
    TERMINAL_STEP_STATUSES,
    RunStatus,
    StepStatus,
    WorkflowRun,
    WorkflowStep,
    get_run,
    get_steps,
    list_runs,
    run_status_counts,
)

__all__ = [
    "DONE_STEP_STATUSES",
    "FINAL_RUN_STATUSES",
    "TERMINAL_STATUSES",
    "TERMINAL_STEP_STATUSES",
    "AnalysisRecord",
    "AuditWriter",
    "OutboxMessage",
    "OutboxRecord",
    "RunStatus",
    "SQLiteWriteLock",
    "ScheduleDefinition",
    "ScheduleRecord",
    "StepStatus",
    "TaskEvent",
    "TaskRecord",
    "TaskStatus",
    "UnknownSchedule",
    "WorkflowRun",
    "WorkflowStep",
    "add_to_outbox",
    "cancel_waiting_task",
    "claim_unsent",
    "create_db_engine",
    "current_revisions",
    "delete_finished_before",
    "describe_database_error",
    "get_analysis",
    "get_run",
    "get_schedule",
    "get_steps",
    "get_task",
    "head_revisions",
    "list_analyses",
    "list_runs",
    "list_schedules",
    "list_tasks",
    "mark_sent",
    "normalize_url",
    "record_fired",
    "record_manual_run",
    "record_outcome",
    "register_schedules",
    "run_status_counts",
    "save_analysis",
    "set_enabled",
    "sqlite_write_lock",
    "status_counts",
    "status_counts_since",
    "unsent_count",
    "upgrade",
    "utc_from_millis",
    "utc_now",
    "vacuum",
]

from .monitoring import SEVERITIES, MonitoringAlert, open_alerts, sync_alerts

__all__ += ["SEVERITIES", "MonitoringAlert", "open_alerts", "sync_alerts"]
