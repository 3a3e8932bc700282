"""The audit trail's attempts: one row per attempt of a message (error, traceback, worker,
timings, trace id), written by the audit writer in the same transaction as the ``tasks`` row;
and the trace id of the ``tasks`` row (a first attempt that succeeded has no attempt row).

Revision ID: audit_0001
Revises: 0001
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op

revision = "audit_0001"
down_revision = "0001"
branch_labels = ("audit",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_attempts",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("retry_count", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=True),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("error_type", sa.String(200), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("traceback", sa.Text, nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True),
    )
    # housekeeping deletes finished attempts by age
    op.create_index("ix_task_attempts_finished_at", "task_attempts", ["finished_at"])
    # the trace of a first attempt that succeeded (which has no attempt row)
    op.add_column("tasks", sa.Column("trace_id", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("trace_id")
    op.drop_table("task_attempts")
