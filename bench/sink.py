"""A fast SMTP sink, the next hop of relay benchmarks: accepts mail (or injects faults), counts it, reports.

In the spirit of Postfix's `smtp-sink -f/-r/-w` and KumoMTA's smart sink: every command can be answered
with a 4xx/5xx, a delay, or a dropped connection, each with its own probability. Nothing is fsync'd; with
`--capture DIR` each accepted message is written there as a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

COMMANDS = ("connect", "helo", "mail", "rcpt", "data", "dot", "bdat", "rset", "quit")
VERBS = {b"EHLO": "helo", b"HELO": "helo", b"MAIL": "mail", b"RCPT": "rcpt", b"DATA": "data",
         b"BDAT": "bdat", b"RSET": "rset", b"QUIT": "quit", b"NOOP": "noop"}
DISCONNECT = "disconnect"
SHORTHAND = {"4xx": "451", "5xx": "554"}
END_OF_DATA = b"\r\n.\r\n"
REPORT_SECONDS = 0.5
MAX_LINE = 4096

OK = b"250 2.0.0 Ok\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
BYE = b"221 2.0.0 Bye\r\n"
NO_RECIPIENTS = b"554 5.5.1 No valid recipients\r\n"
BAD_SEQUENCE = b"503 5.5.1 Bad sequence of commands\r\n"
UNKNOWN = b"502 5.5.2 Command not recognized\r\n"
TOO_LONG = b"500 5.5.0 Line too long\r\n"


@dataclass(frozen=True)
class Fault:
    """Answer `command` with `reply` (a code, or DISCONNECT) with this probability."""

    command: str
    reply: str
    probability: float


@dataclass(frozen=True)
class Delay:
    """Wait `seconds` before answering `command`, with this probability."""

    command: str
    seconds: float
    probability: float


def parse_probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"probability must be within 0..1, got {text}")
    return value


def parse_command(text: str) -> str:
    command = text.lower()
    if command not in COMMANDS:
        raise ValueError(f"unknown command {text!r}; one of {', '.join(COMMANDS)}")
    return command


def parse_fault(text: str) -> Fault:
    """`rcpt:451:0.05`, `dot:5xx:0.01` or `mail:disconnect:0.001`."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"expected COMMAND:REPLY:PROBABILITY, got {text!r}")
    command, reply, probability = parts
    reply = SHORTHAND.get(reply.lower(), reply.lower())
    if reply != DISCONNECT and not (len(reply) == 3 and reply.isdigit() and reply[0] in "45"):
        raise ValueError(f"reply must be a 4xx/5xx code or 'disconnect', got {parts[1]!r}")
    return Fault(parse_command(command), reply, parse_probability(probability))


def parse_delay(text: str) -> Delay:
    """`dot:0.05` (always) or `dot:0.05:0.1` (one answer in ten waits 50 ms)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"expected COMMAND:SECONDS[:PROBABILITY], got {text!r}")
    seconds = float(parts[1])
    if seconds < 0:
        raise ValueError(f"delay must not be negative, got {parts[1]}")
    return Delay(parse_command(parts[0]), seconds, parse_probability(parts[2]) if len(parts) == 3 else 1.0)


class FaultPlan:
    """Draws, per command answered, whether to inject a fault and how long to wait."""

    def __init__(self, faults: list[Fault], delays: list[Delay], seed: int | None = None) -> None:
        self.faults: dict[str, list[Fault]] = {}
        for fault in faults:
            self.faults.setdefault(fault.command, []).append(fault)
        for command, listed in self.faults.items():
            if sum(f.probability for f in listed) > 1.0 + 1e-9:
                raise ValueError(f"fault probabilities for {command!r} add up to more than 1")
        self.delays = {d.command: d for d in delays}
        self.rng = random.Random(seed)

    def fault(self, command: str) -> Fault | None:
        """At most one fault per answer: one draw, walked along the command's cumulative probabilities."""
        listed = self.faults.get(command)
        if not listed:
            return None
        draw = self.rng.random()
        for fault in listed:
            if draw < fault.probability:
                return fault
            draw -= fault.probability
        return None

    def delay(self, command: str) -> float:
        delay = self.delays.get(command)
        if delay is None or self.rng.random() >= delay.probability:
            return 0.0
        return delay.seconds


def fault_reply(code: str) -> bytes:
    return f"{code} {code[0]}.3.0 sink: injected fault\r\n".encode()


