"""Durable workflows: runs and their steps.

Revision ID: saga_0001
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "saga_0001"
down_revision = "0001"
branch_labels = ("saga",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workflow_runs",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("inputs", sa.JSON, nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("on_failure", sa.String(20), nullable=False),
        sa.Column("concurrency_key", sa.String(200), nullable=True),
        sa.Column("concurrency_limit", sa.Integer, nullable=True),
        sa.Column("open_steps", sa.Integer, nullable=False),
        sa.Column("completions", sa.Integer, nullable=False),
        sa.Column("abort_requested", sa.Boolean, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("compensate", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("forked_from", sa.String(32), nullable=True),
        sa.Column("deadline_at", sa.DateTime, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_workflow_runs_status_created_at", "workflow_runs", ["status", "created_at"])
    op.create_index("ix_workflow_runs_workflow_created_at", "workflow_runs", ["workflow", "created_at"])
    op.create_index("ix_workflow_runs_idempotency_key", "workflow_runs", ["idempotency_key"], unique=True)
    op.create_table(
        "workflow_steps",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("workflow_runs.run_id"), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("depends_on", sa.JSON, nullable=False),
        sa.Column("dependents", sa.JSON, nullable=False),
        sa.Column("remaining_deps", sa.Integer, nullable=False),
        sa.Column("skipped_deps", sa.Integer, nullable=False),
        sa.Column("group_name", sa.String(200), nullable=True),
        sa.Column("group_limit", sa.Integer, nullable=True),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("min_retry", sa.Integer, nullable=False),
        sa.Column("claimed_retry", sa.Integer, nullable=True),
        sa.Column("claim", sa.String(32), nullable=True),
        sa.Column("lease_until", sa.DateTime, nullable=True),
        sa.Column("call_args", sa.JSON, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("checkpoint", sa.JSON, nullable=True),
        sa.Column("progress", sa.Float, nullable=True),
        sa.Column("completion_seq", sa.Integer, nullable=True),
        sa.Column("compensation_error", sa.Text, nullable=True),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("ready_at", sa.DateTime, nullable=True),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_workflow_steps_status_ready_at", "workflow_steps", ["status", "ready_at"])
    op.create_index("ix_workflow_steps_claim", "workflow_steps", ["claim"])


def downgrade() -> None:
    op.drop_table("workflow_steps")
    op.drop_table("workflow_runs")
