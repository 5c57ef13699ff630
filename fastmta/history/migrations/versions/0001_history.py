"""messages, recipients and events

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("held", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("recipients", sa.Integer, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=False),
        sa.Column("helo", sa.Text, nullable=False),
        sa.Column("auth_user", sa.Text, nullable=False),
        sa.Column("listener", sa.String(64), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("header_message_id", sa.Text, nullable=False),
        sa.Column("header_from", sa.Text, nullable=False),
        sa.Column("header_to", sa.Text, nullable=False),
        sa.Column("workspace_id", sa.String(255), nullable=False),
        sa.Column("campaign_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("received_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("settled_at", sa.Double),
        sa.Column("last_reply", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("deferred", sa.Integer, nullable=False),
    )
    op.create_index("messages_status", "messages", ["status", "received_at"])
    op.create_index("messages_workspace", "messages", ["workspace_id", "received_at"])
    op.create_index("messages_campaign", "messages", ["campaign_id", "received_at"])
    op.create_index("messages_sender", "messages", ["sender", "received_at"])
    op.create_index("messages_received", "messages", ["received_at"])
    op.create_index("messages_updated", "messages", ["updated_at"])
    op.create_table(
        "recipients",
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("address", sa.Text, primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("deferred", sa.Integer, nullable=False),
        sa.Column("last_reply", sa.Text, nullable=False),
        sa.Column("remote_host", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("message_id", sa.String(64)),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_index("events_message", "events", ["message_id", "at"])
    op.create_index("events_at", "events", ["at"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("recipients")
    op.drop_table("messages")
