"""Alembic's environment for history: migrations run on the connection fastmta.history.db hands over."""

from __future__ import annotations

from alembic import context

from fastmta.history.schema import metadata

connection = context.config.attributes["connection"]
# Batch mode lets a later revision alter a column on SQLite, which has no ALTER COLUMN.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
