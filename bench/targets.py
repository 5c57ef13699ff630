"""The servers compare.py measures: how each starts on a loopback port, how durable it is, how it stops."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from postfix import Instance

BENCH = Path(__file__).resolve().parent
READY_SECONDS = 20.0
STOP_SECONDS = 30.0


class NotAvailable(Exception):
    """This target cannot run this scenario here; the message says why."""


@dataclass
class Running:
    """A started target: its port, the root of the process tree charged for CPU, and how to stop it."""

    name: str
    port: int
    pid: int
    process: subprocess.Popen[bytes] | None = None
    postfix: Instance | None = None
    cleanup: Path | None = None
    companions: tuple[subprocess.Popen[bytes], ...] = ()  # what the server needs beside it, stopped after it

    def stop(self) -> None:
        if self.postfix is not None:
            self.postfix.stop()
        for process in filter(None, (self.process, *self.companions)):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.cleanup is not None:
            shutil.rmtree(self.cleanup, ignore_errors=True)


def beside(companion: subprocess.Popen[bytes], start: Callable[[], Running]) -> Running:
    """A server started with a process it needs beside it, which stops with it, or at once if it fails to start."""
    try:
        running = start()
    except BaseException:
        companion.kill()
        companion.wait()
        raise
    running.companions = (companion,)
    return running


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_greeting(port: int, process: subprocess.Popen[bytes] | None = None) -> None:
    """Until the port answers 220; fails early if the server process died."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before answering")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no SMTP greeting on 127.0.0.1:{port} within {READY_SECONDS:.0f} s")


def spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until the port accepts a connection (a server behind PROXY protocol greets only after a header)."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} within {READY_SECONDS:.0f} s")


def started(
    name: str, port: int, process: subprocess.Popen[bytes], cleanup: Path | None = None, probe: bool = True
) -> Running:
    """Once the server greets, or with `probe` false once its port accepts."""
    running = Running(name, port, process.pid, process=process, cleanup=cleanup)
    try:
        (wait_for_greeting if probe else wait_for_port)(port, process)
    except BaseException:
        running.stop()
        raise
    return running


class Target:
    """A server under test. `durability` is printed next to every number measured on it."""

    name = ""
    durability = ""
    relays = False  # can it run the end-to-end relay scenario?

    def missing(self) -> str | None:
        """Why this target cannot run on this machine at all, or None."""
        return None

    def start(self, workdir: Path, port: int, relay_port: int | None = None) -> Running:
        raise NotImplementedError


class FastMTA(Target):
    name = "fastmta"
    durability = "fsync before 250"
    relays = True
    server_settings: tuple[str, ...] = ()
    smtp_settings: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()  # further config lines after the others, whole sections

    def executable(self) -> str | None:
        beside_python = Path(sys.executable).parent / "fastmta"
        return str(beside_python) if beside_python.exists() else shutil.which("fastmta")

    def missing(self) -> str | None:
        return None if self.executable() else "the fastmta command is not installed (make dev)"

    def config(self, workdir: Path, port: int, relay_port: int | None, admin_port: int | None = None) -> str:
        lines = [
            "[server]",
            f'data_dir = "{workdir / "var"}"',
            *self.server_settings,
            "[smtp]",
            f'listen = ["127.0.0.1:{port}"]',
            'mynetworks = ["127.0.0.0/8"]',
            *self.smtp_settings,
            "[admin]",
            f'listen = "127.0.0.1:{admin_port or free_port()}"',
            "[delivery]",
            f"workers = {1 if relay_port else 0}",
        ]
        if relay_port:
            lines += [
                "[[routes]]",
                'match = ["*"]',
                'kind = "smarthost"',
                'host = "127.0.0.1"',
                f"port = {relay_port}",
                'tls = "none"',
            ]
        return "\n".join(lines + list(self.sections)) + "\n"

    def start(
        self, workdir: Path, port: int, relay_port: int | None = None, admin_port: int | None = None, probe: bool = True
    ) -> Running:
        executable = self.executable()
        assert executable is not None
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "fastmta.toml"
        config.write_text(self.config(workdir, port, relay_port, admin_port))
        self.prepare(executable, config)
        process = spawn([executable, "serve", "--config", str(config)], workdir / "fastmta.log")
        return started(self.name, port, process, cleanup=workdir / "var", probe=probe)

    def prepare(self, executable: str, config: Path) -> None:
        """What a variant needs in place before its server starts with `config`."""


