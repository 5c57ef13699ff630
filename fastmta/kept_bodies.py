"""Bodies of settled mail, kept for [history] keep_bodies so the admin API can still show their parts.

The delivery runner that settles a message hands its body here once the settlement is stored,
through a group commit of its own (one SQLite transaction for the bodies settled meanwhile, in a
thread). A store apart from the queue and history: days of bodies in queue.lmdb would fill its map
and refuse mail, in history they would weigh on every write of the events process, and a file
per body costs a file creation each (measured: 0.4 ms here, half the runner's time). Best effort:
a body is kept after its message left the queue, so a crash between the two loses the copy, never
mail; WAL with synchronous=NORMAL may lose the last copies to a power cut, never the database. A
cache, so no migrations: its one table is made when missing. Each node keeps the bodies it delivered.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from fastmta.config import Config
from fastmta.history import db

log = logging.getLogger("fastmta.delivery")

_metadata = sa.MetaData()
_bodies = sa.Table(
    "bodies",
    _metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kept_at", sa.Double, nullable=False, index=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
)


class KeptBodies:
    def __init__(self, data_dir: Path, keep: float) -> None:
        self.path = data_dir / "kept.db"
        self.keep = keep  # seconds; 0 keeps none
        self.failing = False
        self._engine: sa.Engine | None = None

    @classmethod
    def configured(cls, config: Config) -> KeptBodies:
        """Kept while history is: without it nothing would ask for them."""
        return cls(config.data_dir, config.history.keep_bodies if config.history.enabled else 0)

    def put_many(self, kept: list[tuple[str, bytes]], now: float | None = None) -> None:
        """(message id, body) pairs, in one transaction; a failure is logged (once) and loses only these copies."""
        if not self.keep or not kept:
            return
        at = time.time() if now is None else now
        rows = [{"id": message_id, "kept_at": at, "body": body} for message_id, body in kept]
        try:
            with self._opened().begin() as connection:
                connection.execute(sqlite.insert(_bodies).on_conflict_do_nothing(), rows)
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            if not self.failing:
                log.error("bodies of settled mail cannot be kept in %s: %s", self.path, exc)
            self.failing = True
            return
        if self.failing:
            log.info("bodies of settled mail are kept again")
            self.failing = False

    def get(self, message_id: str) -> bytes | None:
        if not self.keep or not self.path.exists():
            return None
        with self._opened().connect() as connection:
            body: bytes | None = connection.scalar(sa.select(_bodies.c.body).where(_bodies.c.id == message_id))
        return body

    def prune(self, now: float | None = None) -> int:
        """Removes bodies kept longer than keep; returns how many. Several runners may do it at once: fine."""
        if not self.path.exists():
            return 0
        cutoff = (time.time() if now is None else now) - self.keep
        with self._opened().begin() as connection:
            return connection.execute(sa.delete(_bodies).where(_bodies.c.kept_at < cutoff)).rowcount

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _opened(self) -> sa.Engine:
        if self._engine is None:
            engine = db.engine(f"sqlite:///{self.path.resolve()}", synchronous="NORMAL")
            _metadata.create_all(engine)
            self._engine = engine
        return self._engine

