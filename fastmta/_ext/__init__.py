"""The compiled hot path (command lines, DATA, headers, received events as JSON), or its twins if FASTMTA_NO_EXTENSIONS=1."""

import os

if os.environ.get("FASTMTA_NO_EXTENSIONS") != "1":
    # No fallback on ImportError: a missing build must fail loudly, not run ten times slower.
    from fastmta._ext.data import DataScanner
    from fastmta._ext.headers import parse_headers
    from fastmta._ext.lines import split_lines
    from fastmta._ext.received import received_json, received_payload, received_payloads

    COMPILED = True
else:
    # The twins have the compiled modules' interface (their .pyi); tests/ext holds them to it.
    from fastmta._ext.data_ref import DataScanner  # type: ignore[assignment]
    from fastmta._ext.headers_ref import parse_headers
    from fastmta._ext.lines_ref import split_lines
    from fastmta._ext.received_ref import received_json, received_payload, received_payloads

    COMPILED = False

__all__ = ["COMPILED", "DataScanner", "parse_headers", "received_json", "received_payload", "received_payloads", "split_lines"]
