"""audit.request_id and tokens.name as text: what the admin API and the CLI accept did not fit

A client's X-Request-Id may have 128 characters (admin/app.py), and the CLI names tokens freely, as
queue.lmdb kept them: 64 characters refused those, failing the audit entry of a change already made.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch: SQLite alters a column by copying its table.
    with op.batch_alter_table("audit") as audit:
        audit.alter_column("request_id", type_=sa.Text, existing_type=sa.String(64), existing_nullable=False)
    with op.batch_alter_table("tokens") as tokens:
        tokens.alter_column("name", type_=sa.Text, existing_type=sa.String(64), existing_nullable=False)


def downgrade() -> None:
    # A longer request id is cut to fit; a longer token name fails the downgrade: revoke that token first.
    op.execute(sa.text("UPDATE audit SET request_id = substr(request_id, 1, 64) WHERE length(request_id) > 64"))
    with op.batch_alter_table("audit") as audit:
        audit.alter_column("request_id", type_=sa.String(64), existing_type=sa.Text, existing_nullable=False)
    with op.batch_alter_table("tokens") as tokens:
        tokens.alter_column("name", type_=sa.String(64), existing_type=sa.Text, existing_nullable=False)
