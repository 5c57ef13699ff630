"""Reads the routing and summary fields out of a message's header block (compiled; twin: headers_ref.py)."""

def parse_headers(data: bytes | bytearray | memoryview) -> tuple[dict[str, str], int]:
    """The wanted fields of the header block (lowercase name -> unfolded value), and where the block ends.

    Wanted: message-id, from, to, subject, date, x-workspace-id, x-campaign-id, x-user-id, x-priority.
    The block ends just past the first empty line, at the start of the first line that is neither
    a field nor a continuation (a continuation before any field counts as such), or at len(data).
    The first occurrence of a field wins.
    """
