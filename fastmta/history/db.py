"""Opening history: the engine for [history] url (SQLite in data_dir by default) and its migration to the newest schema."""

from __future__ import annotations

import functools
import logging
import weakref
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from fastmta.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
# The PostgreSQL advisory lock that nodes of a cluster sharing one database migrate under, one at a
# time: any 64-bit number that nothing else in that database locks ("fastmta" in ASCII).
MIGRATION_LOCK = 0x666173746D7461


def url(config: Config) -> str:
    """The SQLAlchemy URL of history: "postgresql://" means psycopg 3, as "postgresql+psycopg://" would."""
    if not config.history.url:
        return f"sqlite:///{(config.data_dir / 'history.db').resolve()}"
    if config.history.url.startswith("postgresql://"):
        return "postgresql+psycopg://" + config.history.url[len("postgresql://"):]
    return config.history.url


def engine(address: str, synchronous: str = "FULL", **options: Any) -> sa.Engine:
    """An engine whose JSON columns are written and read by msgspec, as events are everywhere else.

    `synchronous` is SQLite's: FULL for history (below); NORMAL for a best-effort store (kept bodies).
    `options` go to sa.create_engine as they are.
    """
    made = sa.create_engine(
        address,
        json_serializer=lambda value: msgspec.json.encode(value).decode(),
        json_deserializer=msgspec.json.decode,
        **options,
    )
    if made.dialect.name == "sqlite":
        sa.event.listen(made, "connect", functools.partial(_sqlite_settings, synchronous=synchronous))
    return made


def _sqlite_settings(connection: Any, _record: Any, synchronous: str) -> None:
    # WAL: the admin process reads while the events process writes. FULL: a commit is on disk when it
    # returns, since the events process then moves its outbox cursor past those events (NORMAL
    # could lose the last commits to a power cut after the cursor moved: lost for good). In WAL
    # mode that is one fsync of the log per batch. No foreign keys: rows of a message are pruned
    # together, and checking costs every insert. busy_timeout: a writer waits for another (a
    # migration, a cleanup) instead of failing.
    cursor = connection.cursor()
    for pragma in ("journal_mode=WAL", f"synchronous={synchronous}", "foreign_keys=OFF", "busy_timeout=10000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def migrate(db: sa.Engine) -> None:
    """Brings the schema to the newest revision; on a database already there it changes nothing.

    The nodes of a cluster start their events processes at once against one PostgreSQL: each
    migrates under an advisory lock, so the migrations run once.
    """
    # Imported here: Alembic takes longer to import than the rest of the admin process, which only
    # migrates when history is on (and then once).
    from alembic import command
    from alembic.config import Config as AlembicConfig

    # Alembic says at INFO what it sets up on every start; the log should say only what changed.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    settings = AlembicConfig()
    settings.set_main_option("script_location", str(MIGRATIONS))
    with db.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Held to the end of this transaction: a node that waited finds the schema at head.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        settings.attributes["connection"] = connection
        command.upgrade(settings, "head")


def for_writing(config: Config) -> sa.Engine:
    """The engine of [history] for the events process, which calls ready() before its first write.

    Nothing connects yet: a database that is down when the events process starts makes its sinks
    wait and retry (their lag shows it), not the process fail.
    """
    if not config.history.url:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    return engine(url(config))


_migrated: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def ready(db: sa.Engine) -> None:
    """Migrates the engine's database on its first use in this process; raises while it cannot."""
    if db not in _migrated:
        migrate(db)
        _migrated.add(db)


def opened(config: Config) -> sa.Engine:
    """The engine of [history] with its schema at the newest revision, now."""
    made = for_writing(config)
    ready(made)
    return made


def insert(connection: sa.Connection, table: sa.Table) -> Any:
    """INSERT in the connection's own dialect, which offers ON CONFLICT (SQLite's and PostgreSQL's alike)."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
