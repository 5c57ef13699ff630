"""Plays the shell around a sans-I/O Session in tests and fuzzing: answers its effects, records what it commits."""

from __future__ import annotations

import weakref
from typing import NamedTuple

from fastmta.access.accounts import User
from fastmta.limits import ClientLimits, LimitExceeded
from fastmta.networks import Networks
from fastmta.queue.records import Message, new_message_id
from fastmta.scan.verdict import ACCEPT, Verdict
from fastmta.smtp.envelope import queue_record
from fastmta.smtp.policy import RelayPolicy
from fastmta.smtp.session import Admit, Close, Commit, RecordEtrn, Reserve, Scan, Session, Settings, StartTls, VerifyAuth


def make_settings(**changes: object) -> Settings:
    values: dict[str, object] = dict(
        hostname="mx.test",
        max_message_size=10_000,
        max_recipients=5,
        max_line_length=512,
        max_errors=5,
        require_auth=False,
        require_tls_for_auth=True,
        tls_available=True,
        reject_bare_line_endings=True,
        policy=RelayPolicy(["127.0.0.0/8"], ["example.org"]),
        worker="smtp-0",
        proxy_trusted=Networks(["127.0.0.0/8"]),
    )
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


# Sessions whose Driver admits and reserves against real ClientLimits; the others get whatever they ask.
LIMITS: weakref.WeakKeyDictionary[Session, ClientLimits] = weakref.WeakKeyDictionary()


class Committed(NamedTuple):
    message: Message
    body: bytes  # as stored: our Received header, then `data`
    data: bytes  # the message as the session handed it over


class Driver:
    """Feeds a session at a clock the test moves; commits succeed unless told otherwise; "right" is the password,
    and "unavailable" one that cannot be checked.

    A STARTTLS handshake stays pending unless `tls` is given: then it succeeds with that description.
    A content scan (with Settings.scan) comes back as `verdict`.
    """

    def __init__(
        self,
        session: Session,
        commit_error: BaseException | None = None,
        user: User = User("alice", ""),
        now: float = 1000.0,
        exempt: bool = False,
        tls: str = "",
        verdict: Verdict = Verdict(ACCEPT),
    ) -> None:
        self.session = session
        self.limits = LIMITS.get(session)
        self.commit_error = commit_error
        self.user = user
        self.now = now
        self.exempt = exempt
        self.tls = tls
        self.verdict = verdict
        self.scans: list[Scan] = []
        self.out = b""
        self.commits: list[Committed] = []
        self.reservations: list[Reserve] = []
        self.closed = False
        self._settle(session.start(now))

    def feed(self, data: bytes) -> bytes:
        before = len(self.out)
        self._settle(self.session.feed(data, self.now))
        return self.out[before:]

    def expire(self, now: float) -> bytes:
        self.now = now
        before = len(self.out)
        self._settle(self.session.expire(now))
        return self.out[before:]

    def shutdown(self, now: bool = False) -> bytes:
        before = len(self.out)
        self._settle(self.session.shutdown(now))
        return self.out[before:]

    def _settle(self, step: tuple[bytes, object]) -> None:
        while True:
            out, action = step
            self.out += out
            if isinstance(action, Admit):
                step = self._admit(action)
            elif isinstance(action, Reserve):
                self.reservations.append(action)
                granted = self.limits.reserve(action.kind, action.key, action.limit) if self.limits else 1
                step = self.session.reserved(granted)
            elif isinstance(action, Commit):
                message_id = new_message_id(self.now)
                message, body = queue_record(
                    action.envelope, action.body, message_id, self.now, "mx.test", "smtp-0", action.headers, action.held
                )
                self.commits.append(Committed(message, body, action.body))
                step = self.session.committed(message_id, self.commit_error)
            elif isinstance(action, Scan):
                self.scans.append(action)
                step = self.session.scanned(self.verdict)
            elif isinstance(action, RecordEtrn):
                step = self.session.etrn_recorded()
            elif isinstance(action, VerifyAuth) and action.password == "unavailable":
                step = self.session.auth_unavailable()  # as when the accounts cannot be read
            elif isinstance(action, VerifyAuth):
                step = self.session.auth_verified(self.user if action.password == "right" else None)
            elif isinstance(action, StartTls) and self.tls:
                step = self.session.tls_started(self.tls)
            elif isinstance(action, Close):
                self.closed = True
                return
            else:
                assert action is None or isinstance(action, StartTls)
                return

    def _admit(self, request: Admit) -> tuple[bytes, object]:
        if self.limits is not None:
            try:
                return self.session.admitted("", self.exempt, self.limits.admit(request.ip, self.exempt))
            except LimitExceeded as refusal:
                return self.session.admitted(refusal.limit, self.exempt)
        return self.session.admitted("", self.exempt)
