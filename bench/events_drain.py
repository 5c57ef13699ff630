"""What the events process costs per event: the real runner and webhook sink draining an outbox, CPU counted in-process.

Fills a fresh outbox with N received events (as an SMTP worker writes them), then runs EventsRunner.step
until a webhook sink (batch 500, like `fastmta-webhooks` in compare.py) has posted them all to
webhook_sink.py, a receiver that answers at once. Prints the runner's CPU (all its threads, kernel time
included) per event. The receiver's CPU is not counted.

    .venv/bin/python bench/events_drain.py --events 40000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmdb
from targets import BENCH, free_port, wait_for_port

from fastmta.config import EventsConfig, WebhookConfig
from fastmta.events.outbox import Outbox
from fastmta.events.records import received_entry
from fastmta.events.runner import EventsRunner
from fastmta.events.webhooks import WebhookSink
from fastmta.history import db
from fastmta.metrics import EventsMetrics
from fastmta.queue.records import MESSAGE_ENCODER, Message, Recipient


def received(number: int, now: float) -> bytes:
    """The outbox entry an SMTP worker writes for a message it queued."""
    message = Message(
        id=f"{number:021x}", sender="bench@source.example", recipients=[Recipient(address=f"user{number}@example.com")],
        received_at=now, size=1024, next_attempt=now, client_ip="127.0.0.1", helo="source.example", listener="smtp",
        message_id=f"<{number}@source.example>", header_from="bench@source.example", header_to=f"user{number}@example.com",
        subject=f"Benchmark message number {number}",
    )  # fmt: skip
    return received_entry(MESSAGE_ENCODER.encode(message), "n1", now, writer=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=500, help="events per request (default 500)")
    args = parser.parse_args(argv)
    port = free_port()
    receiver = subprocess.Popen([sys.executable, str(BENCH / "webhook_sink.py"), f"127.0.0.1:{port}"])
    try:
        wait_for_port(port, receiver)
        with tempfile.TemporaryDirectory() as workdir:
            env = lmdb.open(str(Path(workdir) / "queue.lmdb"), max_dbs=16, map_size=1 << 30)
            outbox = Outbox(env)
            hook = WebhookConfig(url=f"http://127.0.0.1:{port}/events", batch=args.batch)
            metrics = EventsMetrics("events")
            sink = WebhookSink(hook, EventsConfig(webhooks=[hook]), db.engine(f"sqlite:///{workdir}/history.db"), metrics)
            runner = EventsRunner(outbox, [sink], metrics)
            now = time.time()
            for start in range(0, args.events, 20):  # as group commits of 20 messages would
                with env.begin(write=True) as txn:
                    outbox.append_encoded(txn, [received(n, now) for n in range(start, min(start + 20, args.events))])
            sink.deliver([])  # the dead letters' database is made on the first call: not what is measured
            cpu, wall = time.process_time(), time.perf_counter()
            while runner.step(time.time()):
                pass
            runner.save(time.time())
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            left = outbox.pending()
            runner.close()
            env.close()
    finally:
        receiver.kill()
        receiver.wait()
    print(f"{args.events:,} events, batch {args.batch}: {cpu / args.events * 1e6:.1f} µs of CPU per event "
          f"({wall / args.events * 1e6:.1f} µs wall), {left} left in the outbox")
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
