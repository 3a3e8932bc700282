"""Workflow versions (the definition each version was first started with, a run's version),
each run's event history, the signals sent to runs, and child runs' parents.

Revision ID: saga_0002
Revises: saga_0001
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "saga_0002"
down_revision = "saga_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workflow_runs") as batch:
        batch.add_column(sa.Column("workflow_version", sa.Integer, nullable=True))
        batch.add_column(sa.Column("parent_run_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("parent_step", sa.String(200), nullable=True))
    op.create_index("ix_workflow_runs_parent_run_id", "workflow_runs", ["parent_run_id"])
    op.create_table(
        "workflow_definitions",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "workflow_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("step", sa.String(200), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("started_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_workflow_events_run_id_id", "workflow_events", ["run_id", "id"])
    op.create_table(
        "workflow_signals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON, nullable=True),
        sa.Column("received_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_workflow_signals_run_id_name_id", "workflow_signals", ["run_id", "name", "id"])


def downgrade() -> None:
    op.drop_table("workflow_signals")
    op.drop_table("workflow_events")
    op.drop_table("workflow_definitions")
    with op.batch_alter_table("workflow_runs") as batch:
        batch.drop_column("parent_step")
        batch.drop_column("parent_run_id")
        batch.drop_column("workflow_version")
