"""sqlite: one row per message in a database file of its own, with an FTS5 index of subject and body text the admin API searches.

The database outlives upgrades, so its schema changes only under these rules:
1. `PRAGMA user_version` is the schema's version (1 now); a newer fastmta that changes the schema
   raises it and brings older files up when it opens them.
2. A column is never renamed, removed or retyped; a new one is nullable or has a server default.
3. Times are seconds since the epoch (float), as everywhere in fastmta.
A copy is durable when its transaction commits: history's SQLite settings (WAL, synchronous=FULL)
make a commit reach the disk before it returns. A message stored again (a retry, a runner that died
before settling it) finds its row there and changes nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from fastmta.history import db
from fastmta.stores.base import Copy, Failed
from fastmta.stores.text import subject_and_text

SCHEMA_VERSION = 1

_metadata = sa.MetaData()
stored = sa.Table(
    "stored_messages",
    _metadata,
    sa.Column("seq", sa.Integer, primary_key=True),  # SQLite's rowid, and the message's row in stored_text
    sa.Column("id", sa.String(64), nullable=False, unique=True),  # the queue id
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Column("stored_at", sa.Double, nullable=False),
    sa.Column("sender", sa.Text, nullable=False),
    sa.Column("recipients", sa.JSON, nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("raw", sa.LargeBinary, nullable=False),
)
# FTS5, which SQLAlchemy cannot declare: the subject and the body's text, at rowid = stored_messages.seq.
_TEXT_TABLE = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS stored_text USING fts5(subject, body, tokenize = 'unicode61 remove_diacritics 2')"
)
_text = sa.table("stored_text", sa.column("rowid"), sa.column("subject"), sa.column("body"))


class StoredMessage(msgspec.Struct):
    id: str
    received_at: float
    stored_at: float
    sender: str
    recipients: list[str]
    subject: str
    size: int
    # Where the query matched in the body, the matches in [brackets]; empty without a query.
    snippet: str = ""


class BadQuery(ValueError):
    """Not FTS5 query syntax (an unbalanced quote, an unknown column): the message is SQLite's."""


def check_query(query: str) -> None:
    """Raises BadQuery for what FTS5 cannot parse: tried on an empty table of the same columns, where
    an error can only be the query's (on the real one it might be the database's: locked, full)."""
    with closing(sqlite3.connect(":memory:")) as empty:
        empty.execute(_TEXT_TABLE)
        try:
            empty.execute("SELECT rowid FROM stored_text WHERE stored_text MATCH ?", (query,)).fetchall()
        except sqlite3.OperationalError as exc:
            raise BadQuery(str(exc)) from None


def engine(path: Path) -> sa.Engine:
    return db.engine(f"sqlite:///{path.resolve()}")


def create(made: sa.Engine) -> None:
    with made.begin() as connection:
        _metadata.create_all(connection)
        connection.exec_driver_sql(_TEXT_TABLE)
        connection.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")


class SqliteStore:
    per_recipient = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self._engine: sa.Engine | None = None
        self._opening = threading.Lock()

    def put(self, copy: Copy) -> None:
        subject, text = subject_and_text(copy.body)
        row = {
            "id": copy.message_id, "received_at": copy.received_at, "stored_at": time.time(), "sender": copy.sender,
            "recipients": list(copy.recipients), "subject": subject, "size": len(copy.body), "raw": copy.body,
        }  # fmt: skip
        try:
            with self._opened().begin() as connection:
                new = sqlite.insert(stored).on_conflict_do_nothing(index_elements=["id"]).returning(stored.c.seq)
                seq = connection.scalar(new, row)
                if seq is not None:  # not stored before: indexed under the same rowid
                    connection.execute(sa.insert(_text), {"rowid": seq, "subject": subject, "body": text})
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise Failed(f"sqlite write failed: {getattr(exc, 'orig', None) or exc}") from exc

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _opened(self) -> sa.Engine:
        with self._opening:
            if self._engine is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                made = engine(self.path)
                create(made)
                self._engine = made
            return self._engine


def page(connection: sa.Connection, query: str | None, limit: int, offset: int) -> tuple[list[StoredMessage], int]:
    """Stored messages matching the FTS5 query (best match first), or all of them (newest first); and how many match."""
    columns: list[Any] = [stored.c[field] for field in StoredMessage.__struct_fields__ if field != "snippet"]
    if not query:
        total = connection.scalar(sa.select(sa.func.count()).select_from(stored)) or 0
        rows = connection.execute(sa.select(*columns).order_by(stored.c.seq.desc()).limit(limit).offset(offset))
        return [StoredMessage(*row) for row in rows], total
    check_query(query)
    matching = sa.text("stored_text MATCH :query").bindparams(query=query)
    snippet = sa.func.snippet(sa.literal_column("stored_text"), 1, "[", "]", "…", 16)
    total = connection.scalar(sa.select(sa.func.count()).select_from(_text).where(matching)) or 0
    rows = connection.execute(
        sa.select(*columns, snippet)
        .select_from(_text.join(stored, stored.c.seq == _text.c.rowid))
        .where(matching)
        .order_by(sa.literal_column("rank"), stored.c.seq.desc())
        .limit(limit)
        .offset(offset)
    )
    return [StoredMessage(*row) for row in rows], total
