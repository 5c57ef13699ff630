"""Where the admin API finds a message's body: for now only in the queue, while the message is there."""

from __future__ import annotations

from fastmta.admin.state import AdminState


def body_of(state: AdminState, message_id: str) -> bytes | None:
    """The body as received, or None when none is kept; runs in a thread (it reads LMDB)."""
    return state.store.body(message_id)
