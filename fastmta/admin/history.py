"""History as the admin endpoints reach it: a query or a change run in a thread, or 503 while [history] is off.

503 rather than 404: the resource is there, this server keeps no history of it; a 404 would read
as "no such message" to a client that asked about one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
import sqlalchemy as sa

from fastmta.admin.errors import HistoryDisabled
from fastmta.admin.state import AdminState

T = TypeVar("T")


def engine_of(state: AdminState) -> sa.Engine:
    if not state.config.history.enabled:
        raise HistoryDisabled("history is off on this server: [history] enabled = false")
    engine = state.database()
    if engine is None:
        raise HistoryDisabled("history has no database yet: the events process creates it when it starts")
    return engine


async def read(state: AdminState, query: Callable[[sa.Connection], T]) -> T:
    """`query` on a connection of its own, in a thread: the event loop keeps serving while the database answers."""
    return await _in_thread(state, query, write=False)


async def change(state: AdminState, writes: Callable[[sa.Connection], T]) -> T:
    """`writes` in one transaction, committed when it returns, in a thread."""
    return await _in_thread(state, writes, write=True)


async def _in_thread(state: AdminState, work: Callable[[sa.Connection], T], write: bool) -> T:
    engine = engine_of(state)

    def run() -> T:
        with engine.begin() if write else engine.connect() as connection:
            return work(connection)

    return await anyio.to_thread.run_sync(run)
