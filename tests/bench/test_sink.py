"""Fault and delay options of bench/sink.py, how often faults fire, and what a client sees of them."""

import socket
import subprocess
import sys
import time

import pytest
from tests.bench.conftest import BENCH
from sink import DISCONNECT, Delay, Fault, FaultPlan, fault_reply, parse_address, parse_delay, parse_fault, unstuff


def test_parse_fault() -> None:
    assert parse_fault("rcpt:451:0.05") == Fault("rcpt", "451", 0.05)
    assert parse_fault("DOT:5xx:1") == Fault("dot", "554", 1.0)
    assert parse_fault("mail:4xx:0") == Fault("mail", "451", 0.0)
    assert parse_fault("connect:disconnect:0.5") == Fault("connect", DISCONNECT, 0.5)


@pytest.mark.parametrize("text", ["rcpt:451", "rcpt:250:0.1", "rcpt:45:0.1", "bogus:451:0.1", "rcpt:451:1.5",
                                  "rcpt:451:-0.1", "rcpt:451:x"])
def test_parse_fault_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_fault(text)


def test_parse_delay() -> None:
    assert parse_delay("dot:0.05") == Delay("dot", 0.05, 1.0)
    assert parse_delay("helo:1:0.25") == Delay("helo", 1.0, 0.25)
    for text in ("dot", "dot:-1", "dot:1:2", "nope:1"):
        with pytest.raises(ValueError):
            parse_delay(text)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address(":2525") == ("127.0.0.1", 2525)
    with pytest.raises(ValueError):
        parse_address("localhost")


def test_fault_rates_follow_their_probabilities() -> None:
    plan = FaultPlan([Fault("rcpt", "451", 0.1), Fault("rcpt", "554", 0.05)], [], seed=1)
    draws = [plan.fault("rcpt") for _ in range(20_000)]
    soft = sum(1 for f in draws if f is not None and f.reply == "451") / len(draws)
    hard = sum(1 for f in draws if f is not None and f.reply == "554") / len(draws)
    assert soft == pytest.approx(0.1, abs=0.01)
    assert hard == pytest.approx(0.05, abs=0.007)
    assert plan.fault("mail") is None


def test_certain_and_impossible_faults() -> None:
    plan = FaultPlan([Fault("dot", "451", 1.0), Fault("mail", "554", 0.0)], [], seed=2)
    assert all(plan.fault("dot") is not None for _ in range(1000))
    assert all(plan.fault("mail") is None for _ in range(1000))


def test_delay_rate_follows_its_probability() -> None:
    plan = FaultPlan([], [Delay("dot", 0.2, 0.3)], seed=3)
    delays = [plan.delay("dot") for _ in range(20_000)]
    assert set(delays) == {0.0, 0.2}
    assert delays.count(0.2) / len(delays) == pytest.approx(0.3, abs=0.015)
    assert plan.delay("rcpt") == 0.0


def test_probabilities_of_one_command_must_not_exceed_one() -> None:
    with pytest.raises(ValueError):
        FaultPlan([Fault("rcpt", "451", 0.6), Fault("rcpt", "554", 0.5)], [])


def test_fault_reply_carries_an_enhanced_status() -> None:
    assert fault_reply("451") == b"451 4.3.0 sink: injected fault\r\n"


def test_unstuff_removes_only_leading_dots() -> None:
    assert unstuff(b"..a\r\nb.c\r\n..\r\n") == b".a\r\nb.c\r\n.\r\n"


def _sink(*options: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """sink.py in a subprocess on a free port, and a client connection to it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, str(BENCH / "sink.py"), f"127.0.0.1:{port}", *options])
    deadline = time.monotonic() + 10
    while True:
        try:
            return process, socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_a_delayed_421_arrives_late_and_then_closes() -> None:
    process, sock = _sink("--fault", "mail:421:1", "--delay", "mail:0.3")
    try:
        assert sock.recv(512).startswith(b"220")
        started = time.monotonic()
        sock.sendall(b"EHLO t\r\nMAIL FROM:<a@b.c>\r\n")
        rest = _read_all(sock)  # ends when the sink closes the connection
        assert rest.endswith(b"\r\n421 4.3.0 sink: injected fault\r\n"), rest
        assert time.monotonic() - started >= 0.3
    finally:
        sock.close()
        process.terminate()
        process.wait(10)


def test_a_disconnect_fault_drops_the_connection() -> None:
    process, sock = _sink("--fault", "rcpt:disconnect:1")
    try:
        assert sock.recv(512).startswith(b"220")
        sock.sendall(b"HELO t\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n")
        rest = _read_all(sock)
        assert rest.count(b"250") == 2 and b"RCPT" not in rest
    finally:
        sock.close()
        process.terminate()
        process.wait(10)
