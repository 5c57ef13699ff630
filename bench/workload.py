"""What source.py sends: size and domain mixes parsed from the command line, pre-built into SMTP transactions."""

from __future__ import annotations

import random
from dataclasses import dataclass

UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 * 1024}
MIN_SIZE = 256
LINE = 78  # body line length without CRLF, as mail clients wrap text
POOL_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Step:
    """Bytes written at once and how many replies the server owes for them."""

    chunks: tuple[bytes, ...]
    replies: int


@dataclass(frozen=True, slots=True)
class Transaction:
    """One message ready to send: its steps, in order, and its size on the wire."""

    steps: tuple[Step, ...]
    size: int


def parse_size(text: str) -> int:
    """A byte count such as `1024`, `1k`, `100K`, `2m` (k and m are binary: KiB, MiB)."""
    text = text.strip().lower()
    unit = text[-1:] if text[-1:] in UNITS else ""
    number = text[: len(text) - len(unit)]
    if not number.isdigit():
        raise ValueError(f"not a size: {text!r}")
    size = int(number) * UNITS[unit]
    if size < MIN_SIZE:
        raise ValueError(f"size {size} is below the minimum of {MIN_SIZE} bytes")
    return size


def parse_weighted(text: str, parse_item=str) -> list[tuple[object, float]]:
    """`a:70,b:30` -> [(a, 0.7), (b, 0.3)]; an item without weight weighs 1."""
    pairs = []
    for part in text.split(","):
        item, _, weight = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "1")
        value = float(weight)
        if value <= 0:
            raise ValueError(f"weight must be positive in {part!r}")
        pairs.append((parse_item(item), value))
    if not pairs or any(item in ("", None) for item, _ in pairs):
        raise ValueError(f"empty item in {text!r}")
    total = sum(weight for _, weight in pairs)
    return [(item, weight / total) for item, weight in pairs]


def parse_sizes(text: str) -> list[tuple[int, float]]:
    """A fixed size (`1k`) or a distribution (`1k:70,10k:25,100k:5`) as (bytes, share) pairs."""
    return parse_weighted(text, parse_size)  # type: ignore[return-value]


def parse_domains(text: str) -> list[tuple[str, float]]:
    """A recipient-domain mix such as `example.com:80,example.org:20`."""
    return parse_weighted(text)  # type: ignore[return-value]


def apportion(shares: list[tuple[object, float]], total: int) -> list[object]:
    """Exactly `total` items in the given shares (largest remainder), so a pool matches its mix."""
    exact = [share * total for _, share in shares]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return [item for (item, _), count in zip(shares, counts) for _ in range(count)]


def build_message(size: int, sender: str) -> bytes:
    """A plain-text message of exactly `size` bytes (CRLF lines, none starting with a dot)."""
    for pad in ("", " "):
        header = (
            f"From: <{sender}>\r\nTo: undisclosed-recipients:;\r\nSubject: fastmta bench {size} bytes{pad}\r\n"
            f"Date: Sun, 22 Nov 2026 00:00:00 +0000\r\nMessage-ID: <bench.{size}@source.invalid>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        ).encode()
        full, rest = divmod(size - len(header), LINE + 2)
        if rest != 1:  # a last line needs room for its CRLF; one more header byte avoids a 1-byte rest
            break
    last = b"x" * (rest - 2) + b"\r\n" if rest else b""
    return header + (b"x" * LINE + b"\r\n") * full + last


def envelope(sender: str, rcpts: list[str]) -> list[bytes]:
    """MAIL and RCPT command lines."""
    return [f"MAIL FROM:<{sender}>\r\n".encode()] + [f"RCPT TO:<{r}>\r\n".encode() for r in rcpts]


def transaction(body: bytes, data: bytes, commands: list[bytes], pipelining: bool, bdat: bool) -> Transaction:
    """The steps of one message: pipelined groups when the server allows, else one command per step.

    `data` is `body` with the end-of-data dot, built once per size so that every step shares it.
    """
    last = (f"BDAT {len(body)} LAST\r\n".encode(), body) if bdat else (data,)
    if pipelining and bdat:
        return Transaction((Step((b"".join(commands) + last[0], body), len(commands) + 1),), len(body))
    if pipelining:
        return Transaction((Step((b"".join(commands) + b"DATA\r\n",), len(commands) + 1), Step(last, 1)), len(body))
    steps = [Step((c,), 1) for c in commands]
    if not bdat:
        steps.append(Step((b"DATA\r\n",), 1))
    steps.append(Step(last, 1))
    return Transaction(tuple(steps), len(body))


def build_pool(
    sizes: list[tuple[int, float]],
    domains: list[tuple[str, float]],
    rcpts: int,
    sender: str,
    pipelining: bool,
    bdat: bool,
    seed: int,
) -> list[Transaction]:
    """A shuffled cycle of transactions whose sizes and domains follow the requested mix exactly."""
    rng = random.Random(seed)
    count = max(POOL_SIZE, len(sizes) * len(domains))
    pool_sizes = apportion(sizes, count)
    pool_domains = apportion(domains, count * rcpts)
    rng.shuffle(pool_sizes)
    rng.shuffle(pool_domains)
    bodies = {size: build_message(size, sender) for size, _ in sizes}
    data = {size: body + b".\r\n" for size, body in bodies.items()}
    pool = []
    for i, size in enumerate(pool_sizes):
        rcpt_list = [f"user{i * rcpts + j}@{pool_domains[i * rcpts + j]}" for j in range(rcpts)]
        pool.append(transaction(bodies[size], data[size], envelope(sender, rcpt_list), pipelining, bdat))
    return pool
