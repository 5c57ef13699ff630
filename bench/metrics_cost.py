"""What fastmta's instrumentation costs in-process: the counting per message, and the flush once a second.

An SMTP worker counts each message in plain attributes (a connection, an accepted message, two histogram
observations) and moves the counts to prometheus_client's multiprocess files once a second; this times both
on the real classes, so the share of a message's CPU can be read off against compare.py's µs/msg.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fastmta import metrics  # noqa: E402 (needs the repo on sys.path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metrics_cost.py", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=1_000_000, help="messages counted for the per-message figure")
    p.add_argument("--per-second", type=int, default=5_000, help="messages between two flushes (default 5,000)")
    p.add_argument("--flushes", type=int, default=50)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    data_dir = Path(tempfile.mkdtemp())
    directory = metrics.prepare(data_dir)
    try:
        counts = metrics.SmtpMetrics("smtp-0")

        def one_message() -> None:
            counts.connections += 1
            counts.received["accepted"] += 1
            counts.processing.observe(time.time() - 0.002)
            counts.size.observe(1100)

        per_message = timeit.timeit(one_message, number=args.messages) / args.messages
        counts.flush(50)
        flushes = []
        for _ in range(args.flushes):
            for _ in range(args.per_second):
                one_message()
            started = time.perf_counter()
            counts.flush(50)
            flushes.append(time.perf_counter() - started)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    result = {
        "counting_us_per_message": round(per_message * 1e6, 3),
        "flush_ms_median": round(statistics.median(flushes) * 1e3, 3),
        "flush_ms_max": round(max(flushes) * 1e3, 3),
        "messages_per_flush": args.per_second,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"counting: {result['counting_us_per_message']:.2f} µs per message")
        print(f"flush of {args.per_second:,} messages' counts: median {result['flush_ms_median']:.3f} ms, "
              f"max {result['flush_ms_max']:.3f} ms (once a second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
