"""Shared test harness: the real `fastmta serve` as a subprocess on ephemeral ports, and a test certificate."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from fastmta import metrics


def installed(command: str, package: str) -> str:
    """The path of `command`; the test is skipped, saying why, when its Debian package is absent."""
    found = shutil.which(command)
    if found is None:
        pytest.skip(f"{command} is not installed (apt-get install {package})")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_greeting(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no SMTP greeting on port {port}")


def wait_for_listener(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Server:
    """A running `fastmta serve`; stop() sends SIGTERM and returns the exit code."""

    def __init__(self, tmp: Path, overrides: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.data_dir = tmp / "data"
        settings = _merge(
            {
                "server": {"hostname": "mx.test", "data_dir": str(self.data_dir), "log_level": "info"},
                "smtp": {"listen": [f"127.0.0.1:{self.port}"], "workers": 2},
                "delivery": {"workers": 0},
                # The admin process only where a test asks for it: others count the SMTP workers.
                "admin": {"listen": f"127.0.0.1:{self.admin_port}", "enabled": False},
            },
            overrides,
        )
        self.settings = settings
        self.config_path = tmp / "fastmta.toml"
        self.config_path.write_text(tomli_w.dumps(settings))
        self.log_path = tmp / "server.log"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "fastmta", *args, "--config", str(self.config_path)],
            input=input,
            capture_output=True,
            env=self.env,
            timeout=60,
        )

    def start(self) -> Server:
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fastmta", "serve", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        try:
            # Behind PROXY protocol the server greets only after the header, so just wait for the port.
            if self.settings["smtp"].get("proxy_protocol"):
                wait_for_listener(self.port)
            else:
                wait_for_greeting(self.port)
        except TimeoutError:
            self.kill()
            raise AssertionError(f"server did not start:\n{self.log()}") from None
        if self.settings["admin"]["enabled"]:
            try:
                wait_for_listener(self.admin_port)
            except TimeoutError:
                self.kill()
                raise AssertionError(f"admin did not start:\n{self.log()}") from None
        return self

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the whole process group: the supervisor and every child, like a power cut."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        self._log.close()
        # A killed supervisor cannot remove its metrics files from tmpfs; the test does.
        shutil.rmtree(metrics.directory_for(self.data_dir), ignore_errors=True)

    def children(self) -> dict[str, int]:
        """The supervisor's children by name, as it publishes them in data_dir/children.json."""
        records = json.loads((self.data_dir / "children.json").read_text())
        return {child["name"]: child["pid"] for child in records}

    def child_pids(self) -> list[int]:
        """The supervisor's workers (SMTP workers, delivery runners) alive or not yet reaped, as the kernel
        lists its children: the admin and events processes, which every server runs, are left out."""
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        others = set()
        try:
            others = {pid for name, pid in self.children().items() if name in ("admin", "events")}
        except (FileNotFoundError, json.JSONDecodeError):
            pass  # not written yet: the supervisor is still starting
        return [pid for pid in map(int, out.split()) if pid not in others]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def make(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None, start: bool = True) -> Server:
        directory = tmp_path / f"server{len(servers)}"
        directory.mkdir()
        created = Server(directory, overrides or {}, env)
        servers.append(created)
        return created.start() if start else created

    yield make
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.kill()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for mx.test / 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("mx.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server (tests/s3.py), a fake because no S3-compatible server runs offline here."""
    pytest.importorskip("moto.server", reason="moto is not installed (pip install -e '.[test]')")
    from tests import s3

    with s3.server() as endpoint:
        yield endpoint
