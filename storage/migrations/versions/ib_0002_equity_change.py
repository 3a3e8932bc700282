"""Portfolio snapshots: ``daily_pnl`` is IB's own (reqPnL); the change of NetLiquidation since the
previous day's equity, which counts deposits and withdrawals, moves to ``equity_change``.

Revision ID: ib_0002_equity_change
Revises: ib_0001
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "ib_0002_equity_change"
down_revision = "ib_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("portfolio_snapshots", sa.Column("equity_change", sa.Float, nullable=True))
    # The figures stored so far under daily_pnl were this change: keep them under their true name.
    op.execute("UPDATE portfolio_snapshots SET equity_change = daily_pnl, daily_pnl = NULL")


def downgrade() -> None:
    op.execute("UPDATE portfolio_snapshots SET daily_pnl = equity_change")
    with op.batch_alter_table("portfolio_snapshots") as batch:
        batch.drop_column("equity_change")
