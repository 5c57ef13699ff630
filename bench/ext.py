"""Micro-benchmark of the compiled hot path against its pure-Python twins: MB/s (10^6 bytes) on realistic SMTP input.

    python bench/ext.py [--seconds N] [--json]
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fastmta._ext import data_ref, headers_ref, lines_ref  # noqa: E402 (needs the repo on sys.path)

KIB = 1024
MAX_LINE = 2048  # smtp.max_line_length's default
MAX_MESSAGE = 25 << 20  # smtp.max_message_size's default
ROUND_SECONDS = 0.02  # long enough to drown the timer's overhead, short enough to give many rounds to take the median of


@dataclass(frozen=True)
class Implementation:
    """One side of the comparison: the three hot-path entry points from the compiled modules or from the twins."""

    split_lines: Callable[[bytes, int, int], tuple[list[bytes | None], list[int]]]
    scanner_class: type[data_ref.DataScanner]
    parse_headers: Callable[[bytes], tuple[dict[str, str], int]]

    @classmethod
    def from_modules(cls, lines: ModuleType, data: ModuleType, headers: ModuleType) -> Implementation:
        return cls(lines.split_lines, data.DataScanner, headers.parse_headers)


@dataclass(frozen=True)
class Case:
    """One measured workload: `run` processes `size` bytes of input with the given implementation."""

    function: str
    input: str
    size: int
    run: Callable[[Implementation], object]


@dataclass(frozen=True)
class Row:
    function: str
    input: str
    compiled_mb_s: float
    twin_mb_s: float
    speedup: float


HEADER_BLOCK = (
    b"Return-Path: <bounces+8f14e45f@example.org>\r\n"
    b"Received: from mail.example.org (mail.example.org [192.0.2.10])\r\n"
    b"\tby mx.example.com (fastmta) with ESMTPS id 01HZX4Q8R2\r\n"
    b"\tfor <alice@example.com>; Sun, 22 Nov 2026 10:00:00 +0000\r\n"
    b"Received: from [10.0.0.5] (helo=laptop)\r\n"
    b"\tby mail.example.org with ESMTPSA; Sun, 22 Nov 2026 09:59:58 +0000\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=sel1;\r\n"
    b" h=from:to:subject:date:message-id; bh=frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=;\r\n"
    b" b=Vx1RbK3mMv2TW3Uo0e6sYQkP2k8pL1b4d2c3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0\r\n"
    b"Authentication-Results: mx.example.com; spf=pass smtp.mailfrom=example.org;\r\n"
    b" dkim=pass header.d=example.org\r\n"
    b"MIME-Version: 1.0\r\n"
    b"From: Example Sender <sender@example.org>\r\n"
    b"To: Alice <alice@example.com>, Bob <bob@example.com>,\r\n"
    b" Carol <carol@example.com>\r\n"
    b"Subject: =?utf-8?q?Quarterly_report_=E2=80=93_please_review?=\r\n"
    b" before Friday\r\n"
    b"Date: Sun, 22 Nov 2026 09:59:57 +0000\r\n"
    b"Message-ID: <20261122095957.4F2A1@mail.example.org>\r\n"
    b"X-Workspace-Id: ws-42\r\n"
    b"X-Campaign-Id: spring-sale-2026\r\n"
    b"X-User-Id: 8f14e45f-ceea-467f-a0e6-0c1b2d3e4f5a\r\n"
    b"X-Priority: 3\r\n"
    b"X-Mailer: Example Mailer 9.1\r\n"
    b"Reply-To: Finance <finance@example.org>\r\n"
    b"List-Unsubscribe: <mailto:unsubscribe@example.org>,\r\n"
    b" <https://example.org/unsubscribe?id=8f14e45f>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
)

BODY_LINES = [
    b"Hello team, the quarterly figures are attached below for your review.",
    b"Revenue grew in every region; the details follow line by line.",
    b".Net services and .io domains are listed separately in the appendix.",  # starts with a dot: stuffed
    b"Please reply before Friday so that the board pack can be finalised.",
    b"...and thanks again to everyone who helped pull the numbers together.",  # stuffed as well
    b"Regards, the finance team",
]


MESSAGE_HEADER = (
    b"From: Example Sender <sender@example.org>\r\n"
    b"To: Alice <alice@example.com>\r\n"
    b"Subject: Quarterly report\r\n"
    b"Date: Sun, 22 Nov 2026 09:59:57 +0000\r\n"
    b"Message-ID: <20261122095957.4F2A1@mail.example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
)


def message_stream(size: int) -> bytes:
    """A DATA stream of about `size` bytes as a client sends it: headers, dot-stuffed body lines, ".\\r\\n"."""
    stream = bytearray(MESSAGE_HEADER)
    terminator = b".\r\n"
    lines = itertools.cycle((b"." + text if text.startswith(b".") else text) + b"\r\n" for text in BODY_LINES)
    line = next(lines)
    while len(stream) + len(line) + len(terminator) <= size:
        stream += line
        line = next(lines)
    return bytes(stream + terminator)


def command_buffer(recipients: int) -> bytes:
    """One pipelined transaction as a client writes it after EHLO: MAIL, the RCPTs and DATA in one read."""
    commands = [b"MAIL FROM:<sender@example.org> SIZE=65536 BODY=8BITMIME"]
    commands += [b"RCPT TO:<user%d@example.com> NOTIFY=FAILURE" % number for number in range(recipients)]
    commands.append(b"DATA")
    return b"\r\n".join(commands) + b"\r\n"


def scan_case(message_size: int, read_size: int) -> Case:
    stream = message_stream(message_size)
    reads = [stream[offset : offset + read_size] for offset in range(0, len(stream), read_size)]

    def run(implementation: Implementation) -> object:
        scanner = implementation.scanner_class(MAX_MESSAGE)
        for read in reads:
            end = scanner.feed(read)
        return end, scanner.body

    label = f"{message_size // KIB} KiB message, {read_size // KIB} KiB reads"
    return Case("DataScanner.feed", label, len(stream), run)


def header_case() -> Case:
    message = HEADER_BLOCK + b"Hello team,\r\n"
    fields = sum(1 for line in HEADER_BLOCK.split(b"\r\n") if line[:1] not in (b"", b" ", b"\t"))
    return Case("parse_headers", f"{fields} fields with folding", len(message), lambda implementation: implementation.parse_headers(message))


def command_case(recipients: int) -> Case:
    buffer = command_buffer(recipients)
    return Case(
        "split_lines",
        f"MAIL, {recipients} RCPT, DATA pipelined",
        len(buffer),
        lambda implementation: implementation.split_lines(buffer, 0, MAX_LINE),
    )


def cases() -> list[Case]:
    scans = [scan_case(message, read) for message in (1 * KIB, 64 * KIB) for read in (64 * KIB, 4 * KIB)]
    return [*scans, header_case(), command_case(10)]


def throughput(case: Case, implementation: Implementation, seconds: float) -> float:
    """MB/s: the median over rounds of repeated calls, as many rounds as fit in `seconds` (at least three)."""
    calls = 1
    while True:  # double the calls per round until a round lasts ROUND_SECONDS
        started = time.perf_counter()
        for _ in range(calls):
            case.run(implementation)
        if time.perf_counter() - started >= ROUND_SECONDS:
            break
        calls *= 2
    rates = []
    deadline = time.perf_counter() + seconds
    while len(rates) < 3 or time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(calls):
            case.run(implementation)
        rates.append(case.size * calls / (time.perf_counter() - started) / 1e6)
    return statistics.median(rates)


def load_compiled() -> Implementation:
    try:
        lines, data, headers = (importlib.import_module(f"fastmta._ext.{name}") for name in ("lines", "data", "headers"))
    except ImportError as error:
        raise SystemExit(f"the compiled modules are not built ({error}); run `make dev` first") from None
    return Implementation.from_modules(lines, data, headers)


def measure(compiled: Implementation, twin: Implementation, seconds: float) -> list[Row]:
    rows = []
    for case in cases():
        # Timing two implementations that disagree would compare nothing.
        if case.run(compiled) != case.run(twin):
            raise SystemExit(f"{case.function} ({case.input}): the compiled module and its twin disagree")
        compiled_rate = throughput(case, compiled, seconds)
        twin_rate = throughput(case, twin, seconds)
        rows.append(Row(case.function, case.input, compiled_rate, twin_rate, compiled_rate / twin_rate))
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| function | input | compiled MB/s | twin MB/s | speed-up |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {row.function} | {row.input} | {row.compiled_mb_s:,.1f} | {row.twin_mb_s:,.1f} | {row.speedup:.1f}x |" for row in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent measuring each function on each side (default 1)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a markdown table")
    args = parser.parse_args()
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    rows = measure(load_compiled(), Implementation.from_modules(lines_ref, data_ref, headers_ref), args.seconds)
    print(json.dumps([asdict(row) for row in rows], indent=2) if args.json else markdown(rows))


if __name__ == "__main__":
    main()