@dataclass
class Tally:
    """What arrived; times are wall-clock (time.time()) so that other processes can line them up."""

    connections: int = 0
    messages: int = 0
    bytes: int = 0
    recipients: int = 0
    connections_by_ip: Counter[str] = field(default_factory=Counter)
    messages_by_ip: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.time)
    first_message_at: float | None = None
    last_message_at: float | None = None

    def accepted(self, ip: str, size: int, recipients: int) -> None:
        now = time.time()
        self.messages += 1
        self.bytes += size
        self.recipients += recipients
        self.messages_by_ip[ip] += 1
        if self.first_message_at is None:
            self.first_message_at = now
        self.last_message_at = now

    def report(self) -> dict:
        window = (self.last_message_at or 0.0) - (self.first_message_at or 0.0)
        return {
            "connections": self.connections,
            "messages": self.messages,
            "bytes": self.bytes,
            "recipients": self.recipients,
            "messages_per_second": round(self.messages / window, 1) if window > 0 else None,
            "by_ip": {ip: {"connections": n, "messages": self.messages_by_ip[ip]}
                      for ip, n in sorted(self.connections_by_ip.items())},
            "replies": dict(sorted(self.replies.items())),
            "faults": dict(sorted(self.faults.items())),
            "started_at": self.started_at,
            "first_message_at": self.first_message_at,
            "last_message_at": self.last_message_at,
        }


