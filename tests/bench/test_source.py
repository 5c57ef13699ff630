"""Options, load splitting and the merged report of bench/source.py."""

import pytest

pytest.importorskip("hdrh")

from client import Stats  # noqa: E402
from source import histogram_of, latency_ms, loads, merge, pack, parse_args, split  # noqa: E402


def test_defaults() -> None:
    args = parse_args(["127.0.0.1:2525"])
    assert args.target == ("127.0.0.1", 2525)
    assert (args.sessions, args.messages, args.duration, args.per_connection) == (50, 10_000, None, 0)
    assert args.size == [(1024, 1.0)]


def test_every_option() -> None:
    args = parse_args([
        "[::1]:25", "--sessions", "8", "--duration", "3", "--per-connection", "1", "--size", "1k:50,2k:50",
        "--rcpts", "3", "--rate", "100", "--starttls", "--auth", "u:p:w", "--bdat", "--domains", "a.x:1,b.x:3",
        "--processes", "2", "--ids", "/tmp/ids", "--json",
    ])
    assert args.target == ("::1", 25)
    assert args.messages is None and args.duration == 3.0
    assert args.auth == ("u", "p:w")
    assert args.domains == [("a.x", 0.25), ("b.x", 0.75)]
    assert args.starttls and args.bdat and args.json and args.rate == 100.0


@pytest.mark.parametrize("argv", [
    ["localhost"], ["host:port"], ["h:25", "--sessions", "0"], ["h:25", "--size", "10"],
    ["h:25", "--per-connection", "-1"], ["h:25", "--auth", "nopassword"], ["h:25", "--rate", "-5"],
])
def test_bad_options_exit_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2


def test_processes_never_exceed_sessions_or_messages() -> None:
    assert parse_args(["h:25", "--sessions", "1", "--processes", "4"]).processes == 1
    assert parse_args(["h:25", "--messages", "2", "--processes", "4"]).processes == 2


def test_totals_split_evenly_across_processes() -> None:
    assert [split(10, 3, i) for i in range(3)] == [4, 3, 3]
    plan = loads(parse_args(["h:25", "--sessions", "5", "--messages", "11", "--rate", "9", "--processes", "2"]))
    assert [load.sessions for load in plan] == [3, 2]
    assert [load.messages for load in plan] == [6, 5]
    assert [load.rate for load in plan] == [4.5, 4.5]
    assert len({load.seed for load in plan}) == 2


def test_percentiles_from_the_histogram() -> None:
    hist = histogram_of(range(1, 100_001))  # 1 µs .. 100 ms, uniform
    result = latency_ms(hist)
    assert result["p50"] == pytest.approx(50, rel=0.01)
    assert result["p90"] == pytest.approx(90, rel=0.01)
    assert result["p99"] == pytest.approx(99, rel=0.01)
    assert result["p99.9"] == pytest.approx(99.9, rel=0.01)
    assert result["max"] == pytest.approx(100, rel=0.01)


def test_empty_histogram_has_no_percentiles() -> None:
    assert set(latency_ms(histogram_of([])).values()) == {None}


def part(accepted: int, latency_us: int, start: float, done: float, errors: dict[str, int]) -> object:
    stats = Stats(accepted=accepted, bytes=accepted * 1000, connections=1, first_start=start, last_done=done,
                  started_at=1000 + start)
    stats.latencies.extend([latency_us] * accepted)
    stats.errors.update(errors)
    stats.failed = sum(errors.values())
    return pack(stats, None)


def test_merge_adds_counts_histograms_and_spans_the_whole_window() -> None:
    result = merge([part(100, 1000, 10.0, 12.0, {"451": 2}), part(300, 3000, 11.0, 14.0, {"451": 1, "554": 4})])
    assert result["messages_accepted"] == 400
    assert result["messages_failed"] == 7
    assert result["seconds"] == 4.0
    assert result["messages_per_second"] == 100.0
    assert result["bytes_per_second"] == 100_000.0
    assert result["errors"] == {"451": 3, "554": 4}
    assert result["latency_ms"]["p50"] == pytest.approx(3.0, rel=0.01)
    assert result["latency_ms"]["p90"] == pytest.approx(3.0, rel=0.01)
    assert result["started_at"] == 1010.0
