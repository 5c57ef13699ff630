"""Switches operators flip at run time, kept in the `control` database of queue.lmdb.

`delivery_suspended`: delivery runners take no new work while it is set; ingress keeps
accepting and queueing. A runner reads it with DeliveryControl(env).suspended() before each batch.
"""

from __future__ import annotations

import time

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


class DeliveryControl:
    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self._db = env.open_db(_CONTROL_DB)

    def state(self) -> DeliveryState:
        with self._env.begin(db=self._db) as txn:
            raw = txn.get(_DELIVERY)
        return DeliveryState(False) if raw is None else _DECODER.decode(raw)

    def suspended(self) -> bool:
        return self.state().suspended

    def set(self, suspended: bool, actor: str) -> DeliveryState:
        state = DeliveryState(suspended, time.time(), actor)
        with self._env.begin(write=True, db=self._db) as txn:
            txn.put(_DELIVERY, _ENCODER.encode(state))
        return state