class Capture:
    """Writes each accepted message to DIR/ID.eml, its envelope in two X-Sink- header lines."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory

    def write(self, queue_id: str, sender: bytes, recipients: list[bytes], content: bytes) -> None:
        envelope = b"X-Sink-Mail-From: " + sender + b"\r\nX-Sink-Rcpt-To: " + b", ".join(recipients) + b"\r\n"
        (self.directory / f"{queue_id}.eml").write_bytes(envelope + content)


def unstuff(data: bytes) -> bytes:
    """DATA content as the sender meant it: leading dots removed (RFC 5321 4.5.2)."""
    return (b"\r\n" + data).replace(b"\r\n..", b"\r\n.")[2:]


@dataclass
class Sink:
    """What all connections share."""

    plan: FaultPlan
    tally: Tally
    capture: Capture | None
    hostname: str = "sink.invalid"
    next_id: int = 0

    def queue_id(self) -> str:
        self.next_id += 1
        return f"S{os.getpid():x}{self.next_id:08X}"


class SinkSession(asyncio.Protocol):
    """One SMTP connection. Pipelined commands are answered together in one write."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.tally = sink.tally
        self.plan = sink.plan
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.ip = "?"
        self.buf = b""
        self.out: list[bytes] = []
        self.paused = False
        self.closed = False
        self.sender: bytes | None = None
        self.recipients: list[bytes] = []
        self.reading: Callable[[], bool] = self.read_command  # returns False when it needs more bytes
        self.data_size = 0  # DATA bytes seen so far, or BDAT bytes still to come
        self.data_tail = b"\r\n"  # the end-of-data marker may straddle reads; DATA's own CRLF starts it
        self.chunks: list[bytes] = []  # kept only with --capture
        self.in_bdat = False  # a BDAT transaction has begun and not yet ended with LAST
        self.remaining = 0  # bytes of the current BDAT chunk still to come
        self.last_chunk = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else "?"
        self.tally.connections += 1
        self.tally.connections_by_ip[self.ip] += 1
        if self.answer("connect", f"220 {self.sink.hostname} ESMTP bench sink\r\n".encode()):
            self.flush()
        elif not self.closed:  # refused at connect: say why, then hang up
            self.close()

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        self.process()

    def process(self) -> None:
        while not self.paused and not self.closed and self.reading():
            pass
        if not self.closed:
            self.flush()

    def flush(self) -> None:
        if self.out:
            self.transport.writelines(self.out)
            self.out = []

    def close(self) -> None:
        self.flush()
        self.closed = True
        self.transport.close()

    def answer(self, command: str, reply: bytes) -> bool:
        """Queue `reply`, or the fault drawn for `command`; True if the command succeeded as asked."""
        fault = self.plan.fault(command)
        if fault is not None:
            self.tally.faults[f"{command}:{fault.reply}"] += 1
            if fault.reply == DISCONNECT:
                self.close()
                return False
            reply = fault_reply(fault.reply)
        delay = self.plan.delay(command)
        if delay:
            self.tally.faults[f"{command}:delay"] += 1
            self.flush()
            self.paused = True
            asyncio.get_running_loop().call_later(delay, self.resume, reply)
        else:
            self.say(reply)
            if reply.startswith(b"421"):
                self.close()
        return fault is None

    def say(self, reply: bytes) -> None:
        self.tally.replies[reply[:3].decode()] += 1
        self.out.append(reply)

    def resume(self, reply: bytes) -> None:
        """A delayed reply goes out; a delayed 421 closes the connection only then."""
        if self.closed or self.transport.is_closing():
            return
        self.paused = False
        self.say(reply)
        if reply.startswith(b"421"):
            self.close()
            return
        self.process()

    # reading modes: each consumes from self.buf and returns whether it made progress

    def read_command(self) -> bool:
        end = self.buf.find(b"\r\n")
        if end < 0:
            if len(self.buf) > MAX_LINE:
                self.buf = b""
                self.say(TOO_LONG)
            return False
        line, self.buf = self.buf[:end], self.buf[end + 2 :]
        self.command(line)
        return True

    def command(self, line: bytes) -> None:
        verb = VERBS.get(line[:4].upper())
        if verb == "helo":
            self.reset_transaction()
            self.answer("helo", self.ehlo_reply(line))
        elif verb == "mail":
            if self.answer("mail", OK):
                self.reset_transaction()
                self.sender = line[10:].strip()
        elif verb == "rcpt":
            if self.sender is None:
                self.say(BAD_SEQUENCE)
            elif self.answer("rcpt", OK):
                self.recipients.append(line[8:].strip())
        elif verb == "data":
            if not self.recipients:
                self.say(NO_RECIPIENTS)
            elif self.answer("data", GO_AHEAD):
                self.start_content(self.read_data)
        elif verb == "bdat":
            self.start_bdat(line)
        elif verb == "rset":
            if self.answer("rset", OK):
                self.reset_transaction()
        elif verb == "noop":
            self.say(OK)
        elif verb == "quit":
            if self.answer("quit", BYE):
                self.close()
        else:
            self.say(UNKNOWN)

    def ehlo_reply(self, line: bytes) -> bytes:
        if line[:4].upper() == b"HELO":
            return f"250 {self.sink.hostname}\r\n".encode()
        return (
            f"250-{self.sink.hostname}\r\n250-PIPELINING\r\n250-SIZE 1073741824\r\n250-8BITMIME\r\n"
            "250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
        ).encode()

    def reset_transaction(self) -> None:
        self.sender = None
        self.recipients = []
        self.chunks = []
        self.data_size = 0
        self.in_bdat = False

    def start_content(self, reading: Callable[[], bool]) -> None:
        self.reading = reading
        self.data_tail = b"\r\n"
        self.chunks = []

    def read_data(self) -> bool:
        """Consume DATA content up to the end marker; no line parsing, just a search."""
        if not self.buf:
            return False
        window = self.data_tail + self.buf
        found = window.find(END_OF_DATA)
        if found < 0:
            self.keep(self.buf)
            self.data_size += len(self.buf)
            self.data_tail = window[-4:]
            self.buf = b""
            return False
        end = found + len(END_OF_DATA) - len(self.data_tail)  # just past ".\r\n" in self.buf
        content_end = end - 3
        self.keep(self.buf[:content_end])
        self.data_size += content_end
        self.buf = self.buf[end:]
        self.reading = self.read_command
        self.delivered(stuffed=True)
        return True

    def start_bdat(self, line: bytes) -> None:
        words = line.split()
        if len(words) not in (2, 3) or not words[1].isdigit() or (len(words) == 3 and words[2].upper() != b"LAST"):
            self.say(b"501 5.5.4 Syntax: BDAT size [LAST]\r\n")
            return
        if not self.in_bdat:
            self.chunks = []
            self.data_size = 0
            self.in_bdat = True
        self.remaining = int(words[1])
        self.last_chunk = len(words) == 3
        self.reading = self.read_bdat

    def read_bdat(self) -> bool:
        take = min(self.remaining, len(self.buf))
        if take:
            self.keep(self.buf[:take])
            self.buf = self.buf[take:]
            self.remaining -= take
            self.data_size += take
        if self.remaining:
            return False
        self.reading = self.read_command
        if not self.last_chunk:
            self.answer("bdat", OK)
        elif not self.recipients:
            self.say(NO_RECIPIENTS)
            self.reset_transaction()
        else:
            self.delivered(stuffed=False)
        return True

    def keep(self, data: bytes) -> None:
        if self.sink.capture is not None:
            self.chunks.append(data)

    def delivered(self, stuffed: bool) -> None:
        queue_id = self.sink.queue_id()
        if self.answer("dot", f"250 2.0.0 Ok: queued as {queue_id}\r\n".encode()):
            self.tally.accepted(self.ip, self.data_size, len(self.recipients))
            if self.sink.capture is not None and self.sender is not None:
                content = b"".join(self.chunks)
                self.sink.capture.write(queue_id, self.sender, self.recipients, unstuff(content) if stuffed else content)
        self.reset_transaction()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sink.py",
        description="Accept SMTP mail on host:port, optionally injecting faults; report what arrived.",
        epilog="Commands for --fault/--delay: " + ", ".join(COMMANDS) + " (dot = the end of DATA or BDAT LAST).",
    )
    p.add_argument("listen", type=_argument(parse_address), help="host:port to listen on (port 0: any free port)")
    p.add_argument("--fault", type=_argument(parse_fault), action="append", default=[], metavar="CMD:REPLY:P",
                   help="answer CMD with REPLY (a 4xx/5xx code, 4xx, 5xx, or disconnect) with probability P; repeatable")
    p.add_argument("--delay", type=_argument(parse_delay), action="append", default=[], metavar="CMD:SECONDS[:P]",
                   help="wait SECONDS before answering CMD (with probability P, default 1); repeatable")
    p.add_argument("--capture", type=Path, metavar="DIR", help="write each accepted message to DIR")
    p.add_argument("--report", type=Path, metavar="FILE",
                   help=f"keep FILE updated with the JSON report (every {REPORT_SECONDS} s and at exit)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: at SIGTERM or SIGINT)")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")
    p.add_argument("--seed", type=int, help="seed for the fault draws, for a repeatable run")
    p.add_argument("--hostname", default="sink.invalid", help="name in the greeting and EHLO reply")
    return p


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _argument(parse: Callable[[str], object]) -> Callable[[str], object]:
    """Turn a parser's ValueError into argparse's usage error."""

    def check(text: str) -> object:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    check.__name__ = parse.__name__
    return check


