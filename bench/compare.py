"""fastmta side by side with its peers: identical loads, interleaved round by round, reported as medians.

Each run starts its target fresh on a loopback port, measures one load against it, charges the CPU time of
the target's whole process tree to the messages it accepted, and stops it. Rounds run every (scenario,
target) pair in the same order, A B C A B C ..., so that machine noise falls on all targets alike; ratios are
taken within a round before the median is taken.
"""

from __future__ import annotations

import argparse
import json
import platform
import smtplib
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from proctree import tree_cpu_seconds, wait_until_quiet
from targets import BENCH, DEFAULT_TARGETS, TARGETS, FastMTA, Running, Target, free_port, spawn, wait_for_greeting

SENDER = "from@example.com"
RECIPIENT = "to@example.com"
DRAIN_IDLE_SECONDS = 10.0  # relay: give up when the sink got nothing new for this long
DRAIN_MAX_SECONDS = 120.0
PROBE_SECONDS = 5.0


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    size: int
    per_connection: int  # 0: connections reused; 1: a new connection per message
    relay: bool
    first_count: int  # smtp-source's messages in its first run, before the target's rate is known


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("1k-reused", "ingress 1 KiB, reused connections", 1024, 0, False, 5000),
        Scenario("100k-reused", "ingress 100 KiB, reused connections", 100 * 1024, 0, False, 1000),
        Scenario("1k-per-conn", "ingress 1 KiB, one message per connection", 1024, 1, False, 2000),
        Scenario("relay-1k", "relay 1 KiB to sink.py, end to end, reused connections", 1024, 0, True, 3000),
        Scenario("64k-reused", "ingress 64 KiB, reused connections", 64 * 1024, 0, False, 1000),
        Scenario("relay-100k", "relay 100 KiB to sink.py, end to end, reused connections", 100 * 1024, 0, True, 1000),
    )
}
# The default run stays within ten minutes; the others are asked for by name.
DEFAULT_SCENARIOS = ("1k-reused", "100k-reused", "1k-per-conn", "relay-1k")


@dataclass
class Load:
    """What the client measured in one run."""

    accepted: int
    failed: int
    seconds: float
    messages_per_second: float
    started_at: float  # wall clock, to line up with the sink's delivery times
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class Run:
    round: int
    scenario: str
    target: str
    client: str
    accepted: int
    failed: int
    seconds: float
    messages_per_second: float
    cpu_us_per_message: float | None
    latency_ms: dict[str, float | None]
    errors: dict[str, int]
    delivered: int | None = None  # relay: messages that reached the sink


class SourceClient:
    """bench/source.py, for a fixed duration."""

    name = "source.py"

    def __init__(self, sessions: int, duration: float) -> None:
        self.sessions = sessions
        self.duration = duration

    def command(self, port: int, scenario: Scenario) -> list[str]:
        return [
            sys.executable, str(BENCH / "source.py"), f"127.0.0.1:{port}", "--sessions", str(self.sessions),
            "--size", str(scenario.size), "--per-connection", str(scenario.per_connection),
            "--duration", str(self.duration), "--from", SENDER, "--json", "--quiet",
        ]

    def run(self, port: int, scenario: Scenario, target: str) -> Load:
        done = subprocess.run(self.command(port, scenario), capture_output=True, text=True)
        if done.returncode not in (0, 1):
            raise RuntimeError(f"source.py failed: {done.stderr.strip()[-500:]}")
        result = json.loads(done.stdout)
        return Load(
            accepted=result["messages_accepted"], failed=result["messages_failed"], seconds=result["seconds"],
            messages_per_second=result["messages_per_second"], started_at=result["started_at"],
            latency_ms=result["latency_ms"], errors=result["errors"],
        )


