"""The job list's filters have indexes in the list's order, and the query shapes use them (on a
large table a filter that matches few rows would read every row otherwise; ``bench/api.py``)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlmodel import col, select

from bench.api import fill_tasks
from storage import TaskFilter, create_db_engine
from storage.models import TaskRecord


def plan(engine, task_filter: TaskFilter) -> str:
    """PostgreSQL's plan of :func:`storage.page_tasks`' query, sequential scans ruled out (the
    test's table is small: the planner might rather scan it)."""
    query = task_filter.apply(select(TaskRecord))
    query = query.order_by(col(TaskRecord.created_at).desc(), col(TaskRecord.task_id).desc()).limit(51)
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as connection:
        connection.execute(text("SET enable_seqscan = off"))
        return "\n".join(row[0] for row in connection.execute(text(f"EXPLAIN {sql}")))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_actor_status_and_symbol_filters_use_their_indexes(migrated_url):
    fill_tasks(migrated_url, 20_000)  # 3 actors, 6 statuses, 200 symbols, analysed
    engine = create_db_engine(migrated_url)
    try:
        shapes = {  # filters that match nothing: only an index on all of them finds that at once
            "ix_tasks_task_type_status_created_at": TaskFilter(
                task_type="sync_portfolio", status="dead_letter"
            ),
            "ix_tasks_task_type_created_at": TaskFilter(task_type="no_such_actor"),
            "ix_tasks_kwargs_symbol": TaskFilter(kwargs_equal={"symbol": "AAPL"}),
        }
        for index, task_filter in shapes.items():
            shown = plan(engine, task_filter)
            assert f"Index Scan Backward using {index} " in shown, shown
    finally:
        engine.dispose()
