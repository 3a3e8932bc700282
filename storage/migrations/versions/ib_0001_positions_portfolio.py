"""IB position request queue, its batches, portfolio snapshots, risk breaches, active contracts.

Revision ID: ib_0001
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "ib_0001"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ib_position_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("conid", sa.BigInteger, nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("pending_key", sa.String(100), nullable=True, unique=True),
        sa.Column("coalesced", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("claimed_at", sa.DateTime, nullable=True),
        sa.Column("completed_at", sa.DateTime, nullable=True),
    )
    op.create_index(
        "ix_ib_position_requests_status_priority", "ib_position_requests", ["status", "priority", "id"]
    )
    op.create_table(
        "ib_position_batches",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False, index=True),
        sa.Column("finished_at", sa.DateTime, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("succeeded", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("released", sa.Integer, nullable=False),
        sa.Column("rows_written", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_table(
        "portfolio_snapshots",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("taken_at", sa.DateTime, nullable=False),
        sa.Column("net_liquidation", sa.Float, nullable=True),
        sa.Column("total_cash", sa.Float, nullable=True),
        sa.Column("gross_exposure", sa.Float, nullable=False),
        sa.Column("unrealized_pnl", sa.Float, nullable=False),
        sa.Column("realized_pnl", sa.Float, nullable=False),
        sa.Column("daily_pnl", sa.Float, nullable=True),
        sa.Column("positions", sa.JSON, nullable=False),
        sa.Column("summary", sa.JSON, nullable=False),
    )
    op.create_index("ix_portfolio_snapshots_account_taken_at", "portfolio_snapshots", ["account", "taken_at"])
    op.create_table(
        "portfolio_risk_breaches",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("snapshot_id", sa.Integer, sa.ForeignKey("portfolio_snapshots.id"), nullable=False),
        sa.Column("limit_name", sa.String(64), nullable=False),
        sa.Column("limit_value", sa.Float, nullable=False),
        sa.Column("actual_value", sa.Float, nullable=False),
        sa.Column("conid", sa.BigInteger, nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("detected_at", sa.DateTime, nullable=False),
    )
    op.create_index(
        "ix_portfolio_risk_breaches_account_detected_at",
        "portfolio_risk_breaches",
        ["account", "detected_at"],
    )
    op.create_table(
        "ib_active_contracts",
        sa.Column("conid", sa.BigInteger, primary_key=True),
        sa.Column("strategy", sa.String(200), primary_key=True),
        sa.Column("registered_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "ib_active_contracts",
        "portfolio_risk_breaches",
        "portfolio_snapshots",
        "ib_position_batches",
        "ib_position_requests",
    ):
        op.drop_table(table)
