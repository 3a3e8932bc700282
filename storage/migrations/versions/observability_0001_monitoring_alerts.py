"""Monitoring alerts raised by failing health checks.

Revision ID: observability_0001
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "observability_0001"
down_revision = "0001"
branch_labels = ("observability",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitoring_alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("check_name", sa.String(100), nullable=False),
        sa.Column("severity", sa.String(20), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("raised_at", sa.DateTime, nullable=False),
        sa.Column("resolved_at", sa.DateTime, nullable=True),
    )
    open_only = sa.text("resolved_at IS NULL")
    op.create_index(
        "ux_monitoring_alerts_open_check",
        "monitoring_alerts",
        ["check_name"],
        unique=True,
        sqlite_where=open_only,
        postgresql_where=open_only,
    )
    op.create_index("ix_monitoring_alerts_raised_at", "monitoring_alerts", ["raised_at"])


def downgrade() -> None:
    op.drop_table("monitoring_alerts")
