"""HTTP API: API keys, the operator audit log, and the index of the job list's keyset pages.

Revision ID: api_0001
Revises: 0001
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "api_0001"
down_revision = "0001"
branch_labels = ("api",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=True),
        sa.Column("revoked_at", sa.DateTime, nullable=True),
        sa.Column("last_used_at", sa.DateTime, nullable=True),
    )
    op.create_table(
        "operator_actions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("key_name", sa.String(200), nullable=True),
        sa.Column("role", sa.String(20), nullable=True),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("target", sa.Text, nullable=True),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("detail", sa.JSON, nullable=True),
    )
    op.create_index("ix_operator_actions_key_id_id", "operator_actions", ["key_id", "id"])
    # the job list's keyset order (newest first, id as the tie-break) without a sort
    op.create_index("ix_tasks_created_at_task_id", "tasks", ["created_at", "task_id"])
    op.create_index("ix_tasks_queue_created_at", "tasks", ["queue", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_queue_created_at", "tasks")
    op.drop_index("ix_tasks_created_at_task_id", "tasks")
    op.drop_table("operator_actions")
    op.drop_table("api_keys")
