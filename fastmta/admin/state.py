"""What the admin process opens once, after fork: its own LMDB environment, the stores on it, and history's engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from fastmta.access.accounts import Accounts
from fastmta.access.audit import AuditLog
from fastmta.access.stores import Access
from fastmta.access.tokens import Tokens
from fastmta.admin.readings import Readings
from fastmta.config import Config
from fastmta.counters import configured
from fastmta.history import db
from fastmta.limits import ClientLimits
from fastmta.queue.control import DeliveryControl, MaintenanceControl
from fastmta.queue.schedule import Scheduler
from fastmta.queue.store import QueueStore
from fastmta.queue.wakeup import Poker
from fastmta.ratelimit import RateLimiter
from fastmta.stores import sqlite

if TYPE_CHECKING:
    from fastmta.counters.failover import FailoverCounters


@dataclass
class AdminState:
    config: Config
    store: QueueStore
    access: Access  # users, tokens and the audit log: queue.lmdb's, or the cluster's in PostgreSQL
    delivery: DeliveryControl
    maintenance: MaintenanceControl
    readings: Readings
    poker: Poker
    limiter: RateLimiter | FailoverCounters
    limits: ClientLimits  # SMTP's per-address limits, for HTTP Basic logins
    cluster: FailoverCounters | None  # Redis, with [cluster] redis_url: the limiter, heartbeats, the node list
    _history: sa.Engine | None = field(default=None, init=False)
    _stored: dict[Path, sa.Engine] = field(default_factory=dict, init=False)

    @classmethod
    def open(cls, config: Config) -> AdminState:
        store = QueueStore.opened(config)
        cluster = configured.shared(config, "admin")
        limiter = cluster or RateLimiter(config.data_dir / "state.lmdb")
        return cls(
            config,
            store,
            Access.opened(config, store.env),
            DeliveryControl(store.env, cluster),
            MaintenanceControl(store.env, cluster),
            Readings(config.data_dir, store),
            Poker(config.data_dir),
            limiter,
            ClientLimits.configured(limiter, config),
            cluster,
        )

    @property
    def accounts(self) -> Accounts:
        return self.access.accounts

    @property
    def tokens(self) -> Tokens:
        return self.access.tokens

    @property
    def audit(self) -> AuditLog:
        return self.access.audit

    def make_due(self, message_ids: list[str] | None) -> int:
        """Deferred mail (all, or these ids) due now, and the delivery runners told; runs in a thread."""
        changed = Scheduler(self.store).make_due(message_ids)
        self.wake_runners()
        return changed

    def database(self) -> sa.Engine | None:
        """The engine of history's database (history, dead letters), made on first use; None while SQLite
        has no file yet (the events process makes and migrates it): reading must not leave an empty
        database behind. Read only here: the schema is the events process's to create and migrate."""
        if self._history is None:
            if not self.config.history.url and not (self.config.data_dir / "history.db").exists():
                return None
            # With PostgreSQL, the engine the users, tokens and audit log are read through: one pool, not two.
            self._history = self.access.engine or db.engine(db.url(self.config))
        return self._history

    def stored_database(self, path: Path) -> sa.Engine | None:
        """The engine of an sqlite route's database, made on first use; None while that route has stored
        nothing (no file yet): the delivery runner creates it, and reading must not leave an empty one."""
        if path not in self._stored:
            if not path.exists():
                return None
            self._stored[path] = sqlite.engine(path)
        return self._stored[path]

    def wake_runners(self) -> None:
        self.poker.poke()

    def close(self) -> None:
        if self._history is not None:
            self._history.dispose()
        for engine in self._stored.values():
            engine.dispose()
        self.access.close()
        self.poker.close()
        self.limiter.close()
        self.store.close()
