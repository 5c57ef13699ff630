"""Switches operators flip at run time, kept in the `control` database of queue.lmdb.

`delivery_suspended`: delivery runners take no new work while it is set; ingress keeps
accepting and queueing. A runner reads it with DeliveryControl(env).suspended() before each batch.
`maintenance`: SMTP workers turn new connections away with `421 4.3.2` while it is set (sessions
already open go on); a worker reads it with MaintenanceControl(env).enabled() once a second.

In a cluster a switch is also kept in Redis (`shared`), and the later change wins: a node
reads Redis and copies a later change into its own queue.lmdb, and writes its own copy back when
it is the later one (a change made while Redis was unreachable, or a Redis that lost its data).
While Redis is unreachable a node follows its own copy, the cluster's last state it saw.
"""

from __future__ import annotations

import time
from typing import Generic, Protocol, TypeVar

import lmdb
import msgspec

_CONTROL_DB = b"control"
_DELIVERY = b"delivery_suspended"
_MAINTENANCE = b"maintenance"


class DeliveryState(msgspec.Struct):
    suspended: bool
    changed_at: float = 0.0
    changed_by: str = ""


class MaintenanceState(msgspec.Struct):
    enabled: bool
    changed_at: float = 0.0
    changed_by: str = ""


State = TypeVar("State", DeliveryState, MaintenanceState)
_ENCODER = msgspec.msgpack.Encoder()


class SharedSwitches(Protocol):
    """Switches kept for the whole cluster (fastmta.counters.failover.FailoverCounters)."""

    def switch(self, name: str) -> tuple[float, bytes] | None:
        """When it was changed and its value; None if never set, or unreachable."""
        ...

    def set_switch(self, name: str, at: float, value: bytes) -> bool: ...


class _Switch(Generic[State]):
    """One switch: its state in queue.lmdb and, in a cluster, in Redis too (the later change wins)."""

    def __init__(self, env: lmdb.Environment, key: bytes, off: State, shared: SharedSwitches | None) -> None:
        self._env = env
        self._db = env.open_db(_CONTROL_DB)
        self._key = key
        self._off: State = off
        self._decoder: msgspec.msgpack.Decoder[State] = msgspec.msgpack.Decoder(type(off))
        self._shared = shared

    def _local(self) -> State:
        with self._env.begin(db=self._db) as txn:
            raw = txn.get(self._key)
        return self._off if raw is None else self._decoder.decode(raw)

    def _store(self, state: State) -> None:
        with self._env.begin(write=True, db=self._db) as txn:
            txn.put(self._key, _ENCODER.encode(state))

    def state(self) -> State:
        local = self._local()
        if self._shared is None:
            return local
        found = self._shared.switch(self._key.decode())
        if found is None or found[0] < local.changed_at:
            if local.changed_at:
                self._shared.set_switch(self._key.decode(), local.changed_at, _ENCODER.encode(local))
            return local
        shared = self._decoder.decode(found[1])
        if shared.changed_at > local.changed_at:
            self._store(shared)
        return shared

    def _set(self, state: State) -> State:
        self._store(state)
        if self._shared is not None:
            self._shared.set_switch(self._key.decode(), state.changed_at, _ENCODER.encode(state))
        return state


class DeliveryControl(_Switch[DeliveryState]):
    def __init__(self, env: lmdb.Environment, shared: SharedSwitches | None = None) -> None:
        super().__init__(env, _DELIVERY, DeliveryState(False), shared)

    def suspended(self) -> bool:
        return self.state().suspended

    def set(self, suspended: bool, actor: str) -> DeliveryState:
        return self._set(DeliveryState(suspended, time.time(), actor))


class MaintenanceControl(_Switch[MaintenanceState]):
    def __init__(self, env: lmdb.Environment, shared: SharedSwitches | None = None) -> None:
        super().__init__(env, _MAINTENANCE, MaintenanceState(False), shared)

    def enabled(self) -> bool:
        return self.state().enabled

    def set(self, enabled: bool, actor: str) -> MaintenanceState:
        return self._set(MaintenanceState(enabled, time.time(), actor))
