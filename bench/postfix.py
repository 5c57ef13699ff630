"""A private, loopback-only Postfix instance for benchmarks: its own config, queue and data directories.

It uses the Debian package's binaries and leaves the system's /etc/postfix and its queue alone. Two modes:
`hold` measures ingress with a durable queue (every message is fsync'd, then parked on hold, never
delivered); `relay` sends every message on to 127.0.0.1:RELAY_PORT (a sink), so delivery is measured too.
Postfix fsyncs each queue file before answering 250, as shipped. Logging goes to syslog, as shipped; with
no syslog daemon in a container, the log lines are dropped.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MODES = ("hold", "relay")
START_SECONDS = 15.0

# The services a Postfix 3.x master runs, without chroot (a chroot would need copies of system files in the
# queue directory) and without the stock port-25 listener; only the benchmark port listens.
SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
"""


@dataclass(frozen=True)
class Instance:
    """Where a private Postfix lives and how it is set up."""

    root: Path
    port: int
    mode: str = "hold"
    relay_port: int | None = None

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    def main_cf(self) -> str:
        lines = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue_dir}",
            f"data_directory = {self.root / 'data'}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "myhostname = postfix.bench.invalid",
            "mydomain = bench.invalid",
            "mydestination =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            "smtpd_peername_lookup = no",  # no reverse DNS of 127.0.0.1 per connection: we measure mail, not DNS
            "smtpd_tls_security_level = none",
            "smtp_tls_security_level = none",
            "local_recipient_maps =",
            "alias_maps =",
            "alias_database =",
            "biff = no",
            "smtp_dns_support_level = disabled",
            "default_process_limit = 200",
        ]
        if self.mode == "relay":
            lines.append(f"relayhost = [127.0.0.1]:{self.relay_port}")
        return "\n".join(lines) + "\n"

    def master_cf(self) -> str:
        hold = " -o smtpd_data_restrictions=check_client_access,static:HOLD" if self.mode == "hold" else ""
        return f"127.0.0.1:{self.port} inet n - n - - smtpd{hold}\n" + SERVICES

    def write(self) -> None:
        """A fresh instance: any earlier queue under root is removed first."""
        if self.mode == "relay" and self.relay_port is None:
            raise ValueError("relay mode needs a relay port")
        if self.root.exists():
            shutil.rmtree(self.root)
        self.config_dir.mkdir(parents=True)
        self.queue_dir.mkdir()  # Postfix creates what lies inside, owned by its user, at start
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(self.master_cf())

    def postfix(self, *command: str) -> None:
        result = subprocess.run(["postfix", "-c", str(self.config_dir), *command], capture_output=True, text=True)
        if result.returncode != 0:
            why = result.stderr.strip() or result.stdout.strip() or "it logs why to syslog, or to a terminal"
            raise RuntimeError(f"postfix -c {self.config_dir} {' '.join(command)} failed: {why}")

    def start(self) -> int:
        """Write the config, start the master, and return its PID once the port answers."""
        self.write()
        self.postfix("start")
        return self.master_pid()

    def master_pid(self) -> int:
        pid_file = self.queue_dir / "pid" / "master.pid"
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            try:
                return int(pid_file.read_text().strip())
            except (OSError, ValueError):
                time.sleep(0.05)
        raise TimeoutError(f"no Postfix master PID in {pid_file}")

    def stop(self, remove: bool = True) -> None:
        """Stop the master (it stops its children) and, unless asked not to, remove everything."""
        if (self.queue_dir / "pid" / "master.pid").exists():
            self.postfix("stop")
        if remove and self.root.exists():
            shutil.rmtree(self.root)

    def queued(self) -> int:
        """Messages still in the queue (held, deferred or in flight), counted as queue files."""
        return sum(
            1
            for name in ("incoming", "active", "deferred", "hold")
            for path in (self.queue_dir / name).rglob("*")
            if path.is_file()
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="postfix.py", description="Set up or tear down a private loopback Postfix.")
    p.add_argument("action", choices=("up", "down"))
    p.add_argument("root", type=Path, help="directory holding the instance's config, queue and data")
    p.add_argument("--port", type=int, default=10025, help="loopback SMTP port (default 10025)")
    p.add_argument("--mode", choices=MODES, default="hold", help="hold: ingress only; relay: on to --relay-port")
    p.add_argument("--relay-port", type=int, help="the sink's port on 127.0.0.1 (relay mode)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    instance = Instance(args.root.resolve(), args.port, args.mode, args.relay_port)  # Postfix needs absolute paths
    if args.action == "up":
        pid = instance.start()
        print(f"postfix ({args.mode}) on 127.0.0.1:{args.port}, master PID {pid}; stop: {sys.argv[0]} down {args.root}")
    else:
        instance.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
