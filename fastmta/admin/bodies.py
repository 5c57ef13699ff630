"""Where the admin API finds a message's body: in the queue while the message is there, then among kept bodies."""

from __future__ import annotations

from fastmta.admin.state import AdminState
from fastmta.kept_bodies import KeptBodies


def body_of(state: AdminState, message_id: str) -> bytes | None:
    """The body as received, or None when none is kept; runs in a thread (it reads LMDB and SQLite)."""
    body = state.store.body(message_id)
    if body is not None:
        return body
    kept = KeptBodies.configured(state.config)
    try:
        return kept.get(message_id)
    finally:
        kept.close()
