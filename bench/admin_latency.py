"""Does the admin process stay responsive while ingress runs flat out? GET /health latency, idle and under load.

Starts fastmta (its defaults: SMTP workers = CPUs, fsync on, delivery off), measures /health at a fixed
request rate over one kept-alive HTTP connection while the server is idle, then again while source.py
sends as fast as the server accepts; prints p50/p99/max of each phase and the verdict against the target.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from percentiles import summary
from targets import BENCH, FastMTA, free_port

TARGET_P99_MS = 50.0


def probe_health(port: int, seconds: float, per_second: float) -> list[float]:
    """Latencies (ms) of GET /health sent on a fixed schedule; any answer but 200 ends the run with an error."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies: list[float] = []
    interval = 1.0 / per_second
    start = time.perf_counter()
    next_at = start
    while time.perf_counter() - start < seconds:
        sent = time.perf_counter()
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"/health answered {response.status}")
        latencies.append((time.perf_counter() - sent) * 1000)
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    connection.close()
    return latencies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="admin_latency.py", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=20.0, help="seconds of each phase (default 20)")
    p.add_argument("--rate", type=float, default=20.0, help="/health requests per second (default 20)")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--size", default="1k")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as workdir:
        smtp_port, admin_port = free_port(), free_port()
        running = FastMTA().start(Path(workdir), smtp_port, admin_port=admin_port)
        try:
            time.sleep(1.0)  # the admin process binds after the SMTP workers greet
            idle = probe_health(admin_port, args.duration, args.rate)
            load = subprocess.Popen(
                [sys.executable, str(BENCH / "source.py"), f"127.0.0.1:{smtp_port}", "--sessions", str(args.sessions),
                 "--size", args.size, "--duration", str(args.duration + 2), "--messages", "100000000",
                 "--json", "--quiet"],
                stdout=subprocess.PIPE, text=True,
            )
            time.sleep(1.0)  # let the load reach its full rate first
            loaded = probe_health(admin_port, args.duration, args.rate)
            source = json.loads(load.communicate()[0])
        finally:
            running.stop()

    result = {
        "target_p99_ms": TARGET_P99_MS,
        "idle": {"requests": len(idle), **summary(idle)},
        "under_load": {"requests": len(loaded), **summary(loaded)},
        "ingress_messages_per_second": source["messages_per_second"],
        "ingress_failed": source["messages_failed"],
    }
    passed = result["under_load"]["p99"] < TARGET_P99_MS
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for phase in ("idle", "under_load"):
            r = result[phase]
            print(f"{phase:10} {r['requests']:>5} requests  p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms  max {r['max']:6.2f} ms")
        print(f"ingress meanwhile: {source['messages_per_second']:,.0f} msg/s, {source['messages_failed']} failed")
        print(f"p99 under load {'<' if passed else '>='} {TARGET_P99_MS:.0f} ms: {'pass' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