class SmtpSourceClient:
    """Postfix's smtp-source, as the core issue states its targets; it sends a count, not for a duration.

    Its first run on each (target, scenario) sends the scenario's first_count; later runs send what the
    previous rate makes last about `duration` seconds.
    """

    name = "smtp-source"

    def __init__(self, sessions: int, duration: float) -> None:
        self.sessions = sessions
        self.duration = duration
        self.counts: dict[tuple[str, str], int] = {}

    def command(self, port: int, scenario: Scenario, count: int) -> list[str]:
        reuse = ["-d"] if scenario.per_connection == 0 else []
        return [
            "smtp-source", "-s", str(self.sessions), *reuse, "-l", str(scenario.size), "-m", str(count),
            "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}",
        ]

    def run(self, port: int, scenario: Scenario, target: str) -> Load:
        count = self.counts.get((target, scenario.name), scenario.first_count)
        started_at = time.time()
        start = time.perf_counter()
        done = subprocess.run(self.command(port, scenario, count), capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            error = (done.stderr or done.stdout).strip()[-200:]
            return Load(0, count, seconds, 0.0, started_at, errors={error or "failed": 1})
        rate = count / seconds
        self.counts[(target, scenario.name)] = max(500, int(rate * self.duration))
        return Load(count, 0, round(seconds, 4), round(rate, 1), started_at)


class Sink:
    """bench/sink.py as the relay scenario's next hop, reporting to a JSON file."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.report_file = workdir / "sink.json"
        command = [sys.executable, str(BENCH / "sink.py"), f"127.0.0.1:{self.port}", "--report", str(self.report_file)]
        self.process = spawn(command, workdir / "sink.log")
        wait_for_greeting(self.port, self.process)

    def report(self) -> dict:
        try:
            return json.loads(self.report_file.read_text())
        except (OSError, ValueError):
            return {"messages": 0, "last_message_at": None}

    def drain(self, expected: int) -> dict:
        """Wait until `expected` messages arrived, or arrivals stopped; return the sink's report."""
        deadline = time.monotonic() + DRAIN_MAX_SECONDS
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            report = self.report()
            if report["messages"] >= expected:
                return report
            if report["messages"] != last_count:
                last_count, last_change = report["messages"], time.monotonic()
            elif time.monotonic() - last_change > DRAIN_IDLE_SECONDS:
                break
            time.sleep(0.1)
        return self.report()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def cpu_us_per_message(seconds: float, messages: int) -> float | None:
    return round(seconds * 1e6 / messages, 1) if messages else None


def measure(target: Target, scenario: Scenario, client: SourceClient | SmtpSourceClient, workdir: Path,
            round_number: int) -> Run:
    """One run: a fresh target (and sink), one load, the target's CPU time, then everything stopped."""
    sink = Sink(workdir / "sink") if scenario.relay else None
    running: Running | None = None
    try:
        running = target.start(workdir / target.name, free_port(), sink.port if sink else None)
        wait_until_quiet(running.pid)  # start-up work is not charged
        cpu_before = tree_cpu_seconds(running.pid)
        load = client.run(running.port, scenario, target.name)
        delivered = None
        rate = load.messages_per_second
        if sink is not None:
            report = sink.drain(load.accepted)
            delivered = report["messages"]
            last = report["last_message_at"]
            rate = round(delivered / (last - load.started_at), 1) if delivered and last else 0.0
        cpu = tree_cpu_seconds(running.pid) - cpu_before
    finally:
        if running is not None:
            running.stop()
        if sink is not None:
            sink.stop()
    return Run(
        round=round_number, scenario=scenario.name, target=target.name, client=client.name,
        accepted=load.accepted, failed=load.failed, seconds=load.seconds, messages_per_second=rate,
        cpu_us_per_message=cpu_us_per_message(cpu, load.accepted), latency_ms=load.latency_ms,
        errors=load.errors, delivered=delivered,
    )


def probe_relay(target: Target, workdir: Path) -> str | None:
    """Why `target` cannot relay here (one message must reach sink.py within PROBE_SECONDS), or None."""
    sink = Sink(workdir / "sink")
    running: Running | None = None
    try:
        running = target.start(workdir / target.name, free_port(), sink.port)
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as smtp:
            smtp.sendmail(SENDER, [RECIPIENT], b"Subject: relay probe\r\n\r\nprobe\r\n")
        deadline = time.monotonic() + PROBE_SECONDS
        while time.monotonic() < deadline:
            if sink.report()["messages"]:
                return None
            time.sleep(0.1)
        return f"it accepted a probe message, but nothing reached sink.py within {PROBE_SECONDS:.0f} s"
    except (OSError, RuntimeError, smtplib.SMTPException) as e:
        return f"relay probe failed: {e}"
    finally:
        if running is not None:
            running.stop()
        sink.stop()


def plan(targets: list[Target], scenarios: list[Scenario], workdir: Path) -> tuple[list[tuple[Scenario, Target]], list[str]]:
    """The (scenario, target) pairs that can run here, and a sentence for each that cannot."""
    pairs, skipped = [], []
    relay_refusals: dict[str, str | None] = {}
    for scenario in scenarios:
        for target in targets:
            reason = target.missing()
            if reason is None and scenario.relay:
                if not target.relays:
                    continue  # not a relay: the scenario does not apply, nothing to report
                if target.name not in relay_refusals:
                    relay_refusals[target.name] = probe_relay(target, workdir / "probe")
                reason = relay_refusals[target.name]
            if reason is None:
                pairs.append((scenario, target))
            else:
                skipped.append(f"{target.name} / {scenario.name}: skipped, {reason}")
    return pairs, skipped


def durability(target: Target, scenario: Scenario) -> str:
    if scenario.relay:
        return f"{target.durability}, then relayed"
    if target.name == "postfix":
        return f"{target.durability}, held"
    if isinstance(target, FastMTA):
        return f"{target.durability}, kept queued"
    return target.durability


def summarize(runs: list[Run], pairs: list[tuple[Scenario, Target]], baseline: str) -> list[dict]:
    """Per (scenario, target): medians over rounds, and the median of per-round ratios to the baseline."""
    rates = {(r.round, r.scenario, r.target): r.messages_per_second for r in runs}
    rows = []
    for scenario, target in pairs:
        mine = [r for r in runs if r.scenario == scenario.name and r.target == target.name]
        if not mine:
            continue
        ratios = [
            rates[(r.round, r.scenario, r.target)] / base
            for r in mine
            if (base := rates.get((r.round, r.scenario, baseline)))
        ]
        cpu = [r.cpu_us_per_message for r in mine if r.cpu_us_per_message is not None]
        p99 = [r.latency_ms["p99"] for r in mine if r.latency_ms.get("p99") is not None]
        rows.append({
            "scenario": scenario.name,
            "target": target.name,
            "durability": durability(target, scenario),
            "rounds": len(mine),
            "messages_per_second": statistics.median(r.messages_per_second for r in mine),
            "min": min(r.messages_per_second for r in mine),
            "max": max(r.messages_per_second for r in mine),
            "ratio_to_baseline": round(statistics.median(ratios), 3) if ratios else None,
            "p99_ms": statistics.median(p99) if p99 else None,
            "cpu_us_per_message": statistics.median(cpu) if cpu else None,
            "failed": sum(r.failed for r in mine),
            "lost": sum(r.accepted - r.delivered for r in mine if r.delivered is not None),
        })
    return rows


def markdown(rows: list[dict], baseline: str) -> str:
    head = (
        f"| scenario | target | durability | msg/s (median) | range | × {baseline} | p99 ms | server CPU µs/msg |\n"
        "|---|---|---|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for row in rows:
        ratio = f"{row['ratio_to_baseline']:.2f}" if row["ratio_to_baseline"] is not None else "–"
        p99 = f"{row['p99_ms']:,.1f}" if row["p99_ms"] is not None else "–"
        cpu = f"{row['cpu_us_per_message']:,.0f}" if row["cpu_us_per_message"] is not None else "–"
        problems = [f"{row[k]:,} {k}" for k in ("failed", "lost") if row[k]]
        lines.append(
            f"| {row['scenario']} | {row['target']} | {row['durability']} | {row['messages_per_second']:,.0f}"
            f"{' (' + ', '.join(problems) + ')' if problems else ''} | {row['min']:,.0f}–{row['max']:,.0f} "
            f"| {ratio} | {p99} | {cpu} |"
        )
    return head + "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path, title: str) -> None:
    """Grouped bars, one group per scenario, log scale: the targets differ by orders of magnitude."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(row["scenario"] for row in rows))
    targets = list(dict.fromkeys(row["target"] for row in rows))
    width = 0.8 / len(targets)
    figure, axes = plt.subplots(figsize=(10, 5.5))
    for i, target in enumerate(targets):
        by_scenario = {row["scenario"]: row["messages_per_second"] for row in rows if row["target"] == target}
        xs = [j + i * width for j, s in enumerate(scenarios) if s in by_scenario]
        ys = [by_scenario[s] for s in scenarios if s in by_scenario]
        bars = axes.bar(xs, ys, width, label=target)
        axes.bar_label(bars, labels=[f"{y:,.0f}" for y in ys], fontsize=7, rotation=90, padding=2)
    axes.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(scenarios))], scenarios)
    axes.set_yscale("log")
    axes.set_ylabel("messages/s (median of rounds, log scale)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def version(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "not installed"


def environment() -> dict:
    import importlib.metadata as metadata

    def package(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, Linux {platform.release()}",
        "python": platform.python_version(),
        "postfix": version(["postconf", "-h", "mail_version"]),
        "aiosmtpd": package("aiosmtpd"),
        "fastmta": package("fastmta"),
        "fastmta_commit": version(["git", "-C", str(BENCH), "rev-parse", "--short", "HEAD"]),
        "fastmta_uncommitted": version(["git", "-C", str(BENCH.parent), "status", "--porcelain", "fastmta"]) != "",
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare.py",
        description="Measure fastmta and its peers under identical, interleaved loads; print a markdown table.",
    )
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help=f"comma-separated, from {', '.join(TARGETS)}")
    p.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS), help=f"comma-separated, from {', '.join(SCENARIOS)}")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load per run (default 5)")
    p.add_argument("--sessions", type=int, default=50, help="concurrent sessions (default 50)")
    p.add_argument("--client", choices=("source.py", "smtp-source"), default="source.py",
                   help="load generator: bench/source.py, or Postfix's smtp-source as the core issue's targets use")
    p.add_argument("--baseline", default="postfix", help="target the ratio column divides by (default postfix)")
    p.add_argument("--out", type=Path, help="directory for results.json/.md/.png (default bench/results/TIMESTAMP)")
    p.add_argument("--chart", type=Path, help="also write the chart here (e.g. bench/results.png)")
    return p


def choose(names: str, known: dict, kind: str, p: argparse.ArgumentParser) -> list:
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        p.error(f"unknown {kind}: {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
    return [known[name] for name in chosen]


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    targets = choose(args.targets, TARGETS, "target", p)
    scenarios = choose(args.scenarios, SCENARIOS, "scenario", p)
    out = (args.out or BENCH / "results" / time.strftime("%Y%m%d-%H%M%S")).resolve()  # Postfix needs absolute paths
    out.mkdir(parents=True, exist_ok=True)
    client = (SourceClient if args.client == "source.py" else SmtpSourceClient)(args.sessions, args.duration)

    pairs, skipped = plan(targets, scenarios, out / "work")
    for line in skipped:
        print(line, file=sys.stderr)
    if not pairs:
        print("nothing to run", file=sys.stderr)
        return 1
    baseline = args.baseline if any(t.name == args.baseline for _, t in pairs) else pairs[0][1].name
    if baseline != args.baseline:
        print(f"{args.baseline} cannot run here: ratios are to {baseline} instead", file=sys.stderr)

    runs: list[Run] = []
    began = time.monotonic()
    for round_number in range(1, args.rounds + 1):
        for scenario, target in pairs:
            try:
                run = measure(target, scenario, client, out / "work", round_number)
            except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError, ValueError) as e:
                # One target that will not start or answer costs its own numbers, not the whole run.
                skipped.append(f"{target.name} / {scenario.name}: round {round_number} failed, {e}")
                print(skipped[-1], file=sys.stderr)
                continue
            runs.append(run)
            print(
                f"[{time.monotonic() - began:6.0f} s] round {round_number} {scenario.name:12} {target.name:10} "
                f"{run.messages_per_second:>9,.0f} msg/s  cpu {run.cpu_us_per_message or 0:>7,.0f} µs/msg"
                + (f"  {run.failed:,} failed" if run.failed else ""),
                file=sys.stderr,
            )

    rows = summarize(runs, pairs, baseline)
    command = " ".join(["bench/compare.py", *(argv if argv is not None else sys.argv[1:])])
    table = markdown(rows, baseline)
    report = {
        "command": command, "client": client.name, "rounds": args.rounds, "duration": args.duration,
        "sessions": args.sessions, "baseline": baseline, "environment": environment(),
        "scenarios": {s.name: asdict(s) for s in scenarios}, "skipped": skipped,
        "summary": rows, "runs": [asdict(r) for r in runs],
    }
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(table + "".join(f"\n- {line}" for line in skipped) + "\n")
    title = f"{client.name}, {args.sessions} sessions, median of {args.rounds} rounds"
    if not rows:
        print("nothing was measured: no chart", file=sys.stderr)
        return 1
    chart(rows, out / "results.png", title)
    if args.chart:
        chart(rows, args.chart, title)
    print(table)
    for line in skipped:
        print(f"- {line}")
    print(f"\nresults in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
