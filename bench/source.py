"""SMTP load generator: several uvloop processes of pipelined sessions, reporting rates and HDR latencies."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

import uvloop
from hdrh.histogram import HdrHistogram

from client import Load, Stats, run
from workload import parse_domains, parse_sizes

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
HIST_MAX_US = 3_600_000_000  # an hour: anything slower is a hang, not a latency
DISPLAY_SECONDS = 0.5


@dataclass
class Part:
    """What one worker process sends back."""

    accepted: int
    failed: int
    bytes: int
    connections: int
    errors: dict[str, int]
    histogram: bytes
    ids: list[bytes]
    acked_at: list[float]
    first_start: float
    started_at: float
    last_done: float
    fatal: str | None


def parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def parse_auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError("expected user:password")
    return user, password


def positive(kind):
    def check(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text}")
        return value

    return check


def _typed(parse):
    def check(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return check


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="source.py",
        description="Send SMTP load to host:port and report messages/s, bytes/s and latency percentiles.",
    )
    p.add_argument("target", type=parse_target, help="host:port of the SMTP server")
    p.add_argument("--sessions", type=positive(int), default=50, help="concurrent SMTP sessions (default 50)")
    stop = p.add_argument_group("how long (default: --messages 10000)")
    stop.add_argument("--messages", type=positive(int), help="messages to send in all")
    stop.add_argument("--duration", type=positive(float), help="seconds to send for (with --messages: whichever first)")
    p.add_argument(
        "--per-connection", type=int, default=0, metavar="N",
        help="messages per connection; 1 = a new connection for each; 0 = keep connections (default)",
    )
    p.add_argument("--size", type=_typed(parse_sizes), default="1k", help="bytes, or a mix like 1k:70,10k:25,100k:5")
    p.add_argument("--rcpts", type=positive(int), default=1, help="recipients per message")
    p.add_argument("--domains", type=_typed(parse_domains), default="example.com",
                   help="recipient domains, weighted: example.com:80,example.org:20")
    p.add_argument("--rate", type=positive(float), help="open loop: start this many messages/s (default: closed loop)")
    p.add_argument("--starttls", action="store_true", help="STARTTLS before sending (certificate not checked)")
    p.add_argument("--auth", type=parse_auth, metavar="USER:PASS", help="AUTH PLAIN with these credentials")
    p.add_argument("--bdat", action="store_true", help="send with BDAT (CHUNKING) instead of DATA")
    p.add_argument("--from", dest="sender", default="bench@source.example", help="envelope sender")
    p.add_argument("--helo", default="source.example", help="EHLO name")
    p.add_argument("--timeout", type=positive(float), default=30.0, help="seconds to wait for any reply")
    p.add_argument("--processes", type=positive(int), default=max(1, (os.cpu_count() or 2) // 2),
                   help="client processes (default: half the CPUs, leaving the rest to the server)")
    p.add_argument("--ids", metavar="FILE", help="write each accepted queue id to FILE, one a line")
    p.add_argument("--acks", metavar="FILE",
                   help="write 'ID TIME' for each accepted message to FILE: its queue id and the wall-clock time of its 250")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    p.add_argument("--seed", type=int, default=0, help="seed for the size and domain order")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.per_connection < 0:
        p.error("--per-connection must be 0 or more")
    if args.messages is None and args.duration is None:
        args.messages = 10_000
    if args.messages is not None and args.messages < args.processes:
        args.processes = args.messages
    if args.sessions < args.processes:
        args.processes = args.sessions
    return args


def split(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split as evenly as integers allow."""
    return total // parts + (1 if index < total % parts else 0)


def loads(args: argparse.Namespace) -> list[Load]:
    """The user's totals divided among the worker processes."""
    host, port = args.target
    n = args.processes
    base = Load(
        host=host, port=port, sessions=0, messages=None, duration=args.duration,
        per_connection=args.per_connection, sizes=args.size, domains=args.domains, rcpts=args.rcpts,
        starttls=args.starttls, auth=args.auth, bdat=args.bdat, sender=args.sender, helo=args.helo,
        timeout=args.timeout, keep_ids=bool(args.ids or args.acks),
    )
    return [
        replace(
            base,
            sessions=split(args.sessions, n, i),
            messages=None if args.messages is None else split(args.messages, n, i),
            rate=None if args.rate is None else args.rate / n,
            seed=args.seed + i,
        )
        for i in range(n)
    ]


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIST_MAX_US, 3)


def histogram_of(latencies) -> HdrHistogram:
    hist = new_histogram()
    for value in latencies:
        hist.record_value(min(max(value, 1), HIST_MAX_US))
    return hist


def pack(stats: Stats, fatal: str | None) -> Part:
    return Part(
        accepted=stats.accepted, failed=stats.failed, bytes=stats.bytes, connections=stats.connections,
        errors=dict(stats.errors),
        histogram=histogram_of(stats.latencies).encode(), ids=stats.ids, acked_at=list(stats.acked_at),
        first_start=stats.first_start, started_at=stats.started_at, last_done=stats.last_done, fatal=fatal,
    )


def worker(load: Load, progress, slot: int, go, conn: Connection) -> None:
    """A client process: wait for the common start, send its share, send back its counts."""
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    go.wait()
    stats, fatal = asyncio.run(run(load, progress, slot))
    conn.send(pack(stats, fatal))
    conn.close()


