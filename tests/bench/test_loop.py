"""source.py's engine against sink.py on an ephemeral port: a tiny bounded run, in well under two seconds."""

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from client import Load, run
from tests.bench.conftest import BENCH


class SinkProcess:
    def __init__(self, *options: str) -> None:
        command = [sys.executable, str(BENCH / "sink.py"), "127.0.0.1:0", "--json", "--seed", "7", *options]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline().rsplit(":", 1)[1])

    def report(self) -> dict:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=10)
        return json.loads(out)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def sink_process(request: pytest.FixtureRequest) -> Iterator[SinkProcess]:
    sink = SinkProcess(*getattr(request, "param", ()))
    yield sink
    sink.kill()


def send(port: int, **options: object) -> tuple:
    defaults = dict(host="127.0.0.1", port=port, sessions=4, messages=200, duration=None, per_connection=0,
                    sizes=[(1024, 0.5), (5000, 0.5)], domains=[("example.com", 1.0)], keep_ids=True, timeout=5.0)
    return asyncio.run(run(Load(**{**defaults, **options})))


def test_everything_sent_arrives(sink_process: SinkProcess) -> None:
    stats, fatal = send(sink_process.port, rcpts=2)
    report = sink_process.report()
    assert fatal is None
    assert (stats.accepted, stats.failed) == (200, 0)
    assert report["messages"] == 200 and report["recipients"] == 400
    assert report["bytes"] == stats.bytes
    assert len(set(stats.ids)) == 200
    assert report["connections"] == 4 and report["by_ip"]["127.0.0.1"]["messages"] == 200


def test_one_message_per_connection(sink_process: SinkProcess) -> None:
    stats, _ = send(sink_process.port, messages=30, per_connection=1)
    assert sink_process.report()["connections"] == stats.connections == 30


@pytest.mark.parametrize("sink_process", [("--fault", "rcpt:451:0.25")], indirect=True)
def test_injected_faults_are_counted_on_both_sides(sink_process: SinkProcess) -> None:
    stats, _ = send(sink_process.port, messages=400)
    report = sink_process.report()
    assert stats.accepted + stats.failed == 400
    assert stats.errors == {"451": stats.failed}
    assert report["faults"] == {"rcpt:451": stats.failed}
    assert report["messages"] == stats.accepted
    assert 60 < stats.failed < 140


def test_bdat_and_capture(tmp_path: Path) -> None:
    sink = SinkProcess("--capture", str(tmp_path))
    try:
        stats, fatal = send(sink.port, messages=20, bdat=True)
        report = sink.report()
    finally:
        sink.kill()
    assert fatal is None and stats.accepted == report["messages"] == 20
    captured = sorted(tmp_path.glob("*.eml"))
    assert len(captured) == 20
    first = captured[0].read_bytes()
    assert first.startswith(b"X-Sink-Mail-From: <bench@source.example>\r\nX-Sink-Rcpt-To: <user")
    assert first.endswith(b"\r\n") and b"\r\n.\r\n" not in first


def test_a_missing_extension_stops_the_run(sink_process: SinkProcess) -> None:
    stats, fatal = send(sink_process.port, starttls=True)
    assert fatal == "the server does not offer STARTTLS"
    assert stats.accepted == 0 and stats.errors["unsupported"] >= 1
