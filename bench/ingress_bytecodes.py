"""Python bytecodes and calls one message costs on the ingress path: counted, so two builds compare exactly.

Timings on a shared 2-CPU machine drift by tens of percent between runs; a count does not. A session is
fed pipelined transactions of a 1 KiB message, and each message's Commit becomes its queue record as the
SMTP shell makes it (session.py and envelope.queue_record, the Python around the compiled parsers). Run it
with another build's interpreter to compare, e.g. one made by `git worktree add /tmp/base <commit>`:

    .venv/bin/python bench/ingress_bytecodes.py
    /tmp/base/.venv/bin/python bench/ingress_bytecodes.py
"""

from __future__ import annotations

import argparse
import sys
from types import FrameType
from typing import Any

from fastmta.queue.records import new_message_id
from fastmta.smtp.envelope import queue_record
from fastmta.smtp.policy import RelayPolicy
from fastmta.smtp.session import Commit, Session, Settings

BODY = b"Subject: x\r\nFrom: a@example.com\r\n\r\n" + b"y" * 1000 + b"\r\n"
TRANSACTION = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" + BODY + b".\r\n"


def send(messages: int) -> None:
    settings = Settings(
        hostname="mx.test", max_message_size=10_000_000, max_recipients=100, max_line_length=2048, max_errors=20,
        require_auth=False, require_tls_for_auth=True, tls_available=False, reject_bare_line_endings=True,
        policy=RelayPolicy(["127.0.0.0/8"], []), worker="smtp-0",
    )  # fmt: skip
    session = Session(settings, "127.0.0.1", 1000)
    session.start(0.0)
    session.admitted("", True)
    session.feed(b"EHLO client.test\r\n", 0.0)
    for _ in range(messages):
        _, action = session.feed(TRANSACTION, 1.0)
        assert isinstance(action, Commit), action
        message_id = new_message_id(1.0)
        # Whatever the build's Commit carries beyond envelope and body goes to queue_record, as its shell passes it.
        queue_record(action.envelope, action.body, message_id, 1.0, "mx.test", "smtp-0", *action[2:])
        session.committed(message_id, None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ingress_bytecodes.py", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=1000)
    args = p.parse_args(argv)
    counts = {"opcode": 0, "call": 0}

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event in counts:
            counts[event] += 1
        return tracer

    send(100)  # warm: first-use work (caches, the EHLO reply) is not per message
    sys.settrace(tracer)
    try:
        send(args.messages)
    finally:
        sys.settrace(None)
    print(f"{counts['opcode'] / args.messages:,.1f} bytecodes and {counts['call'] / args.messages:,.1f} Python calls per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
