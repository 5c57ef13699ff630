"""The supervisor: opens the listening sockets, forks the children, restarts the ones that die, and handles signals.

Fork hygiene lives here: the supervisor opens no LMDB environment, event loop or thread, so every
child starts clean and opens its own. Signals are blocked and taken synchronously with
sigtimedwait, so the supervisor is one plain loop with no handlers racing it.

SIGTERM/SIGINT drain and stop (exit 0); SIGHUP reloads the config and replaces the workers
while the listening sockets stay open, so no connection is refused during a reload. A reload is all
or nothing: a config that does not load, or a listener that cannot be bound, leaves everything
running as it was, with one log line and an sd_notify STATUS saying why.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from fastmta import child, children, logs, metrics
from fastmta import config as config_module
from fastmta.children import ChildRecord
from fastmta.config import Config, ConfigError
from fastmta.listeners import ListenError, Listeners, ListenerSocket
from fastmta.smtp import worker as smtp_worker

log = logging.getLogger("fastmta.supervisor")

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_RESTART_DELAY_FIRST = 0.1
_RESTART_DELAY_MAX = 30.0
# A child that lived this long before dying is treated as a fresh failure, not a crash loop.
_HEALTHY_AFTER = 30.0
# A dead worker's sockets keep their share of new connections waiting for its successor; when that
# successor is throttled to start later than this and other workers are serving, the sockets are
# closed instead (the others take every new connection meanwhile) and bound afresh for it.
_KEEP_SOCKETS_FOR = 1.0
ADMIN = "admin"
EVENTS = "events"


def _admin_role(config: Config, name: str) -> int:
    # Imported in the child: the HTTP server's runtime never exists in the supervisor.
    from fastmta.admin import server

    return server.run(config, name)


def _delivery_role(config: Config, name: str) -> int:
    from fastmta.delivery import runner

    return runner.run(config, name)


def _events_role(config: Config, name: str) -> int:
    # Accepting mail comes first: the events process runs on what SMTP and delivery leave of the CPUs.
    # SCHED_IDLE rather than nice 19: a waking worker takes a CPU this process is on at once, and is
    # sent to it as to an idle one. When the others keep every CPU busy the sinks fall behind (the
    # outbox holds their events, on disk) and catch up when there is time again. The threads it starts
    # inherit the policy. Set before the imports: those of the sinks (SQLAlchemy's above all) take a
    # tenth of a CPU second, which a restart under load would otherwise take from ingress.
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    from fastmta.events import runner, sinks

    return runner.run(config, name, sinks.configured)


def notify(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, when systemd set it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


@dataclass
class ChildSpec:
    name: str
    role: Callable[..., int]
    slot: int | None = None  # an SMTP worker's place in Listeners.per_slot; its role gets the sockets
    sockets: list[ListenerSocket] = field(default_factory=list)
    failures: int = 0
    started_at: float = 0.0
    restart_at: float = 0.0
    since: float = 0.0  # wall clock, for children.json


class Supervisor:
    def __init__(self, config: Config, config_path: str | None, listeners: Listeners) -> None:
        self.config = config
        self.config_path = config_path
        self.listeners = listeners
        self.children: dict[int, ChildSpec] = {}
        self.retiring: set[int] = set()
        self.waiting: list[ChildSpec] = []
        self.stopping = False
        self.unpublished = False  # children.json is behind (its last write failed)

    def specs(self) -> list[ChildSpec]:
        specs = []
        for slot, sockets in enumerate(self.listeners.per_slot):
            specs.append(ChildSpec(f"smtp-{slot}", smtp_worker.run, slot, sockets))
        specs += [ChildSpec(f"delivery-{n}", _delivery_role) for n in range(self.config.delivery.workers)]
        if self.config.events_wanted:
            specs.append(ChildSpec(EVENTS, _events_role))
        return specs

    def admin_specs(self) -> list[ChildSpec]:
        return [ChildSpec(ADMIN, _admin_role)] if self.config.admin.enabled else []

    def publish(self) -> None:
        """Writes children.json; on a full or failing disk it says so once and is tried again each turn."""
        records = [ChildRecord(spec.name, pid, spec.since) for pid, spec in self.children.items()]
        try:
            children.write(self.config.data_dir, records)
        except OSError as exc:
            if not self.unpublished:
                log.warning("cannot write %s, will retry: %s", children.FILE_NAME, exc.strerror or exc)
            self.unpublished = True
            return
        self.unpublished = False

    def spawn(self, spec: ChildSpec) -> None:
        config = self.config
        if spec.slot is not None and spec.sockets and spec.sockets[0].sock.fileno() < 0:
            try:
                spec.sockets = self.listeners.rebind(spec.slot)
            except ListenError as exc:
                self.retry_later(spec, str(exc))
                return
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            self.listeners.close_except(spec.sockets)
            child.run(spec.name, config, spec.role, supervisor, *([spec.sockets] if spec.slot is not None else []))
        spec.started_at = time.monotonic()
        spec.since = time.time()
        self.children[pid] = spec
        self.publish()
        log.debug("started %s as pid %d", spec.name, pid)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.retiring.discard(pid)
            metrics.process_dead(pid)
            spec = self.children.pop(pid, None)
            self.publish()
            if spec is None or self.stopping:
                continue
            self.retry_later(spec, f"(pid {pid}) exited with {os.waitstatus_to_exitcode(status)}")

    def retry_later(self, spec: ChildSpec, why: str) -> None:
        """Another start after a delay that doubles with each quick failure, as Postfix's master throttles."""
        if time.monotonic() - spec.started_at > _HEALTHY_AFTER:
            spec.failures = 0
        spec.failures += 1
        delay = min(_RESTART_DELAY_FIRST * 2 ** (spec.failures - 1), _RESTART_DELAY_MAX)
        spec.restart_at = time.monotonic() + delay
        others_serve = any(other.slot is not None and other is not spec for other in self.children.values())
        if (
            spec.slot is not None
            and delay > _KEEP_SOCKETS_FOR
            and others_serve
            and self.listeners.per_slot[spec.slot] is spec.sockets
        ):
            for listener in spec.sockets:
                listener.sock.close()
        log.warning("%s %s; restarting in %.1fs", spec.name, why, delay)
        if delay >= _RESTART_DELAY_MAX:
            log.error("%s keeps failing; throttled to one restart per %.0fs", spec.name, delay)
        notify(f"STATUS={spec.name} {why}, restarting in {delay:.1f}s")
        self.waiting.append(spec)

    def restart_due(self) -> None:
        now = time.monotonic()
        due = [spec for spec in self.waiting if spec.restart_at <= now]
        self.waiting = [spec for spec in self.waiting if spec.restart_at > now]
        for spec in due:
            self.spawn(spec)

    def status(self) -> str:
        return f"STATUS=serving with {len(self.children)} children"

    def reload(self) -> None:
        """All or nothing: the new config is read and its new sockets bound before anything changes.

        On any failure the running config, its children and its sockets stay as they were.
        """
        # RELOADING=1 then READY=1, as systemd expects of a service that reloads on SIGHUP.
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            config = config_module.load(self.config_path)
            listeners = self.listeners if self.listeners.fits(config) else Listeners.open(config)
        except (ConfigError, ListenError) as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            notify(f"READY=1\nSTATUS=reload failed: {exc}")
            return
        old_pids = [pid for pid, spec in self.children.items() if spec.name != ADMIN]
        # The admin lists the DKIM keys (GET /api/v1/dkim) from its config.
        admin_changed = (config.admin, config.server, config.dkim) != (self.config.admin, self.config.server, self.config.dkim)
        self.config = config
        if listeners is not self.listeners:
            # The old workers hold their own copies of the old sockets until they finish draining.
            self.listeners.close()
            self.listeners = listeners
        self.waiting = [spec for spec in self.waiting if spec.name == ADMIN]
        for spec in self.specs():
            self.spawn(spec)
        for pid in old_pids:
            self.retiring.add(pid)
            self.children.pop(pid, None)
            _kill(pid, signal.SIGTERM)
        if admin_changed:
            self.replace_admin()
        log.info("configuration reloaded; %d workers replaced", len(old_pids))
        notify(f"READY=1\n{self.status()}")

    def replace_admin(self) -> None:
        """The admin keeps running across reloads unless its own settings changed.

        Its successor waits a moment for the old one to let go of the port; if it starts too
        early it fails to bind and the usual restart backoff tries again.
        """
        self.waiting = [spec for spec in self.waiting if spec.name != ADMIN]
        for pid, spec in list(self.children.items()):
            if spec.name == ADMIN:
                self.retiring.add(pid)
                self.children.pop(pid)
                _kill(pid, signal.SIGTERM)
        self.waiting += [replace(spec, restart_at=time.monotonic() + 0.5) for spec in self.admin_specs()]

    def stop(self) -> None:
        self.stopping = True
        notify("STOPPING=1")
        # Our copies of the sockets would keep them in the kernel's SO_REUSEPORT group while the
        # workers drain: new clients would be accepted by nobody. Closed, they are refused at once.
        self.listeners.close()
        pids = set(self.children) | self.retiring
        for pid in pids:
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.shutdown_grace_seconds + 10
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                signal.sigtimedwait({signal.SIGCHLD}, 0.1)
        else:
            for pid in pids:
                _kill(pid, signal.SIGKILL)

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        for spec in self.specs() + self.admin_specs():
            self.spawn(spec)
        log.info("fastmta started: %d smtp workers on %s", len(self.listeners.per_slot), self.listeners.describe())
        notify(f"READY=1\n{self.status()}\nMAINPID={os.getpid()}")
        while True:
            received = signal.sigtimedwait(_SIGNALS, 0.5 if self.waiting or self.unpublished else 5.0)
            signum = received.si_signo if received else None
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("stopping on %s", signal.Signals(signum).name)
                self.stop()
                log.info("stopped")
                return 0
            if signum == signal.SIGHUP:
                self.reload()
            self.reap()
            self.restart_due()
            if self.unpublished:
                self.publish()


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def run(config_path: str | None) -> int:
    config = config_module.load(config_path)
    logs.setup(config.server.log_level, config.server.log_format, "supervisor")
    # The sockets first: a start that cannot listen ends before anything else is touched (the
    # metrics directory of this data_dir may belong to a running instance), with one line saying why.
    try:
        listeners = Listeners.open(config)
    except ListenError as exc:
        log.error("cannot start: %s", exc)
        return 1
    config.data_dir.mkdir(parents=True, exist_ok=True)
    metrics_directory = metrics.prepare(config.data_dir)
    supervisor = Supervisor(config, config_path, listeners)
    try:
        return supervisor.run()
    except Exception:
        # The children would end with us anyway (child.py); stopped first, they drain while their
        # metrics directory still exists.
        log.exception("supervisor failed; stopping")
        supervisor.stop()
        return 1
    finally:
        # Only the supervisor gets here: children end in os._exit.
        shutil.rmtree(metrics_directory, ignore_errors=True)
