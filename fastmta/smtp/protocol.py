"""The asyncio shell around a Session: moves bytes between socket and state machine and carries out its actions."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING, cast

import lmdb

from fastmta.access.accounts import User
from fastmta.events import records as events
from fastmta.limits import LimitExceeded
from fastmta.queue.records import Message, new_message_id
from fastmta.queue.store import EtrnRequest, StoreFullError
from fastmta.scan.scanner import Outcome, detections
from fastmta.scan.verdict import TEMPFAIL, Verdict
from fastmta.smtp.admissions import AdmissionOutcome, counted
from fastmta.smtp.envelope import queue_record
from fastmta.smtp.session import MAINTENANCE, Admit, Close, Commit, RecordEtrn, Reserve, Scan, Session, StartTls, Step, VerifyAuth
from fastmta.smtp.tls import describe

if TYPE_CHECKING:
    from fastmta.smtp.worker import Worker

log = logging.getLogger("fastmta.smtp")

# A client may pipeline ahead while we wait for a commit, but not without bound.
_MAX_BUFFERED = 1 << 20
# After the last reply our side ends at once (FIN) and the socket closes when the client's side
# does, or after this long. Closed at once while unread input waits (a PROXY header, pipelined
# commands), the socket would make the kernel send a reset that can overtake the reply.
_LINGER_SECONDS = 2.0


class SmtpProtocol(asyncio.Protocol):
    def __init__(self, worker: Worker, listener: str, proxy_protocol: bool) -> None:
        self._worker = worker
        self._listener = listener
        self._proxy_protocol = proxy_protocol
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self.session: Session | None = None
        self._committing: Message | None = None
        self._counted = True  # false when state.lmdb could not count this connection
        self._linger: asyncio.TimerHandle | None = None
        self._auth_username = ""
        self._scanning: asyncio.Task[Outcome] | None = None
        # The scanners' last outcome, until its findings are recorded with the commit or the refusal.
        self._scanned: Outcome | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        tls = describe(transport.get_extra_info("ssl_object"))
        self.session = Session(self._worker.settings, peer[0], peer[1], self._listener, tls, self._proxy_protocol)
        self._worker.connections.add(self)
        self._worker.metrics.connections += 1
        step = self.session.start(time.monotonic())
        if isinstance(step[1], Close):  # a PROXY listener refuses peers outside proxy_trusted at once
            self._worker.metrics.rejected["proxy_trusted"] += 1
        self._apply(step)

    def data_received(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        if session.closed:
            return  # lingering: read and dropped
        self._apply(session.feed(data, time.monotonic()))
        if session.blocked and session.buffered > _MAX_BUFFERED and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._worker.connections.discard(self)
        if self._linger is not None:
            self._linger.cancel()
        if self._scanning is not None:
            self._scanning.cancel()
        if self.session is not None:
            unused = self.session.connection_lost()
            if unused is not None and self._counted:
                self._worker.release(self.session.client_ip, unused)
        self._transport = None

    def expire(self, now: float) -> None:
        """Called when the session's deadline has passed."""
        if self.session is not None:
            self._apply(self.session.expire(now))

    def shutdown(self, now: bool = False) -> None:
        if self.session is not None:
            self._apply(self.session.shutdown(now))

    def _apply(self, step: Step) -> None:
        # Reservations, and admissions outside a cluster, are answered at once, so they loop here rather than recurse.
        while True:
            out, action = step
            session = self.session
            assert session is not None
            if session.rejections:
                self._record_rejections(session)
            transport = self._transport
            if transport is None:
                return
            if out:
                transport.write(out)
            if isinstance(action, Admit):
                admitted = self._admit(session, action)
                if admitted is None:
                    return  # answered later, by _admission_answered
                step = admitted
            elif isinstance(action, Reserve):
                step = session.reserved(self._reserve(action))
            else:
                break
        if action is None:
            if self._paused and not session.blocked:
                self._paused = False
                transport.resume_reading()
            return
        if isinstance(action, Commit):
            now = time.time()
            message_id = new_message_id(now)
            settings = self._worker.settings
            message, body = queue_record(
                action.envelope, action.body, message_id, now, settings.hostname, settings.worker, action.headers, action.held
            )
            self._committing = message
            found = self._findings(message_id, message.sender) if self._scanned is not None else []
            self._worker.committer.submit((message, body, found), self._committed)
        elif isinstance(action, Scan):
            scanner = self._worker.scanner
            assert scanner is not None
            self._scanning = asyncio.ensure_future(scanner.scan(action.body))
            self._scanning.add_done_callback(self._scan_done)
        elif isinstance(action, Close):
            self._close(transport)
        elif isinstance(action, VerifyAuth):
            self._auth_username = action.username
            self._worker.run_blocking(
                self._worker.accounts.authenticate, (action.username, action.password), self._auth_verified
            )
        elif isinstance(action, RecordEtrn):
            request = EtrnRequest(action.domain, time.time(), self.session.client_ip if self.session else "")
            self._worker.run_blocking(self._worker.store.record_etrn, (request,), self._etrn_recorded)
        elif isinstance(action, StartTls):
            # Until the handshake, whatever arrives is plaintext the session must never see
            # (CVE-2011-0411); start_tls resumes reading into the TLS layer.
            transport.pause_reading()
            asyncio.ensure_future(self._start_tls())

    def _close(self, transport: asyncio.Transport) -> None:
        if self._linger is not None or transport.is_closing():
            return
        if not transport.can_write_eof():  # TLS
            transport.close()
            return
        transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(_LINGER_SECONDS, transport.abort)

    def _admit(self, session: Session, request: Admit) -> Step | None:
        """The session's next step, or None when the answer comes later (limits counted in Redis)."""
        limits = self._worker.limits
        exempt = request.known and limits.exempt(request.ip)
        if self._worker.in_maintenance:
            self._worker.metrics.rejected[MAINTENANCE] += 1
            return session.admitted(MAINTENANCE, exempt)
        admissions = self._worker.admissions
        if admissions is None:
            return self._admission(session, exempt, counted(limits.admit, request.ip, exempt))
        admissions.ask(request.ip, exempt, functools.partial(self._admission_answered, request.ip, exempt))
        return None

    def _admission_answered(self, ip: str, exempt: bool, outcome: AdmissionOutcome) -> None:
        session = self.session
        if session is None or session.closed or self._transport is None:
            if not isinstance(outcome, Exception):  # gone while it waited: what was counted goes back
                self._worker.release(ip, outcome)
            return
        self._apply(self._admission(session, exempt, outcome))

    def _admission(self, session: Session, exempt: bool, outcome: AdmissionOutcome) -> Step:
        if isinstance(outcome, LimitExceeded):
            self._worker.metrics.rejected[outcome.limit] += 1
            return session.admitted(outcome.limit, exempt)
        if isinstance(outcome, lmdb.Error):
            # state.lmdb holds no mail: a client is not turned away (or left without a greeting)
            # because it cannot be counted, on a full disk say; the commit decides about its mail.
            self._worker.state_failed(outcome)
            self._counted = False
            return session.admitted("", exempt)
        return session.admitted("", exempt, outcome)

    def _reserve(self, request: Reserve) -> int:
        try:
            return self._worker.limits.reserve(request.kind, request.key, request.limit)
        except lmdb.Error as exc:
            self._worker.state_failed(exc)
            return 1  # as with admission: uncounted rather than refused or hung

    def _committed(self, error: BaseException | None) -> None:
        self._count_commit(error)
        self._worker.commit_outcome(error)
        message = self._committing
        if self.session is not None and not self.session.closed and message is not None:
            self._apply(self.session.committed(message.id, error))

    def _count_commit(self, error: BaseException | None) -> None:
        metrics = self._worker.metrics
        message = self._committing
        if error is None and message is not None:
            metrics.received["accepted"] += 1
            # received_at is stamped when the end of DATA was seen.
            metrics.processing.observe(time.time() - message.received_at)
            metrics.size.observe(message.size)
        else:
            metrics.received["store_full" if isinstance(error, StoreFullError) else "error"] += 1

    def _scan_done(self, task: asyncio.Task[Outcome]) -> None:
        self._scanning = None
        if task.cancelled() or self.session is None or self.session.closed:
            return
        error = task.exception()
        if error is not None:  # a fault of ours, not a scanner's: the client tries again later
            log.error("scanning failed", exc_info=error)
            self._apply(self.session.scanned(Verdict(TEMPFAIL)))
            return
        self._scanned = outcome = task.result()
        self._apply(self.session.scanned(outcome.verdict))

    def _findings(self, message_id: str, sender: str) -> list[events.Event]:
        """The events of the last scan's findings, about message_id (a queue id, or a refusal's event id)."""
        outcome, self._scanned = self._scanned, None
        store = self._worker.store
        if outcome is None or self.session is None or not store.events:
            return []
        return detections(outcome, message_id, store.node, time.time(), self.session.client_ip, sender)

    def _record_rejections(self, session: Session) -> None:
        now = time.time()
        keep = self._worker.store.events
        for rejection in session.rejections:
            if rejection.stage != "connect":
                self._worker.metrics.received["rejected"] += 1
            if not keep:
                self._scanned = None
                continue
            event_id = events.new_event_id(now)
            self._worker.record(
                events.Rejected(
                    id=event_id,
                    at=now,
                    node=self._worker.store.node,
                    reply=rejection.reply.decode("utf-8", "replace").rstrip("\r\n"),
                    stage=rejection.stage,
                    command=rejection.command,
                    client_ip=session.client_ip,
                    helo=session.helo,
                    sender=rejection.sender,
                    auth_user=session.auth_user,
                    listener=session.listener,
                )
            )
            if rejection.stage == "data" and self._scanned is not None:
                for found in self._findings(event_id, rejection.sender):
                    self._worker.record(found)
        session.rejections.clear()

    def _auth_verified(self, result: object) -> None:
        if isinstance(result, Exception):
            # The accounts could not be read (in a cluster: PostgreSQL is down): not the client's fault.
            log.warning("AUTH could not be checked: %s", result)
            self._worker.metrics.auth["unavailable"] += 1
            if self.session is not None and not self.session.closed:
                self._apply(self.session.auth_unavailable())
            return
        self._worker.metrics.auth["success" if isinstance(result, User) else "failure"] += 1
        if not isinstance(result, User) and self.session is not None and self._worker.store.events:
            now = time.time()
            self._worker.record(
                events.AuthFailed(
                    id=events.new_event_id(now),
                    at=now,
                    node=self._worker.store.node,
                    client_ip=self.session.client_ip,
                    username=self._auth_username,
                    listener=self.session.listener,
                )
            )
        if self.session is not None and not self.session.closed:
            self._apply(self.session.auth_verified(result if isinstance(result, User) else None))

    def _etrn_recorded(self, result: object) -> None:
        if isinstance(result, BaseException):
            log.error("ETRN could not be recorded: %s", result)
        else:
            self._worker.wake_runners()
        if self.session is not None and not self.session.closed:
            self._apply(self.session.etrn_recorded())

    async def _start_tls(self) -> None:
        transport = self._transport
        context = self._worker.tls_context
        if transport is None or context is None:
            return
        loop = asyncio.get_running_loop()
        try:
            secure = await loop.start_tls(transport, self, context, server_side=True, ssl_handshake_timeout=30)
        except (TimeoutError, OSError, ConnectionError) as exc:
            log.info("TLS handshake with %s failed: %s", self.session.client_ip if self.session else "?", exc)
            transport.abort()
            return
        if secure is None or self.session is None:
            return
        self._transport = secure
        self._apply(self.session.tls_started(describe(secure.get_extra_info("ssl_object"))))
