"""The supervisor and the command line: reload, sd_notify, config checking, queue and user commands."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import Server, wait_for_greeting
from tests.integration.test_ingress import Raw, queued_id


def test_sighup_reloads_without_refusing_connections(make_server) -> None:
    server = make_server({"smtp": {"workers": 2, "max_message_size": 1000}})
    assert server.process is not None
    old_workers = set(server.child_pids())
    client = Raw(server.port)
    client.command(b"EHLO before.test")
    settings = server.settings
    settings["smtp"]["max_message_size"] = 5000
    server.config_path.write_text(tomli_w.dumps(settings))
    server.process.send_signal(signal.SIGHUP)
    # Connections keep being accepted throughout the reload.
    greetings = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        probe = Raw(server.port)
        greetings.append(probe.greeting[:3])
        ehlo = probe.command(b"EHLO probe.test")
        probe.close()
        if b"SIZE 5000" in ehlo:
            break
    assert b"SIZE 5000" in ehlo
    assert set(greetings) == {b"220"}
    # The connection opened before the reload was idle, so the old worker says goodbye with 421 unasked, once it
    # is told to stop: that comes after its successor serves, so a command sent now could still be answered.
    assert client.reply().startswith(b"421 4.3.2")
    client.close()
    deadline = time.monotonic() + 10
    while set(server.child_pids()) & old_workers and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(server.child_pids()) & old_workers
    assert server.stop() == 0


def test_restarts_back_off_when_a_worker_keeps_dying(make_server) -> None:
    """As Postfix's master: each quick death doubles the wait before the next start."""
    server = make_server({"smtp": {"workers": 1}})
    for _ in range(4):
        (worker,) = wait_for_children(server, 1)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while worker in server.child_pids() or not server.child_pids():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.02)
    delays = re.findall(r"smtp-0 \(pid \d+\) exited with -9; restarting in ([\d.]+)s", server.log())
    assert delays == ["0.1", "0.2", "0.4", "0.8"]
    assert server.stop() == 0


def test_a_throttled_worker_leaves_its_connections_to_the_others(make_server) -> None:
    server = make_server({"smtp": {"workers": 2}})
    delay = 0.1
    while delay <= 1.0:  # until the next restart of smtp-0 waits longer than it keeps its sockets
        victim = server.children()["smtp-0"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.children().get("smtp-0", victim) == victim:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.02)
        delay *= 2
    os.kill(server.children()["smtp-0"], signal.SIGKILL)  # smtp-0 now waits 1.6 s to come back
    time.sleep(0.2)
    for _ in range(20):
        # A connection handed to smtp-0's old socket would wait well over a second for its greeting.
        with socket.create_connection(("127.0.0.1", server.port), timeout=1.0) as probe:
            assert probe.recv(512).startswith(b"220")
    deadline = time.monotonic() + 10
    while "smtp-0" not in server.children():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    # Its successor serves on the new sockets: some of these messages are its.
    workers: set[str] = set()
    for n in range(40):
        client = Raw(server.port)
        client.command(b"EHLO back.test")
        client.command(b"MAIL FROM:<a@example.com>")
        client.command(b"RCPT TO:<b@example.org>")
        client.command(b"DATA")
        client.send(b"Subject: back\r\n\r\nbody\r\n.\r\n")
        record = json.loads(server.cli("queue", "show", queued_id(client.reply())).stdout)
        client.close()
        workers.add(record["worker"])
        if "smtp-0" in workers:
            break
    assert "smtp-0" in workers, workers
    assert server.stop() == 0


def test_a_lone_worker_keeps_its_sockets_while_throttled(make_server) -> None:
    """With nobody else to serve, a new client waits for the successor rather than being refused."""
    server = make_server({"smtp": {"workers": 1}})
    for _ in range(5):  # the fifth restart waits 1.6 s
        victim = server.children()["smtp-0"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.children().get("smtp-0", victim) == victim and "restarting in 1.6s" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.02)
    assert "smtp-0 (pid" in server.log() and "restarting in 1.6s" in server.log()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as waiting:
        assert waiting.recv(512).startswith(b"220")
    assert server.stop() == 0


def wait_for_children(server, count: int) -> list[int]:  # noqa: ANN001
    deadline = time.monotonic() + 10
    while len(pids := server.child_pids()) != count:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.02)
    return pids


def test_reload_with_an_invalid_config_keeps_running(make_server, tmp_path) -> None:
    notices = notify_listener(tmp_path)
    server = make_server({"smtp": {"workers": 1}}, env={"NOTIFY_SOCKET": notices.getsockname()})
    assert "READY=1" in notices.recv(4096).decode()
    workers = set(server.child_pids())
    server.config_path.write_text("[smtp]\nworkrs = 3\n")
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    assert "RELOADING=1" in notices.recv(4096).decode()
    answer = notices.recv(4096).decode()
    assert "READY=1" in answer and "STATUS=reload failed: " in answer and "smtp.workrs" in answer
    assert "smtp.workrs" in wait_for_log_line(server, "reload failed")
    assert set(server.child_pids()) == workers
    one_message(server.port)
    assert server.stop() == 0
    notices.close()


