"""Run-time schedules: a schedule's source (code or runtime) and the call a run-time one makes.

Revision ID: jobs_0002
Revises: jobs_0001
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "jobs_0002"
down_revision = "jobs_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("source", sa.String(20), nullable=False, server_default="code"))
        batch.add_column(sa.Column("actor", sa.String(200), nullable=True))
        batch.add_column(sa.Column("args", sa.JSON, nullable=True))
        batch.add_column(sa.Column("kwargs", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        for name in ("kwargs", "args", "actor", "source"):
            batch.drop_column(name)
