"""What the received event costs an SMTP worker: QueueStore.insert's CPU per message with events off and on.

Inserts N messages of 1 KiB in batches of 20 (a group commit), fsync'd as ingress does, into a fresh
queue.lmdb on the data disk (--dir), once with no event written and once with the received event every
sink-reading configuration writes; between the batches the outbox is trimmed every 500 messages, as
the events process does. Rounds alternate; prints each round and the medians.

    .venv/bin/python bench/outbox_write.py --messages 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fastmta.events.names import EVENT_TYPES  # noqa: E402 (needs the repo on sys.path)
from fastmta.queue.records import Message, Recipient  # noqa: E402
from fastmta.queue.store import QueueStore  # noqa: E402

BODY = b"x" * 1024
BATCH = 20
TRIM_EVERY = 500


def messages(count: int, tag: str) -> list[Message]:
    now = time.time()
    return [
        Message(
            id=f"{tag}{number:019d}", sender="bench@source.example", recipients=[Recipient(address=f"user{number}@example.com")],
            size=len(BODY), received_at=now, next_attempt=now, client_ip="127.0.0.1", helo="source.example", listener="smtp",
            message_id=f"<{number}@source.example>", header_from="bench@source.example", header_to=f"user{number}@example.com",
            subject=f"Benchmark message number {number}",
        )
        for number in range(count)
    ]  # fmt: skip


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def insert_cost(count: int, events: bool, directory: str | None) -> float:
    """µs of this process's CPU per message inserted (the outbox's trimming not counted)."""
    workdir = Path(tempfile.mkdtemp(dir=directory))
    try:
        store = QueueStore(workdir, 1 << 31, "n1", EVENT_TYPES if events else ())
        if events:
            store.outbox.register(["bench"])
        made = messages(count, "e" if events else "o")
        trimming = 0.0
        started = cpu()
        for start in range(0, count, BATCH):
            store.insert([(message, BODY) for message in made[start:start + BATCH]])
            if events and start and start % TRIM_EVERY == 0:
                before = cpu()
                store.outbox.advance({"bench": store.outbox.last_sequence()})
                trimming += cpu() - before
        spent = cpu() - started - trimming
        store.close()
        return spent / count * 1e6
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where queue.lmdb goes (default: the system's temporary directory)")
    args = parser.parse_args(argv)
    off: list[float] = []
    on: list[float] = []
    for number in range(1, args.rounds + 1):
        off.append(insert_cost(args.messages, False, args.dir))
        on.append(insert_cost(args.messages, True, args.dir))
        print(f"round {number}: events off {off[-1]:.1f} µs/msg, received events on {on[-1]:.1f} µs/msg")
    print(f"medians: off {statistics.median(off):.1f}, on {statistics.median(on):.1f} µs of CPU per message "
          f"(+{statistics.median(on) - statistics.median(off):.1f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
