"""How long a relayed message waits: from fastmta's 250 to the next hop's 250, at half the maximum rate.

One fastmta (fsync on, one delivery runner, a smarthost route to sink.py) is first driven closed loop to
find its end-to-end maximum (messages that reached the sink / seconds), unless --rate is given. Then
source.py sends open loop at --fraction of that rate with --acks, and each message's 250 time is joined
with the time fastmta's delivery log records the sink's 250 for the same queue id.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from compare import SCENARIOS, SENDER, SourceClient, Sink
from percentiles import summary
from targets import BENCH, FastMTA, free_port


def maximum_rate(port: int, sink: Sink, sessions: int, duration: float, size: int) -> float:
    """End-to-end messages/s with the client sending as fast as it is answered."""
    load = SourceClient(sessions, duration).run(port, replace(SCENARIOS["relay-1k"], size=size), "fastmta")
    report = sink.drain(load.accepted)
    if report["messages"] < load.accepted:
        raise RuntimeError(f"only {report['messages']} of {load.accepted} messages reached the sink")
    return report["messages"] / (report["last_message_at"] - load.started_at)


def delivered_at(delivery_log: Path) -> dict[str, float]:
    """Queue id -> when the next hop accepted it (the log line is written after the sink's 250)."""
    found = {}
    for line in delivery_log.read_text().splitlines():
        entry = json.loads(line)
        if entry["status"] == "delivered":
            found[entry["message_id"]] = entry["time"]
    return found


def wait_for_log(delivery_log: Path, expected: int, seconds: float = 10.0) -> dict[str, float]:
    """The runner writes its line just after the sink's 250: wait (a while at most) until every delivery is in."""
    deadline = time.monotonic() + seconds
    while len(found := delivered_at(delivery_log)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def ack_to_delivery(acks: str, delivered: dict[str, float]) -> tuple[list[float], int]:
    """Milliseconds from each message's 250 (source.py --acks lines) to its delivery, and how many were never delivered."""
    waits = []
    missing = 0
    for line in acks.splitlines():
        queue_id, acked = line.split()
        if queue_id in delivered:
            waits.append((delivered[queue_id] - float(acked)) * 1000)
        else:
            missing += 1
    return waits, missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="relay_latency.py", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024, help="message size in bytes (default 1024)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each phase (default 10)")
    p.add_argument("--sessions", type=int, default=50, help="sessions of the closed-loop phase (default 50)")
    p.add_argument("--fraction", type=float, default=0.5, help="share of the maximum to send at (default 0.5)")
    p.add_argument("--rate", type=float, help="send at this many messages/s instead of a share of the maximum")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        sink = Sink(workdir / "sink")
        running = FastMTA().start(workdir / "fastmta", free_port(), relay_port=sink.port)
        try:
            maximum = None if args.rate else maximum_rate(running.port, sink, args.sessions, args.duration, args.size)
            rate = args.rate or maximum * args.fraction
            already = sink.report()["messages"]
            acks = workdir / "acks"
            done = subprocess.run(
                [sys.executable, str(BENCH / "source.py"), f"127.0.0.1:{running.port}", "--rate", f"{rate:.1f}",
                 "--sessions", str(max(10, int(rate / 20))), "--duration", str(args.duration), "--messages", "100000000",
                 "--size", str(args.size), "--from", SENDER, "--acks", str(acks), "--json", "--quiet"],
                capture_output=True, text=True, check=True,
            )
            source = json.loads(done.stdout)
            report = sink.drain(already + source["messages_accepted"])
            delivered = wait_for_log(workdir / "fastmta" / "var" / "delivery.log", report["messages"])
        finally:
            running.stop()
            sink.stop()
        waits, missing = ack_to_delivery(acks.read_text(), delivered)

    result = {
        "size": args.size,
        "maximum_messages_per_second": round(maximum, 1) if maximum else None,
        "offered_messages_per_second": round(rate, 1),
        "accepted": source["messages_accepted"],
        "reached_sink": report["messages"] - already,
        "not_delivered": missing,
        "ack_to_delivery_ms": summary(waits) if waits else None,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if maximum:
            print(f"maximum end to end: {maximum:,.0f} msg/s ({args.size} bytes)")
        print(f"sent at {rate:,.0f} msg/s: {result['accepted']:,} accepted, {result['reached_sink']:,} reached the sink, "
              f"{missing} without a delivery")
        if waits:
            w = result["ack_to_delivery_ms"]
            print(f"250 -> delivered: p50 {w['p50']:.2f} ms  p90 {w['p90']:.2f} ms  p99 {w['p99']:.2f} ms  max {w['max']:.2f} ms")
    return 0 if waits and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
