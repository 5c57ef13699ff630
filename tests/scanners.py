"""Private ClamAV and SpamAssassin daemons for tests and benchmarks: each on an ephemeral loopback port, in its own directory.

clamd (Debian `clamav-daemon`) loads one signature the test writes itself, an MD5 hash signature of
the EICAR test file, so nothing is downloaded; spamd (Debian `spamd`) runs its shipped rules with
local tests only (no DNS), which score GTUBE as spam. As root spamd runs its children as nobody.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port

# The anti-virus test file (eicar.org) and SpamAssassin's Generic Test for Unsolicited Bulk Email.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SIGNATURE = "Eicar-Test-Signature"
START_SECONDS = 60.0


def mail(subject: str, body: bytes, content_type: str = "text/plain") -> bytes:
    """A message with every header SpamAssassin looks for, so that only its body can make it spam."""
    return (
        f"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: {email.utils.make_msgid(domain='example.com')}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n"
    ).encode() + body


def clean() -> bytes:
    return mail("lunch", b"Shall we meet for lunch tomorrow at noon, at the usual place?\r\n")


def with_gtube() -> bytes:
    return mail("an offer", GTUBE + b"\r\n")


def with_eicar_attached() -> bytes:
    """EICAR as a base64 attachment: clamd decodes the part and matches its hash."""
    encoded = base64.encodebytes(EICAR).replace(b"\n", b"\r\n")
    parts = (
        b"--part\r\nContent-Type: text/plain\r\n\r\nHere is the file.\r\n--part\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=eicar.com\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--part--\r\n"
    )
    return mail("the file you asked for", parts, "multipart/mixed; boundary=part")


def _program(name: str) -> str | None:
    """Debian puts the daemons in /usr/sbin, which a user's PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin")


def missing(program: str, package: str) -> str | None:
    """Why the daemon cannot run here, or None."""
    return None if _program(program) else f"{program} is not installed (apt-get install {package})"


class Daemon:
    """A daemon started in the background: ready() waits until it answers; stop, pause and resume for fault tests."""

    def __init__(self, command: list[str], port: int, log: Path, ping: bytes, pong: bytes) -> None:
        self.name = Path(command[0]).name
        self.port = port
        self.log = log
        self._ping, self._pong = ping, pong
        self._ready = False
        self._started = time.monotonic()
        with log.open("ab") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=output, stdin=subprocess.DEVNULL)

    def ready(self) -> Daemon:
        """Returns once it answers its ping; raises with its log when it does not within START_SECONDS."""
        while not self._ready:
            self._ready = self._answers()
            if self._ready:
                break
            if self.process.poll() is not None or time.monotonic() > self._started + START_SECONDS:
                self.stop()
                raise RuntimeError(f"{self.name} did not start: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(self._ping)
                return self._pong in sock.recv(256)
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, nothing is answered."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_clamd(directory: Path) -> Daemon:
    database = directory / "db"
    database.mkdir(parents=True)
    (database / "test.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:{SIGNATURE}\n")
    port = free_port()
    config = directory / "clamd.conf"
    config.write_text(
        f"Foreground yes\nTCPSocket {port}\nTCPAddr 127.0.0.1\nDatabaseDirectory {database}\n"
        f"TemporaryDirectory {directory}\nPidFile {directory / 'clamd.pid'}\nLogFile {directory / 'clamd.log'}\n"
    )
    command = [_path_of("clamd"), "--config-file", str(config)]
    return Daemon(command, port, directory / "clamd.out", b"zPING\0", b"PONG").ready()


def start_spamd(directory: Path) -> Daemon:
    """Not ready yet: spamd loads its rules for seconds, which the caller may spend on other work first."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        _path_of("spamd"), "--listen", f"127.0.0.1:{port}", "--pidfile", str(directory / "spamd.pid"), "--nouser-config",
        "--local", "--helper-home-dir", str(directory), "--syslog", "stderr", "--min-children", "1",
        "--max-children", "2",
    ]  # fmt: skip
    if os.geteuid() == 0:
        command += ["--username", "nobody"]  # spamd will not run its children as root
    return Daemon(command, port, directory / "spamd.log", b"PING SPAMC/1.5\r\n\r\n", b"PONG")


def _path_of(name: str) -> str:
    found = _program(name)
    assert found is not None, f"{name} is not installed: ask missing() first"
    return found


@contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    try:
        yield daemon
    finally:
        daemon.stop()