class FastMTAWithoutMetrics(FastMTA):
    """fastmta with `[server] metrics = false`: beside `fastmta`, what the instrumentation costs."""

    name = "fastmta-nometrics"
    durability = "fsync before 250; metrics off"
    server_settings = ("metrics = false",)


class FastMTAWithHistory(FastMTA):
    """fastmta with `[history] enabled = true`: beside `fastmta`, what the outbox and the events process cost."""

    name = "fastmta-history"
    durability = "fsync before 250; events to history"
    sections = ("[history]", "enabled = true")


class FastMTAWithDkim(FastMTA):
    """fastmta signing what it relays with a key for the sender's domain: beside `fastmta`, what DKIM costs."""

    name = "fastmta-dkim-rsa"
    durability = "fsync before 250; DKIM rsa-sha256 (2048)"
    algorithm = "rsa"
    domain = "example.com"  # compare.py's SENDER's
    sections = ("[[dkim.keys]]", f'domain = "{domain}"', 'selector = "bench"')

    def prepare(self, executable: str, config: Path) -> None:
        keygen = [executable, "dkim", "keygen", self.domain, "bench", "--algorithm", self.algorithm, "--config", str(config)]
        subprocess.run(keygen, check=True, capture_output=True)


class FastMTAWithEd25519(FastMTAWithDkim):
    name = "fastmta-dkim-ed25519"
    durability = "fsync before 250; DKIM ed25519-sha256"
    algorithm = "ed25519"


class FastMTAWithWebhooks(FastMTA):
    """fastmta posting every event to a webhook receiver that answers at once (webhook_sink.py), 500 to a request
    (the most a webhook's batch takes, as a high-volume receiver is set up): beside `fastmta`, what the outbox
    and the events process cost without history's SQL."""

    name = "fastmta-webhooks"
    durability = "fsync before 250; events to a webhook"

    def start(self, workdir: Path, port: int, relay_port: int | None = None, admin_port: int | None = None) -> Running:
        workdir.mkdir(parents=True, exist_ok=True)
        receiver_port = free_port()
        receiver = spawn([sys.executable, str(BENCH / "webhook_sink.py"), f"127.0.0.1:{receiver_port}"],
                         workdir / "webhook_sink.log")
        self.sections = ("[[events.webhooks]]", f'url = "http://127.0.0.1:{receiver_port}/events"', "batch = 500")
        return beside(receiver, lambda: super(FastMTAWithWebhooks, self).start(workdir, port, relay_port, admin_port))


# Per-client limits high enough never to refuse, counted for every client (loopback included):
# beside each other, fastmta-limits and fastmta-cluster show what counting them in Redis costs.
COUNTED_LIMITS = ("[limits]", "exempt_mynetworks = false", "messages_per_hour = 100000000",
                   "recipients_per_hour = 100000000", "connections_per_minute = 100000000")


class FastMTAWithLimits(FastMTA):
    """fastmta counting per-client limits in state.lmdb (a node without a cluster)."""

    name = "fastmta-limits"
    smtp_settings = ("max_connections_per_ip = 100000",)
    durability = "fsync before 250; limits in state.lmdb"
    sections = COUNTED_LIMITS


class FastMTAInCluster(FastMTA):
    """fastmta counting the same limits in a redis-server of its own on loopback: cluster mode, one node."""

    name = "fastmta-cluster"
    durability = "fsync before 250; limits in Redis"
    redis_port = 0  # of the last start
    smtp_settings = FastMTAWithLimits.smtp_settings

    def missing(self) -> str | None:
        if not shutil.which("redis-server"):
            return "redis-server is not installed (apt-get install redis-server)"
        return super().missing()

    def start(self, workdir: Path, port: int, relay_port: int | None = None, admin_port: int | None = None) -> Running:
        workdir.mkdir(parents=True, exist_ok=True)
        redis_port = self.redis_port = free_port()
        redis = spawn(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(workdir),
             "--save", "", "--appendonly", "no"],
            workdir / "redis.log",
        )  # fmt: skip
        self.sections = (*COUNTED_LIMITS, "[cluster]", f'redis_url = "redis://127.0.0.1:{redis_port}/0"')

        def ready_then_start() -> Running:
            wait_for_redis(redis_port, redis)
            return super(FastMTAInCluster, self).start(workdir, port, relay_port, admin_port)

        return beside(redis, ready_then_start)