def write_report(path: Path, report: dict) -> None:
    """Atomically, so that a reader polling the file never sees half of it."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(report, indent=2))
    temporary.replace(path)


def text_report(report: dict) -> str:
    ips = ", ".join(f"{ip}: {v['messages']:,} msgs / {v['connections']:,} conns" for ip, v in report["by_ip"].items())
    faults = ", ".join(f"{k}: {v:,}" for k, v in report["faults"].items()) or "none"
    replies = ", ".join(f"{k}: {v:,}" for k, v in report["replies"].items()) or "none"
    rate = report["messages_per_second"]
    return "\n".join([
        f"messages   {report['messages']:,} accepted, {report['bytes']:,} bytes, {report['recipients']:,} recipients"
        + (f", {rate:,.0f} msg/s" if rate else ""),
        f"conns      {report['connections']:,} ({ips or 'none'})",
        f"replies    {replies}",
        f"faults     {faults}",
    ])


async def serve(args: argparse.Namespace) -> Tally:
    loop = asyncio.get_running_loop()
    sink = Sink(FaultPlan(args.fault, args.delay, args.seed), Tally(),
                Capture(args.capture) if args.capture else None, args.hostname)
    host, port = args.listen
    server = await loop.create_server(lambda: SinkSession(sink), host, port, backlog=1024, reuse_address=True)
    bound = server.sockets[0].getsockname()
    print(f"sink listening on {bound[0]}:{bound[1]}", flush=True)
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    if args.duration:
        loop.call_later(args.duration, lambda: stop.done() or stop.set_result(None))
    if args.report:
        keep_reporting(loop, sink.tally, args.report)
    await stop
    server.close()
    return sink.tally


def keep_reporting(loop: asyncio.AbstractEventLoop, tally: Tally, path: Path) -> None:
    write_report(path, tally.report())
    loop.call_later(REPORT_SECONDS, keep_reporting, loop, tally, path)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        FaultPlan(args.fault, args.delay)
    except ValueError as e:
        parser().error(str(e))
    tally = uvloop.run(serve(args))
    report = tally.report()
    if args.report:
        write_report(args.report, report)
    print(json.dumps(report, indent=2) if args.json else text_report(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
