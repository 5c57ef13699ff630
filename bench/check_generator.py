"""Is source.py fast enough not to be what we measure? It must reach 90% of smtp-source's rate on smtp-sink.

Both clients send the same load (1 KiB by default, 50 sessions, reused connections) to one smtp-sink,
alternating round by round; the verdict compares the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from targets import BENCH, SmtpSink, free_port

REQUIRED_SHARE = 0.9


def smtp_source_rate(port: int, messages: int, sessions: int, size: int) -> float:
    command = ["smtp-source", "-s", str(sessions), "-d", "-l", str(size), "-m", str(messages),
               "-f", "from@example.com", "-t", "to@example.com", f"127.0.0.1:{port}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return messages / (time.perf_counter() - start)


def source_rate(port: int, messages: int, sessions: int, size: int) -> float:
    command = [sys.executable, str(BENCH / "source.py"), f"127.0.0.1:{port}", "--messages", str(messages),
               "--sessions", str(sessions), "--size", str(size), "--json", "--quiet"]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    if result["messages_failed"]:
        raise RuntimeError(f"source.py: {result['messages_failed']} messages failed: {result['errors']}")
    return result["messages_per_second"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="check_generator.py", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--size", type=int, default=1024)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as workdir:
        sink = SmtpSink().start(Path(workdir), free_port())
        try:
            rates: dict[str, list[float]] = {"smtp-source": [], "source.py": []}
            for round_number in range(1, args.rounds + 1):
                for name, measure in (("smtp-source", smtp_source_rate), ("source.py", source_rate)):
                    rate = measure(sink.port, args.messages, args.sessions, args.size)
                    rates[name].append(rate)
                    print(f"round {round_number}  {name:12} {rate:>9,.0f} msg/s", file=sys.stderr)
        finally:
            sink.stop()
    theirs, ours = (statistics.median(rates[name]) for name in ("smtp-source", "source.py"))
    share = ours / theirs
    print(f"median: smtp-source {theirs:,.0f} msg/s, source.py {ours:,.0f} msg/s: {share:.0%} "
          f"({'pass' if share >= REQUIRED_SHARE else 'FAIL'}: at least {REQUIRED_SHARE:.0%} required)")
    return 0 if share >= REQUIRED_SHARE else 1


if __name__ == "__main__":
    sys.exit(main())