def merge(parts: list[Part]) -> dict:
    """One report from the processes' parts; the rate's window runs from the first start to the last 250."""
    hist = new_histogram()
    errors: dict[str, int] = {}
    for part in parts:
        hist.decode_and_add(part.histogram)
        for code, count in part.errors.items():
            errors[code] = errors.get(code, 0) + count
    accepted = sum(p.accepted for p in parts)
    done = [p.last_done for p in parts if p.accepted]
    seconds = max(done) - min(p.first_start for p in parts) if done else 0.0
    total_bytes = sum(p.bytes for p in parts)
    return {
        "messages_accepted": accepted,
        "messages_failed": sum(p.failed for p in parts),
        "connections": sum(p.connections for p in parts),
        "seconds": round(seconds, 4),
        "started_at": min(p.started_at for p in parts),
        "messages_per_second": round(accepted / seconds, 1) if seconds else 0.0,
        "bytes_per_second": round(total_bytes / seconds, 1) if seconds else 0.0,
        "bytes_accepted": total_bytes,
        "latency_ms": latency_ms(hist),
        "errors": dict(sorted(errors.items())),
        "fatal": next((p.fatal for p in parts if p.fatal), None),
    }


def latency_ms(hist: HdrHistogram) -> dict[str, float | None]:
    if not hist.get_total_count():
        return {name: None for name in [*PERCENTILES, "mean", "max"]}
    values = {name: hist.get_value_at_percentile(p) / 1000 for name, p in PERCENTILES.items()}
    values["mean"] = hist.get_mean_value() / 1000
    values["max"] = hist.get_max_value() / 1000
    return {name: round(v, 3) for name, v in values.items()}


def run_processes(args: argparse.Namespace) -> list[Part]:
    """Fork the workers, start them together, show progress, collect their parts."""
    context = multiprocessing.get_context("fork")
    plan = loads(args)
    progress = context.RawArray("q", 3 * len(plan))
    go = context.Event()
    pipes, procs = [], []
    for slot, load in enumerate(plan):
        receiver, sender = context.Pipe(duplex=False)
        proc = context.Process(target=worker, args=(load, progress, slot, go, sender), daemon=True)
        proc.start()
        sender.close()
        pipes.append(receiver)
        procs.append(proc)
    go.set()
    show = sys.stderr.isatty() and not args.quiet
    parts = collect(pipes, progress, show)
    for proc in procs:
        proc.join()
    return parts


def collect(pipes: list[Connection], progress, show: bool) -> list[Part]:
    parts: dict[int, Part] = {}
    start = time.monotonic()
    while len(parts) < len(pipes):
        for i, pipe in enumerate(pipes):
            if i not in parts and pipe.poll(DISPLAY_SECONDS / len(pipes)):
                try:
                    parts[i] = pipe.recv()
                except EOFError:
                    raise SystemExit(f"source.py: worker {i} died") from None
        if show:
            sys.stderr.write("\r" + progress_line(progress, time.monotonic() - start))
            sys.stderr.flush()
    if show:
        sys.stderr.write("\n")
    return [parts[i] for i in range(len(pipes))]


def progress_line(progress, elapsed: float) -> str:
    accepted = sum(progress[0::3])
    failed = sum(progress[1::3])
    rate = accepted / elapsed if elapsed > 0 else 0.0
    return f"{elapsed:7.1f} s  {accepted:>10,} accepted  {failed:>7,} failed  {rate:>9,.0f} msg/s "


def text_report(args: argparse.Namespace, result: dict) -> str:
    lat = result["latency_ms"]
    mode = f"open loop at {args.rate:,.0f} msg/s" if args.rate else "closed loop"
    reuse = "new connection per message" if args.per_connection == 1 else (
        f"{args.per_connection} messages per connection" if args.per_connection else "connections reused")
    errors = ", ".join(f"{k}: {v:,}" for k, v in result["errors"].items()) or "none"
    lines = [
        f"target     {args.target[0]}:{args.target[1]}  {args.sessions} sessions in {args.processes} processes, "
        f"{mode}, {reuse}",
        f"messages   {result['messages_accepted']:,} accepted, {result['messages_failed']:,} failed, "
        f"in {result['seconds']:.2f} s over {result['connections']:,} connections",
        f"rate       {result['messages_per_second']:,.0f} msg/s   {result['bytes_per_second'] / 1e6:,.2f} MB/s",
        "latency    " + "  ".join(f"{k} {_ms(lat[k])}" for k in [*PERCENTILES, "max"]) + "   (start to 250 after data)",
        f"errors     {errors}",
    ]
    if result["fatal"]:
        lines.append(f"stopped    {result['fatal']}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f} ms" if value < 100 else f"{value:,.0f} ms"


def write_ids(path: str, parts: list[Part], with_times: bool = False) -> int:
    count = 0
    with open(path, "wb") as out:
        for part in parts:
            for queue_id, acked_at in zip(part.ids, part.acked_at):
                out.write(queue_id + (f" {acked_at:.6f}\n".encode() if with_times else b"\n"))
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = run_processes(args)
    result = merge(parts)
    result["options"] = options_record(args)
    if args.ids:
        result["queue_ids"] = write_ids(args.ids, parts)
        result["queue_ids_file"] = args.ids
    if args.acks:
        result["queue_ids"] = write_ids(args.acks, parts, with_times=True)
        result["acks_file"] = args.acks
    print(json.dumps(result, indent=2) if args.json else text_report(args, result))
    if result["fatal"]:
        return 2
    return 0 if result["messages_accepted"] else 1


def options_record(args: argparse.Namespace) -> dict:
    record = {k: v for k, v in vars(args).items() if k not in ("auth", "json", "quiet")}
    record["target"] = f"{args.target[0]}:{args.target[1]}"
    record["auth"] = bool(args.auth)
    return json.loads(json.dumps(record, default=str))


if __name__ == "__main__":
    sys.exit(main())
