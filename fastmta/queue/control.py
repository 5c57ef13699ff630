"""Switches operators flip at run time, kept in the `control` database of queue.lmdb.

`delivery_suspended`: delivery runners take no new work while it is set; ingress keeps
accepting and queueing. A runner reads it with DeliveryControl(env).suspended() before each batch.

In a cluster the switch is also kept in Redis (`shared`), and the later change wins: a node
reads Redis and copies a later change into its own queue.lmdb, and writes its own copy back when
it is the later one (a change made while Redis was unreachable, or a Redis that lost its data).
While Redis is unreachable a node follows its own copy, the cluster's last state it saw.
"""

from __future__ import annotations

import time
from typing import Protocol

import lmdb
import msgspec

_CONTROL_DB = b"control"
_DELIVERY = b"delivery_suspended"


class DeliveryState(msgspec.Struct):
    suspended: bool
    changed_at: float = 0.0
    changed_by: str = ""


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(DeliveryState)


class SharedSwitches(Protocol):
    """Switches kept for the whole cluster (fastmta.counters.failover.FailoverCounters)."""

    def switch(self, name: str) -> tuple[float, bytes] | None:
        """When it was changed and its value; None if never set, or unreachable."""
        ...

    def set_switch(self, name: str, at: float, value: bytes) -> bool: ...


class DeliveryControl:
    def __init__(self, env: lmdb.Environment, shared: SharedSwitches | None = None) -> None:
        self._env = env
        self._db = env.open_db(_CONTROL_DB)
        self._shared = shared

    def _local(self) -> DeliveryState:
        with self._env.begin(db=self._db) as txn:
            raw = txn.get(_DELIVERY)
        return DeliveryState(False) if raw is None else _DECODER.decode(raw)

    def _store(self, state: DeliveryState) -> None:
        with self._env.begin(write=True, db=self._db) as txn:
            txn.put(_DELIVERY, _ENCODER.encode(state))

    def state(self) -> DeliveryState:
        local = self._local()
        if self._shared is None:
            return local
        found = self._shared.switch(_DELIVERY.decode())
        if found is None or found[0] < local.changed_at:
            if local.changed_at:
                self._shared.set_switch(_DELIVERY.decode(), local.changed_at, _ENCODER.encode(local))
            return local
        shared = _DECODER.decode(found[1])
        if shared.changed_at > local.changed_at:
            self._store(shared)
        return shared

    def suspended(self) -> bool:
        return self.state().suspended

    def set(self, suspended: bool, actor: str) -> DeliveryState:
        state = DeliveryState(suspended, time.time(), actor)
        self._store(state)
        if self._shared is not None:
            self._shared.set_switch(_DELIVERY.decode(), state.changed_at, _ENCODER.encode(state))
        return state
