"""The audit trail's schema and ordered upserts, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import inspect

from storage import (
    AuditWriter,
    TaskEvent,
    create_db_engine,
    current_revisions,
    get_task,
    head_revisions,
    list_tasks,
    status_counts,
)
from storage.audit import collapse


def _event(task_id: str, status: str, seq: int, **fields) -> TaskEvent:
    return TaskEvent(task_id=task_id, task_type="ping", queue="system", status=status, seq=seq, **fields)


def _write(url: str, *events: TaskEvent) -> None:
    writer = AuditWriter(create_db_engine(url))
    for event in events:
        writer.submit(event)
    assert writer.close(10), writer.last_error


def test_upgrade_creates_tasks_table_with_indexes(migrated_url):
    engine = create_db_engine(migrated_url)
    assert current_revisions(engine) == head_revisions()
    indexes = {index["name"]: index["column_names"] for index in inspect(engine).get_indexes("tasks")}
    assert indexes["ix_tasks_status_created_at"] == ["status", "created_at"]
    assert indexes["ix_tasks_task_type_status_created_at"] == ["task_type", "status", "created_at"]
    assert indexes["ix_tasks_user_id_created_at"] == ["user_id", "created_at"]


def test_late_pending_event_does_not_move_a_row_backwards(migrated_url):
    created = datetime(2026, 1, 2, 3, 4, 5)
    _write(migrated_url, _event("a", "running", 1, worker_id="w1"))
    _write(migrated_url, _event("a", "pending", 0, created_at=created, user_id="u1", args={"args": [1]}))
    row = get_task(create_db_engine(migrated_url), "a")
    assert row.status == "running"
    assert row.worker_id == "w1"
    # ...but the late event still fills what the row lacked
    assert row.created_at == created and row.user_id == "u1" and row.args == {"args": [1]}


def test_duplicate_delivery_after_completion_leaves_row_completed(migrated_url):
    _write(migrated_url, _event("b", "running", 1), _event("b", "completed", 2, processing_time_ms=3.5))
    _write(migrated_url, _event("b", "running", 1, worker_id="other"))
    row = get_task(create_db_engine(migrated_url), "b")
    assert row.status == "completed"
    assert row.processing_time_ms == 3.5


def test_retry_attempt_moves_forward(migrated_url):
    _write(migrated_url, _event("c", "retrying", 2, retry_count=1, error_message="ValueError: x"))
    _write(migrated_url, _event("c", "running", 4, retry_count=1), _event("c", "completed", 5, retry_count=1))
    row = get_task(create_db_engine(migrated_url), "c")
    assert (row.status, row.retry_count, row.error_message) == ("completed", 1, "ValueError: x")


def test_list_filters_and_counts(migrated_url):
    base = datetime(2026, 1, 1)
    _write(
        migrated_url,
        *[
            _event(
                f"t{i}",
                "completed" if i % 2 else "failed",
                2,
                user_id=f"u{i % 3}",
                created_at=base + timedelta(seconds=i),
            )
            for i in range(9)
        ],
    )
    engine = create_db_engine(migrated_url)
    newest = list_tasks(engine, limit=3)
    assert [row.task_id for row in newest] == ["t8", "t7", "t6"]
    assert {row.task_id for row in list_tasks(engine, status="failed", user_id="u0")} == {"t0", "t6"}
    assert list_tasks(engine, task_type="nope") == []
    assert status_counts(engine) == {"completed": 4, "failed": 5}
    assert status_counts(engine, task_ids=["t1", "t2"]) == {"completed": 1, "failed": 1}


def test_collapse_keeps_highest_seq_and_fills_gaps():
    events = [
        _event("x", "pending", 0, user_id="u"),
        _event("y", "running", 1),
        _event("x", "completed", 2, processing_time_ms=1.0),
        _event("x", "running", 1, worker_id="w"),
    ]
    merged = {event.task_id: event for event in collapse(events)}
    assert [event.task_id for event in collapse(events)] == ["x", "y"]
    assert merged["x"].status == "completed"
    assert (merged["x"].user_id, merged["x"].worker_id, merged["x"].processing_time_ms) == ("u", "w", 1.0)


def test_housekeeping_deletes_old_finished_tasks_with_their_attempts(migrated_url):
    from storage import AttemptEvent, delete_finished_before, delete_task, get_attempts

    old, recent = datetime(2020, 1, 1), datetime(2030, 1, 1)

    def finished(task_id: str, status: str, at: datetime) -> TaskEvent:
        attempt = AttemptEvent(task_id=task_id, number=0, seq=2, status=status, finished_at=at)
        return _event(task_id, status, 2, completed_at=at, attempt=attempt)

    _write(
        migrated_url,
        finished("old", "completed", old),
        finished("new", "completed", recent),
        finished("gone", "completed", recent),
        _event(
            "live",
            "running",
            4,
            attempt=AttemptEvent(task_id="live", number=0, seq=2, status="retrying", finished_at=old),
        ),
    )
    engine = create_db_engine(migrated_url)
    assert delete_task(engine, "gone") and get_attempts(engine, "gone") == []
    counts = delete_finished_before(engine, datetime(2025, 1, 1))
    assert counts == {"tasks": 1, "task_attempts": 1, "outbox": 0}
    assert get_task(engine, "old") is None and get_attempts(engine, "old") == []
    assert [len(get_attempts(engine, task_id)) for task_id in ("new", "live")] == [1, 1], (
        "their tasks are kept"
    )