def test_reload_onto_a_busy_port_keeps_the_running_listeners(make_server, tmp_path) -> None:
    """All or nothing: the new config's sockets are bound first, and one that cannot be changes nothing."""
    notices = notify_listener(tmp_path)
    server = make_server({"smtp": {"workers": 2}}, env={"NOTIFY_SOCKET": notices.getsockname()})
    assert server.process is not None
    assert "READY=1" in notices.recv(4096).decode()
    workers = set(server.child_pids())
    with occupied() as busy:
        busy_port = busy.getsockname()[1]
        busy_address = f"127.0.0.1:{busy_port}"
        # The running address first: its new sockets are bound before the busy one fails.
        rewrite_listen(server, [f"127.0.0.1:{server.port}", busy_address])
        server.process.send_signal(signal.SIGHUP)
        assert "RELOADING=1" in notices.recv(4096).decode()
        answer = notices.recv(4096).decode()
        assert "READY=1" in answer and "STATUS=reload failed: " in answer and busy_address in answer
        line = wait_for_log_line(server, "reload failed")
        assert busy_address in line and "Address already in use" in line
        assert server.process.poll() is None
        assert set(server.child_pids()) == workers
        # A new socket left behind in the port's SO_REUSEPORT group would take some of these
        # connections and never answer them.
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as probe:
                assert probe.recv(512).startswith(b"220")
        one_message(server.port)
    # Nothing stuck from the failed attempt: with the port free, the same config loads.
    server.process.send_signal(signal.SIGHUP)
    wait_for_greeting(busy_port)
    one_message(busy_port)
    assert server.stop() == 0
    notices.close()


def test_reload_onto_an_address_not_assigned_keeps_the_running_listeners(make_server) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("192.0.2.1", 0))
        except OSError:
            pass
        else:
            pytest.skip("192.0.2.1 can be bound here (an address of this machine, or ip_nonlocal_bind)")
    server = make_server({"smtp": {"workers": 1}})
    assert server.process is not None
    workers = set(server.child_pids())
    rewrite_listen(server, ["192.0.2.1:2525"])
    server.process.send_signal(signal.SIGHUP)
    line = wait_for_log_line(server, "reload failed")
    assert "192.0.2.1:2525" in line and "Cannot assign requested address" in line
    assert server.process.poll() is None
    assert set(server.child_pids()) == workers
    one_message(server.port)
    assert server.stop() == 0


