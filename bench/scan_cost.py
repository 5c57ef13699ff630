"""What content scanning costs ingress: fastmta with scanning off, with clamd, with spamd, with both, under one load.

clamd and spamd are the Debian daemons, started once for the whole run on loopback ports in a temporary
directory (tests/scanners.py: clamd with one EICAR signature, spamd with its shipped rules and local tests
only). Each run starts fastmta fresh (its defaults, delivery off), sends for --duration seconds with
source.py, and charges fastmta's process tree and the scanners' separately. Variants run interleaved,
round after round, and the table shows medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from compare import SCENARIOS, SourceClient
from proctree import tree_cpu_seconds, wait_until_quiet
from targets import FastMTA, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.scanners import Daemon, missing, running, start_clamd, start_spamd  # noqa: E402 (needs the repo on sys.path)

# Which scanners each variant turns on.
VARIANTS = {"off": (), "clamav": ("clamav",), "spamassassin": ("spamassassin",), "both": ("clamav", "spamassassin")}


def sections(scanners: tuple[str, ...], daemons: dict[str, Daemon]) -> tuple[str, ...]:
    if not scanners:
        return ()
    lines = ["[scan]"]
    for name in scanners:
        lines += [f"{name} = true", f"{name}_port = {daemons[name].port}"]
    return tuple(lines)


def measure(variant: str, daemons: dict[str, Daemon], client: SourceClient, scenario: str, workdir: Path) -> dict:
    target = FastMTA()
    scanners = VARIANTS[variant]
    target.sections = sections(scanners, daemons)
    started = target.start(workdir / variant, free_port())
    try:
        wait_until_quiet(started.pid)
        helpers = [daemons[name].process.pid for name in scanners]
        fastmta_before = tree_cpu_seconds(started.pid)
        scanners_before = sum(tree_cpu_seconds(pid) for pid in helpers)
        load = client.run(started.port, SCENARIOS[scenario], target.name)
        fastmta_cpu = tree_cpu_seconds(started.pid) - fastmta_before
        scanners_cpu = sum(tree_cpu_seconds(pid) for pid in helpers) - scanners_before
    finally:
        started.stop()
    accepted = max(load.accepted, 1)
    return {
        "variant": variant, "msg_s": load.messages_per_second, "p99_ms": load.latency_ms.get("p99"),
        "fastmta_us": fastmta_cpu * 1e6 / accepted, "scanners_us": scanners_cpu * 1e6 / accepted,
        "accepted": load.accepted, "errors": load.errors,
    }  # fmt: skip


def table(runs: list[dict], variants: list[str]) -> str:
    lines = [
        "| scanning | msg/s (median) | range | p99 ms | fastmta CPU µs/msg | scanners' CPU µs/msg | refused |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in variants:
        mine = [run for run in runs if run["variant"] == variant]
        rates = [run["msg_s"] for run in mine]
        p99 = [run["p99_ms"] for run in mine if run["p99_ms"] is not None]
        refused = sum(sum(run["errors"].values()) for run in mine)
        lines.append(
            f"| {variant} | {statistics.median(rates):,.0f} | {min(rates):,.0f}–{max(rates):,.0f} "
            f"| {statistics.median(p99):,.1f} | {statistics.median(r['fastmta_us'] for r in mine):,.0f} "
            f"| {statistics.median(r['scanners_us'] for r in mine):,.0f} | {refused:,} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scan_cost.py", description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--scenario", default="1k-reused", help="an ingress scenario of compare.py (default 1k-reused)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load per run (default 5)")
    p.add_argument("--sessions", type=int, default=8, help="concurrent sessions (default 8: spamd judges a few messages a second)")
    args = p.parse_args(argv)
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or SCENARIOS.get(args.scenario) is None or SCENARIOS[args.scenario].relay:
        p.error(f"unknown variants {unknown} or not an ingress scenario: {args.scenario}")
    needed = {name for variant in variants for name in VARIANTS[variant]}
    reasons = [reason for name, reason in (("clamav", missing("clamd", "clamav-daemon")),
                                           ("spamassassin", missing("spamd", "spamd"))) if name in needed and reason]  # fmt: skip
    if reasons:
        print("; ".join(reasons), file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="scan-cost-"))
    client = SourceClient(args.sessions, args.duration)
    runs: list[dict] = []
    try:
        with ExitStack() as stack:
            daemons: dict[str, Daemon] = {}
            if "clamav" in needed:
                daemons["clamav"] = stack.enter_context(running(start_clamd(workdir / "clamd")))
            if "spamassassin" in needed:
                daemons["spamassassin"] = stack.enter_context(running(start_spamd(workdir / "spamd"))).ready()
            for round_number in range(1, args.rounds + 1):
                for variant in variants:
                    run = measure(variant, daemons, client, args.scenario, workdir)
                    runs.append(run)
                    print(f"round {round_number} {variant:12} {run['msg_s']:>9,.0f} msg/s  fastmta {run['fastmta_us']:>6,.0f} µs/msg"
                          f"  scanners {run['scanners_us']:>8,.0f} µs/msg  {run['errors'] or ''}", file=sys.stderr)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.scenario}, {args.sessions} sessions, {args.duration:g} s per run, median of {args.rounds} rounds\n")
    print(table(runs, variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
