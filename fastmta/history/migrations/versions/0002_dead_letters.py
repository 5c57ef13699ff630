"""dead_letters and report_retries

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sink", sa.String(255), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("replay_requested_at", sa.Double),
        sa.Column("replayed_at", sa.Double),
    )
    op.create_index("dead_letters_event", "dead_letters", ["sink", "event_id"], unique=True)
    op.create_index("dead_letters_replay", "dead_letters", ["sink", "replay_requested_at"])
    op.create_table(
        "report_retries",
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("entry", sa.JSON, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("retry_at", sa.Double, nullable=False),
    )
    op.create_index("report_retries_due", "report_retries", ["retry_at"])


def downgrade() -> None:
    op.drop_table("report_retries")
    op.drop_table("dead_letters")
