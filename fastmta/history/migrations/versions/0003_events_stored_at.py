"""events.stored_at: when history stored an event, the order followers of the event stream read in

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("stored_at", sa.BigInteger))
    # Events stored before this revision: as if stored when they happened, the best order there is.
    op.execute(sa.text("UPDATE events SET stored_at = CAST(at * 1000000 AS BIGINT)"))
    op.create_index("events_stored", "events", ["stored_at", "id"])


def downgrade() -> None:
    op.drop_index("events_stored", "events")
    op.drop_column("events", "stored_at")
