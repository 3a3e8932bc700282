"""Outputs of the ai_analysis queue.

Revision ID: data_0001
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "data_0001"
down_revision = "0001"
branch_labels = ("data",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analysis_reports",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("analyzer", sa.String(200), nullable=False),
        sa.Column("fallback_reason", sa.Text, nullable=True),
        sa.Column("message_id", sa.String(64), nullable=True),
        sa.Column("inputs", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_analysis_reports_kind_created_at", "analysis_reports", ["kind", "created_at"])


def downgrade() -> None:
    op.drop_table("analysis_reports")
