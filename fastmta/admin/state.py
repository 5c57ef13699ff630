"""What the admin process opens once, after fork: its own LMDB environment and the stores on it."""

from __future__ import annotations

from dataclasses import dataclass

from fastmta.accounts import Accounts
from fastmta.admin.audit import AuditLog
from fastmta.admin.control import DeliveryControl
from fastmta.admin.readings import Readings
from fastmta.admin.tokens import Tokens
from fastmta.config import Config
from fastmta.queue.store import QueueStore


@dataclass
class AdminState:
    config: Config
    store: QueueStore
    accounts: Accounts
    tokens: Tokens
    audit: AuditLog
    delivery: DeliveryControl
    readings: Readings

    @classmethod
    def open(cls, config: Config) -> AdminState:
        store = QueueStore(config.data_dir, config.server.queue_max_bytes)
        return cls(
            config,
            store,
            Accounts(store.env),
            Tokens(store.env),
            AuditLog(store.env),
            DeliveryControl(store.env),
            Readings(config.data_dir, store),
        )

    def close(self) -> None:
        self.store.close()
