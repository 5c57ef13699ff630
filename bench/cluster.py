"""Redis operations per message in cluster mode: one node with its limits in Redis under source.py's load.

Starts compare.py's fastmta-cluster target (a fastmta node and a redis-server of its own, per-client
limits counted for every client), runs bench/source.py at it for each connection pattern, and reads
Redis's command statistics before and after: commands per accepted message, by command, and the
scripts among them. Throughput and CPU beside local mode come from compare.py
(--targets fastmta-limits,fastmta-cluster); this adds what a capacity plan needs of Redis.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from targets import BENCH, FastMTAInCluster, free_port


def command_stats(port: int) -> dict[str, int]:
    """Calls per command since Redis started (INFO commandstats), by command name."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        header = b""
        while not header.endswith(b"\r\n"):
            header += sock.recv(1)
        size = int(header[1:-2])
        body = b""
        while len(body) < size + 2:
            body += sock.recv(65536)
    calls = {}
    for line in body.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_"):].partition(":")
            calls[name] = int(dict(field.split("=") for field in fields.split(","))["calls"])
    return calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cluster.py", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load per pattern (default 5)")
    p.add_argument("--sessions", type=int, default=20, help="concurrent sessions (default 20)")
    p.add_argument("--per-connection", default="1,0", help="messages per connection to try, 0 = reuse (default 1,0)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="fastmta-cluster-bench-") as work:
        target = FastMTAInCluster()
        running = target.start(Path(work), free_port())
        redis_port = target.redis_port
        try:
            for per_connection in (int(value) for value in args.per_connection.split(",")):
                before = command_stats(redis_port)
                done = subprocess.run(
                    [sys.executable, str(BENCH / "source.py"), f"127.0.0.1:{running.port}", "--sessions", str(args.sessions),
                     "--size", "1024", "--per-connection", str(per_connection), "--duration", str(args.duration),
                     "--json", "--quiet"],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                load = json.loads(done.stdout)
                after = command_stats(redis_port)
                accepted = max(1, load["messages_accepted"])
                by_command = {name: (after[name] - before.get(name, 0)) / accepted for name in after}
                results.append({
                    "per_connection": per_connection,
                    "messages_accepted": load["messages_accepted"],
                    "messages_per_second": load["messages_per_second"],
                    "redis_commands_per_message": round(sum(by_command.values()), 3),
                    "by_command": {name: round(value, 3) for name, value in sorted(by_command.items()) if value},
                })  # fmt: skip
        finally:
            running.stop()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for row in results:
            pattern = "one message per connection" if row["per_connection"] == 1 else f"per_connection={row['per_connection']}"
            print(f"{pattern}: {row['messages_accepted']} accepted, {row['messages_per_second']:.0f} msg/s, "
                  f"{row['redis_commands_per_message']} Redis commands per message {row['by_command']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
