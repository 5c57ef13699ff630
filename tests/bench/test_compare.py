"""compare.py's arithmetic and labels, the configs it gives fastmta, and the latency scripts' joins."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from compare import SCENARIOS, Run, durability, markdown, summarize
from percentiles import percentile, summary
from relay_latency import ack_to_delivery
from targets import BENCH, TARGETS

from fastmta.config import load


def run(round_number: int, scenario: str, target: str, rate: float, **extra: object) -> Run:
    fields = dict(round=round_number, scenario=scenario, target=target, client="source.py", accepted=100, failed=0,
                  seconds=1.0, messages_per_second=rate, cpu_us_per_message=10.0 * round_number,
                  latency_ms={"p99": float(round_number)}, errors={})
    fields.update(extra)
    return Run(**fields)  # type: ignore[arg-type]


def test_ratios_are_taken_within_a_round_before_the_median() -> None:
    scenario = SCENARIOS["1k-reused"]
    pairs = [(scenario, TARGETS["fastmta"]), (scenario, TARGETS["postfix"])]
    # The machine slows down in round 3 for both: per-round ratios stay 4, 4, 4.
    runs = [run(1, "1k-reused", "fastmta", 4000), run(1, "1k-reused", "postfix", 1000),
            run(2, "1k-reused", "fastmta", 4400), run(2, "1k-reused", "postfix", 1100),
            run(3, "1k-reused", "fastmta", 800), run(3, "1k-reused", "postfix", 200)]
    fastmta, postfix = summarize(runs, pairs, "postfix")
    assert fastmta["ratio_to_baseline"] == 4.0 and postfix["ratio_to_baseline"] == 1.0
    assert (fastmta["messages_per_second"], fastmta["min"], fastmta["max"]) == (4000, 800, 4400)
    assert fastmta["cpu_us_per_message"] == 20.0 and fastmta["p99_ms"] == 2.0
    table = markdown([fastmta, postfix], "postfix")
    assert "| 1k-reused | fastmta | fsync before 250, kept queued | 4,000 | 800–4,400 | 4.00 | 2.0 | 20 |" in table


def test_lost_messages_are_shown_in_the_table() -> None:
    scenario = SCENARIOS["relay-1k"]
    runs = [run(1, "relay-1k", "fastmta", 900, delivered=97)]
    (row,) = summarize(runs, [(scenario, TARGETS["fastmta"])], "fastmta")
    assert row["lost"] == 3 and "(3 lost)" in markdown([row], "fastmta")


def test_durability_is_stated_for_every_target() -> None:
    assert durability(TARGETS["postfix"], SCENARIOS["1k-reused"]) == "fsync before 250 (queue file), held"
    assert durability(TARGETS["fastmta"], SCENARIOS["relay-1k"]) == "fsync before 250, then relayed"
    assert durability(TARGETS["aiosmtpd"], SCENARIOS["1k-reused"]) == "none: discards"


@pytest.mark.parametrize("name", ["fastmta", "fastmta-nometrics"])
@pytest.mark.parametrize("relay_port", [None, 2626])
def test_the_fastmta_config_is_one_fastmta_accepts(tmp_path: Path, name: str, relay_port: int | None) -> None:
    target = TARGETS[name]
    path = tmp_path / "fastmta.toml"
    path.write_text(target.config(tmp_path, 2525, relay_port, admin_port=8081))  # type: ignore[attr-defined]
    config = load(path, environ={})
    assert config.smtp.listen == ["127.0.0.1:2525"] and config.admin.listen == "127.0.0.1:8081"
    assert config.delivery.workers == (1 if relay_port else 0)
    assert config.server.metrics is (name == "fastmta")
    if relay_port:
        assert config.routes[0].kind == "smarthost" and config.routes[0].port == relay_port


def test_each_250_is_joined_with_its_delivery() -> None:
    acks = "A 100.000\nB 100.500\nC 101.000\n"
    waits, missing = ack_to_delivery(acks, {"A": 100.002, "B": 100.510})
    assert waits == pytest.approx([2.0, 10.0]) and missing == 1


def test_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 100.0 and percentile(values, 0.5) == 51.0
    assert summary(values) == {"p50": 50.5, "p90": 91.0, "p99": 100.0, "max": 100.0}


def test_metrics_cost_reports_both_figures() -> None:
    """In a process of its own: prometheus_client must not be imported before the multiprocess directory is set."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "metrics_cost.py"), "--messages", "1000", "--flushes", "2", "--per-second", "100", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    result = json.loads(done.stdout)
    assert result["counting_us_per_message"] > 0 and result["flush_ms_max"] >= result["flush_ms_median"] > 0
