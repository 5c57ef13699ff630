"""The one place that chooses where accounts, tokens and the audit log are kept: this node's queue.lmdb,
or history's PostgreSQL when [history] url names one, which every node of a cluster shares.

SQLite history stays with LMDB: it is one node's own file, and LMDB answers the SMTP workers' AUTH
look-ups without a second database.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import lmdb
import sqlalchemy as sa

from fastmta.access.accounts import Accounts, LmdbUsers
from fastmta.access.audit import AuditLog, LmdbAudit
from fastmta.access.sql import SqlAudit, SqlTokens, SqlUsers
from fastmta.access.tokens import LmdbTokens, TokenExists, Tokens
from fastmta.config import Config
from fastmta.history import db

# Seconds to wait for a connection to the shared store, unless [history] url says (?connect_timeout=).
# Without it a database that drops packets holds an SMTP worker's two blocking threads, and with
# them every AUTH, for the system's TCP timeout (minutes) instead of answering 454.
CONNECT_TIMEOUT = 5


def shared(config: Config) -> bool:
    """True when the nodes pointed at [history] url share their accounts, tokens and audit log there."""
    return config.history.url.startswith("postgresql")


@dataclass
class Access:
    accounts: Accounts
    tokens: Tokens
    audit: AuditLog
    engine: sa.Engine | None  # PostgreSQL's, when shared

    @classmethod
    def local(cls, env: lmdb.Environment) -> Access:
        """This node's own, in its queue.lmdb (`env`)."""
        return cls(Accounts(LmdbUsers(env)), Tokens(LmdbTokens(env)), AuditLog(LmdbAudit(env)), None)

    @classmethod
    def opened(cls, config: Config, env: lmdb.Environment) -> Access:
        """Where config says: shared in PostgreSQL, or local. Nothing connects before the first use, so a
        database that is down at start costs its look-ups, not the start."""
        if not shared(config):
            return cls.local(env)
        address = sa.make_url(db.url(config))
        if "connect_timeout" not in address.query:
            address = address.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT)})
        # hide_parameters: a failed statement's error, which the logs show, would carry password and
        # token hashes. pool_pre_ping: a connection PostgreSQL closed (a restart, a failover) is
        # replaced when taken from the pool, not handed out to fail one AUTH or API request each.
        made = db.engine(address.render_as_string(hide_password=False), hide_parameters=True, pool_pre_ping=True)
        return cls.sql(made)

    @classmethod
    def sql(cls, engine: sa.Engine) -> Access:
        """In history's database behind `engine`, whose schema is brought to head on first use."""
        return cls(Accounts(SqlUsers(engine)), Tokens(SqlTokens(engine)), AuditLog(SqlAudit(engine)), engine)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()


@dataclass
class Moved:
    users: int = 0
    tokens: int = 0
    audit: int = 0  # copied: entries are never deleted, so copying them again adds nothing
    name_taken: list[str] = field(default_factory=list)  # local tokens whose name another shared token has
    replaced: list[str] = field(default_factory=list)  # local users the shared store had its own account of


def move(source: Access, target: Access) -> Moved:
    """Moves what `target` lacks of `source`'s users and tokens (a node's own into the shared store, when
    it joins a cluster) as they are, hashes included, so passwords and token texts still work, and
    copies its audit entries; what `target` has already stays as it is.

    A user or token leaves `source` once `target` holds its name or id: were it kept, running this
    again would bring back one since deleted or revoked in the cluster. A token whose name another
    token has there stays, to move once that name is free."""
    moved = Moved()
    for user in source.accounts.list():
        if target.accounts.rows.insert(user):
            moved.users += 1
        elif target.accounts.rows.get(user.username) != user:
            moved.replaced.append(user.username)
        source.accounts.rows.delete(user.username)
    for token in source.tokens.list():
        if target.tokens.rows.get(token.id) is None:
            try:
                target.tokens.rows.insert(token)
            except TokenExists:
                moved.name_taken.append(token.name)
                continue
            moved.tokens += 1
        source.tokens.rows.delete(token.id)
    entries, _ = source.audit.newest(sys.maxsize, 0)
    for entry in reversed(entries):
        moved.audit += target.audit.rows.put(entry)
    return moved