def test_start_on_a_busy_port_fails_with_one_line(make_server) -> None:
    server = make_server(start=False)
    with occupied(server.port):
        result = serve(server.config_path, server.env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{server.port}" in lines[0] and "Address already in use" in lines[0]


def test_start_with_a_bad_config_fails_with_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[smtp]\nworkrs = 3\n")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    # A directory stands for any file that exists but cannot be read (as root, modes do not stop reads).
    for path, expected in ((bad, "smtp.workrs"), (binary, "not UTF-8"), (tmp_path, "Is a directory")):
        result = serve(path, dict(os.environ))
        assert result.returncode == 2
        assert "Traceback" not in result.stderr + result.stdout
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr


def notify_listener(tmp_path: Path) -> socket.socket:
    """A stand-in for systemd's notify socket: each sd_notify message is one datagram."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(15)
    return listener


@contextmanager
def occupied(port: int = 0) -> Iterator[socket.socket]:
    """A listener on 127.0.0.1 without SO_REUSEPORT, so fastmta's sockets cannot join it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock


def rewrite_listen(server: Server, addresses: list[str]) -> None:
    settings = server.settings
    settings["smtp"]["listen"] = addresses
    server.config_path.write_text(tomli_w.dumps(settings))


def wait_for_log_line(server: Server, text: str) -> str:
    deadline = time.monotonic() + 15
    while not (lines := [line for line in server.log().splitlines() if text in line]):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    return lines[0]


def one_message(port: int) -> None:
    """A whole SMTP transaction, from greeting to QUIT."""
    client = Raw(port)
    assert client.greeting.startswith(b"220")
    assert client.command(b"EHLO reload.test").startswith(b"250")
    assert client.command(b"MAIL FROM:<a@example.com>").startswith(b"250")
    assert client.command(b"RCPT TO:<b@example.org>").startswith(b"250")
    assert client.command(b"DATA").startswith(b"354")
    client.send(b"Subject: reload\r\n\r\nbody\r\n.\r\n")
    queued_id(client.reply())
    assert client.command(b"QUIT").startswith(b"221")
    client.close()


def serve(config_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastmta", "serve", "--config", str(config_path)],
        capture_output=True, text=True, env=env, timeout=60,
    )


def test_sd_notify_ready_and_stopping(make_server, tmp_path) -> None:
    listener = notify_listener(tmp_path)
    server = make_server(env={"NOTIFY_SOCKET": listener.getsockname()})
    ready = listener.recv(4096).decode()
    assert "READY=1" in ready and "STATUS=" in ready
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    assert "RELOADING=1" in listener.recv(4096).decode()
    assert "READY=1" in listener.recv(4096).decode()
    assert server.stop() == 0
    assert "STOPPING=1" in listener.recv(4096).decode()
    listener.close()


def test_check_config(tmp_path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[smtp]\nlisten = ["127.0.0.1:2626"]\nworkers = 3\n')
    result = subprocess.run(
        [sys.executable, "-m", "fastmta", "check-config", "--config", str(good)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "SMTP_MAX_MESSAGE_SIZE": "12345"},
    )
    assert result.returncode == 0, result.stderr
    assert 'listen = [\n    "127.0.0.1:2626",\n]' in result.stdout
    assert "max_message_size = 12345" in result.stdout and "workers = 3" in result.stdout
    for text, expected in (
        ("[smtp]\nworkrs = 3\n", "smtp.workrs"),
        ("[smtp]\nworkers = 'many'\n", "smtp.workers"),
        ("[smtp]\nmynetworks = ['nonsense']\n", "smtp.mynetworks"),
        ('[[routes]]\nmatch = ["*"]\nkind = "smarthost"\n', "routes[0].host"),
        ("[smtp\n", "not valid TOML"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        result = subprocess.run(
            [sys.executable, "-m", "fastmta", "check-config", "--config", str(bad)], capture_output=True, text=True
        )
        assert result.returncode == 2 and expected in result.stderr, (text, result.stderr)


def test_queue_commands_with_server_stopped(make_server) -> None:
    server = make_server()
    client = Raw(server.port)
    client.command(b"EHLO cli.test")
    client.command(b"MAIL FROM:<a@example.com>")
    client.command(b"RCPT TO:<b@example.org>")
    client.command(b"DATA")
    client.send(b"Subject: cli\r\n\r\nbody\r\n.\r\n")
    message_id = queued_id(client.reply())
    client.close()
    assert server.stop() == 0
    assert "<b@example.org>  queued" in server.cli("queue", "list").stdout.decode()
    assert server.cli("queue", "hold", message_id).stdout.decode().strip() == f"{message_id}: held"
    assert json.loads(server.cli("queue", "list", "--json").stdout)[0]["state"] == "held"
    retried = server.cli("queue", "retry", message_id)
    assert retried.returncode == 1 and b"held; release it" in retried.stderr
    assert server.cli("queue", "release", message_id).returncode == 0
    assert server.cli("queue", "retry", message_id).stdout.decode().strip() == f"{message_id}: already due"
    assert json.loads(server.cli("queue", "show", message_id).stdout)["state"] == "active"
    assert server.cli("queue", "delete", message_id).returncode == 0
    assert server.cli("queue", "show", message_id).returncode == 1
    assert json.loads(server.cli("queue", "list", "--json").stdout) == []


def test_user_commands(tmp_path) -> None:
    server = Server(tmp_path, {})
    assert server.cli("user", "add", "Carol", "--admin", "--password-stdin", input=b"pw1\n").returncode == 0
    assert server.cli("user", "add", "carol", "--password-stdin", input=b"pw\n").returncode == 1
    assert server.cli("user", "verify", "carol", "--password-stdin", input=b"pw1\n").returncode == 0
    assert server.cli("user", "verify", "carol", "--password-stdin", input=b"nope\n").returncode != 0
    assert server.cli("user", "passwd", "carol", "--password-stdin", input=b"pw2\n").returncode == 0
    assert server.cli("user", "verify", "carol", "--password-stdin", input=b"pw2\n").returncode == 0
    assert "disabled" in server.cli("user", "disable", "carol").stdout.decode()
    assert server.cli("user", "verify", "carol", "--password-stdin", input=b"pw2\n").returncode != 0
    assert "disabled" not in server.cli("user", "enable", "carol").stdout.decode()
    assert server.cli("user", "verify", "carol", "--password-stdin", input=b"pw2\n").returncode == 0
    info = server.cli("user", "info", "carol")
    assert info.returncode == 0 and info.stdout.decode().startswith("carol")
    assert server.cli("user", "quota", "carol", "500").returncode == 0
    listed = json.loads(server.cli("user", "list", "--json").stdout)
    assert listed[0]["username"] == "carol" and listed[0]["quota"] == 500 and listed[0]["admin"] is True
    assert listed[0]["password_hash"] == ""
    assert server.cli("user", "delete", "carol").returncode == 0
    assert server.cli("user", "info", "carol").returncode == 1
