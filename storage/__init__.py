"""Durable state in SQL: the audit trail of every task (SQLite or PostgreSQL)."""

from .analysis import AnalysisRecord, get_analysis, list_analyses, save_analysis
from .audit import AuditWriter, TaskEvent, describe_database_error, utc_from_millis, utc_now
from .db import create_db_engine, normalize_url
from .migrate import current_revisions, head_revisions, upgrade
from .models import TERMINAL_STATUSES, TaskRecord, TaskStatus
from .tasks import get_task, list_tasks, status_counts

__all__ = [
    "TERMINAL_STATUSES",
    "AnalysisRecord",
    "AuditWriter",
    "TaskEvent",
    "TaskRecord",
    "TaskStatus",
    "create_db_engine",
    "current_revisions",
    "describe_database_error",
    "get_analysis",
    "get_task",
    "head_revisions",
    "list_analyses",
    "list_tasks",
    "normalize_url",
    "save_analysis",
    "status_counts",
    "upgrade",
    "utc_from_millis",
    "utc_now",
]

from .housekeeping import delete_finished_before, status_counts_since, vacuum
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

__all__ += [  # job control
    "OutboxMessage",
    "OutboxRecord",
    "ScheduleDefinition",
    "ScheduleRecord",
    "UnknownSchedule",
    "add_to_outbox",
    "cancel_waiting_task",
    "claim_unsent",
    "delete_finished_before",
    "get_schedule",
    "list_schedules",
    "mark_sent",
    "record_fired",
    "record_manual_run",
    "record_outcome",
    "register_schedules",
    "set_enabled",
    "status_counts_since",
    "unsent_count",
    "vacuum",
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

__all__ += [
    "DONE_STEP_STATUSES",
    "FINAL_RUN_STATUSES",
    "TERMINAL_STEP_STATUSES",
    "RunStatus",
    "StepStatus",
    "WorkflowRun",
    "WorkflowStep",
    "get_run",
    "get_steps",
    "list_runs",
    "run_status_counts",
]
