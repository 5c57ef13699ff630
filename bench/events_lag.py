"""Does the events process keep up? Its sinks' lag under ingress, flat out and at a sustained rate.

Starts fastmta with history on, or with --sink webhooks a webhook receiver instead (otherwise its defaults: SMTP workers = CPUs, delivery off) and reads the lag of every
sink from GET /health (the age of the oldest event a sink does not have yet, at the cursor it last saved,
so at most a second more than the events process itself knows) four times a second, through two phases:
1. flat out: source.py closed loop for --duration seconds; then how long the sinks take to catch up once
   the load stops (the events process runs as SCHED_IDLE, so a machine kept busy by ingress delays it);
2. sustained: source.py open loop at --fraction of the rate phase 1 reached, for --duration seconds.
The target: the lag stays under 2 s in phase 2.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from targets import BENCH, FastMTAWithHistory, FastMTAWithWebhooks, free_port

TARGET_LAG_SECONDS = 2.0
_SAMPLE_SECONDS = 0.25
_CATCH_UP_LIMIT = 120.0


class LagProbe:
    """Samples the largest sink lag /health reports, in a thread, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, float]] = []  # (time, the largest lag of any sink)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LagProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def current(self) -> float:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", "/health")
            lags = json.loads(connection.getresponse().read())["data"]["events_lag_seconds"]
        finally:
            connection.close()
        return max(lags.values(), default=0.0)

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_SECONDS):
            self.samples.append((time.monotonic(), self.current()))

    def largest(self, since: float, until: float) -> float:
        return max((lag for at, lag in self.samples if since <= at <= until), default=0.0)


def load(smtp_port: int, args: argparse.Namespace, rate: float | None = None) -> dict:
    command = [
        sys.executable, str(BENCH / "source.py"), f"127.0.0.1:{smtp_port}", "--sessions", str(args.sessions),
        "--size", args.size, "--duration", str(args.duration), "--messages", "100000000", "--json", "--quiet",
    ]  # fmt: skip
    if rate is not None:
        command += ["--rate", str(round(rate))]
    return json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="events_lag.py", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=20.0, help="seconds of each phase (default 20)")
    p.add_argument("--fraction", type=float, default=0.8, help="phase 2's rate, of phase 1's (default 0.8)")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--size", default="1k")
    p.add_argument("--sink", choices=["history", "webhooks"], default="history",
                   help="what the events process feeds: history.db, or a webhook receiver that answers at once")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as workdir:
        smtp_port, admin_port = free_port(), free_port()
        target = FastMTAWithHistory() if args.sink == "history" else FastMTAWithWebhooks()
        running = target.start(Path(workdir), smtp_port, admin_port=admin_port)
        try:
            time.sleep(1.0)  # the admin process binds after the SMTP workers greet
            with LagProbe(admin_port) as probe:
                started = time.monotonic()
                flat_out = load(smtp_port, args)
                stopped = time.monotonic()
                while probe.current() > 0 and time.monotonic() - stopped < _CATCH_UP_LIMIT:
                    time.sleep(_SAMPLE_SECONDS)
                caught_up = time.monotonic() - stopped
                flat_out_lag = probe.largest(started, stopped)
                rate = flat_out["messages_per_second"] * args.fraction
                started = time.monotonic()
                sustained = load(smtp_port, args, rate)
                sustained_lag = probe.largest(started, time.monotonic())
        finally:
            running.stop()

    result = {
        "target_lag_seconds": TARGET_LAG_SECONDS,
        "flat_out": {"messages_per_second": flat_out["messages_per_second"], "largest_lag_seconds": flat_out_lag,
                     "caught_up_after_seconds": round(caught_up, 2)},
        "sustained": {"offered_per_second": round(rate), "messages_per_second": sustained["messages_per_second"],
                      "failed": sustained["messages_failed"], "largest_lag_seconds": sustained_lag},
    }  # fmt: skip
    passed = sustained_lag < TARGET_LAG_SECONDS
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        f, s = result["flat_out"], result["sustained"]
        print(f"flat out   {f['messages_per_second']:8,.0f} msg/s  largest lag {f['largest_lag_seconds']:6.2f} s  "
              f"caught up {f['caught_up_after_seconds']:.2f} s after the load stopped")
        print(f"sustained  {s['messages_per_second']:8,.0f} msg/s  largest lag {s['largest_lag_seconds']:6.2f} s  "
              f"({args.fraction:.0%} of flat out, {s['failed']} failed)")
        print(f"lag at the sustained rate {'<' if passed else '>='} {TARGET_LAG_SECONDS:.0f} s: {'pass' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
