"""Accounts, tokens and the audit log in history's SQL database (schema.py's users, tokens, audit): the
rows of a cluster, which every node reads and writes at once. Each method is one transaction.

Whether a row was written or removed is read from RETURNING: psycopg gave INSERT ... ON CONFLICT a
rowcount of -1. The schema is brought to head on first use in each process (db.ready, under PostgreSQL's advisory
lock): a CLI command or an SMTP worker may touch these tables before any events process migrated.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import msgspec
import sqlalchemy as sa

from fastmta.access.accounts import User
from fastmta.access.audit import AuditEntry
from fastmta.access.tokens import Token, TokenExists
from fastmta.history import db
from fastmta.history.schema import audit, tokens, users


def _columns(record: msgspec.Struct) -> dict[str, object]:
    """Every field, defaults too: the records omit defaults when encoded, the columns are NOT NULL."""
    return {field: getattr(record, field) for field in record.__struct_fields__}


class _Rows:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _begin(self) -> AbstractContextManager[sa.Connection]:
        db.ready(self.engine)
        return self.engine.begin()


class SqlUsers(_Rows):
    def insert(self, user: User) -> bool:
        with self._begin() as connection:
            insert = db.insert(connection, users).values(_columns(user)).on_conflict_do_nothing()
            return connection.execute(insert.returning(users.c.username)).first() is not None

    def get(self, username: str) -> User | None:
        with self._begin() as connection:
            row = connection.execute(sa.select(users).where(users.c.username == username)).mappings().first()
        return None if row is None else User(**row)

    def list(self) -> list[User]:
        with self._begin() as connection:
            return [User(**row) for row in connection.execute(sa.select(users).order_by(users.c.username)).mappings()]

    def change(self, username: str, **changes: object) -> User | None:
        where = users.c.username == username
        with self._begin() as connection:
            connection.execute(sa.update(users).where(where).values(**changes))
            row = connection.execute(sa.select(users).where(where)).mappings().first()
        return None if row is None else User(**row)

    def delete(self, username: str) -> bool:
        with self._begin() as connection:
            deleted = sa.delete(users).where(users.c.username == username).returning(users.c.username)
            return connection.execute(deleted).first() is not None


class SqlTokens(_Rows):
    remote = True

    def insert(self, token: Token) -> None:
        # The unique name and the primary key decide, so two nodes creating one name at once cannot both win.
        try:
            with self._begin() as connection:
                connection.execute(sa.insert(tokens).values(_columns(token)))
        except sa.exc.IntegrityError:
            raise TokenExists(token.name) from None

    def get(self, token_id: str) -> Token | None:
        with self._begin() as connection:
            row = connection.execute(sa.select(tokens).where(tokens.c.id == token_id)).mappings().first()
        return None if row is None else Token(**row)

    def list(self) -> list[Token]:
        with self._begin() as connection:
            return [Token(**row) for row in connection.execute(sa.select(tokens).order_by(tokens.c.id)).mappings()]

    def delete(self, token_id: str) -> Token | None:
        with self._begin() as connection:
            row = connection.execute(sa.delete(tokens).where(tokens.c.id == token_id).returning(tokens)).mappings().first()
        return None if row is None else Token(**row)


class SqlAudit(_Rows):
    def put(self, entry: AuditEntry) -> bool:
        with self._begin() as connection:
            insert = db.insert(connection, audit).values(_columns(entry)).on_conflict_do_nothing()
            return connection.execute(insert.returning(audit.c.id)).first() is not None

    def newest(
        self, limit: int, offset: int, actor: str | None, action: str | None, target: str | None
    ) -> tuple[list[AuditEntry], int]:
        filters = {audit.c.actor: actor, audit.c.action: action, audit.c.target: target}
        where = [column == value for column, value in filters.items() if value]
        with self._begin() as connection:
            total = connection.scalar(sa.select(sa.func.count()).select_from(audit).where(*where)) or 0
            rows = connection.execute(
                sa.select(audit).where(*where).order_by(audit.c.id.desc()).limit(limit).offset(offset)
            ).mappings()
            return [AuditEntry(**row) for row in rows], total