def wait_for_redis(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server did not answer on 127.0.0.1:{port}")


class BaselineBuild(FastMTA):
    """Another build of fastmta (an earlier commit, say) beside this one, so a change is measured in one run.

    BASELINE_FASTMTA names its `fastmta` command, e.g. a venv made from `git worktree add /tmp/base <commit>`.
    """

    def executable(self) -> str | None:
        command = os.environ.get("BASELINE_FASTMTA", "")
        return command if command and Path(command).exists() else None

    def missing(self) -> str | None:
        return None if self.executable() else "set BASELINE_FASTMTA to the fastmta command of the build to compare with"


class FastMTABaseline(BaselineBuild):
    name = "fastmta-baseline"
    durability = "fsync before 250 (baseline build)"


class FastMTABaselineInCluster(BaselineBuild, FastMTAInCluster):
    """fastmta-cluster on the baseline build: beside fastmta-cluster, what a change to cluster mode did."""

    name = "fastmta-baseline-cluster"
    durability = "fsync before 250; limits in Redis (baseline build)"

    def missing(self) -> str | None:
        return BaselineBuild.missing(self) or FastMTAInCluster.missing(self)


class FastMTABaselineWithWebhooks(BaselineBuild, FastMTAWithWebhooks):
    """fastmta-webhooks on the baseline build: beside fastmta-webhooks, what a change to the events' path did."""

    name = "fastmta-baseline-webhooks"
    durability = "fsync before 250; events to a webhook (baseline build)"

    def missing(self) -> str | None:
        return BaselineBuild.missing(self) or FastMTAWithWebhooks.missing(self)


class Postfix(Target):
    name = "postfix"
    durability = "fsync before 250 (queue file)"
    relays = True

    def missing(self) -> str | None:
        return None if shutil.which("postfix") else "Postfix is not installed (apt-get install postfix)"

    def start(self, workdir: Path, port: int, relay_port: int | None = None) -> Running:
        instance = Instance(workdir / "postfix", port, "relay" if relay_port else "hold", relay_port)
        pid = instance.start()
        running = Running(self.name, port, pid, postfix=instance)
        try:
            wait_for_greeting(port)
        except BaseException:
            running.stop()
            raise
        return running


class Aiosmtpd(Target):
    name = "aiosmtpd"
    durability = "none: discards"

    def missing(self) -> str | None:
        try:
            import aiosmtpd  # noqa: F401
        except ImportError:
            return "aiosmtpd is not installed (pip install -e '.[bench]')"
        return None

    def start(self, workdir: Path, port: int, relay_port: int | None = None) -> Running:
        workdir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(BENCH / "aiosmtpd_discard.py"), f"127.0.0.1:{port}"]
        return started(self.name, port, spawn(command, workdir / "aiosmtpd.log"))


class SmtpSink(Target):
    name = "smtp-sink"
    durability = "none: discards (protocol limit)"

    def missing(self) -> str | None:
        return None if shutil.which("smtp-sink") else "smtp-sink is not installed (it comes with postfix)"

    def start(self, workdir: Path, port: int, relay_port: int | None = None) -> Running:
        workdir.mkdir(parents=True, exist_ok=True)
        command = ["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "1024"]  # -u: it refuses to run as root
        return started(self.name, port, spawn(command, workdir / "smtp-sink.log"))


TARGETS: dict[str, Target] = {
    t.name: t for t in (FastMTA(), Postfix(), Aiosmtpd(), SmtpSink(), FastMTAWithoutMetrics(), FastMTAWithHistory(),
                           FastMTAWithDkim(), FastMTAWithEd25519(), FastMTAWithWebhooks(), FastMTABaseline(),
                           FastMTAWithLimits(), FastMTAInCluster(), FastMTABaselineInCluster(), FastMTABaselineWithWebhooks())
}
# compare.py's default run; the others are asked for by name.
DEFAULT_TARGETS = ("fastmta", "postfix", "aiosmtpd", "smtp-sink")
