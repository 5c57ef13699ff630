"""Where the admin API finds a message's body: in the queue while the message is there, then among kept bodies."""

from __future__ import annotations

from fastmta.admin.state import AdminState
from fastmta.kept_bodies import KeptBodies


def body_of(state: AdminState, message_id: str) -> bytes | None:
    """The body as received, or None when none is kept; runs in a thread (it reads LMDB and files)."""
    body = state.store.body(message_id)
    return body if body is not None else KeptBodies.configured(state.config).get(message_id)
