"""The ESMTP state machine, sans I/O: bytes and facts in, replies and effects out.

The asyncio shell (protocol.py) owns the socket, the clock and every store. A session never
blocks and never reads a clock or a store: the time comes with each call, and whatever needs the
outside world (counting the connection, reserving from a rate limit, the durable commit, a
password check, the TLS handshake, an ETRN record, the content scan) is handed out as an effect. The session stops
consuming input until the shell reports the effect's outcome; input stays buffered meanwhile, so
pipelined commands are answered in order.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from fastmta import _ext
from fastmta.access.accounts import User
from fastmta.config import Config
from fastmta.networks import Networks
from fastmta.queue.records import Recipient
from fastmta.queue.store import StoreFullError
from fastmta.scan.verdict import HOLD, REJECT, TEMPFAIL, Verdict, without_spam_headers
from fastmta.smtp import address as A
from fastmta.smtp import replies as R
from fastmta.smtp.auth import MECHANISMS, Credentials, SaslExchange
from fastmta.smtp.envelope import Envelope, mail_parameters, recipient
from fastmta.smtp.policy import RelayPolicy
from fastmta.smtp.proxy import ProxyError, parse_proxy_header
from fastmta.smtp.replies import SmtpReplyError

SUBMISSION = "submission"
SMTPS = "smtps"

# RFC 5322 §2.1.1: a line of a message is at most 998 characters, CRLF excluded.
MAX_HEADER_LINE = 998
_LONG_HEADER_LINE = re.compile(rb"[^\r\n]{%d}" % (MAX_HEADER_LINE + 1))
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Settings:
    """What every session of a worker shares, derived once from the config."""

    hostname: str
    max_message_size: int
    max_recipients: int
    max_line_length: int
    max_errors: int
    require_auth: bool
    require_tls_for_auth: bool
    tls_available: bool
    reject_bare_line_endings: bool
    policy: RelayPolicy
    worker: str = ""
    # Per client address, 0 = unlimited: messages, recipients, auth_failures (limits.SPENDABLE's kinds).
    per_client_limits: Mapping[str, int] = field(default_factory=dict)
    proxy_trusted: Networks = field(default_factory=lambda: Networks([]))
    max_header_size: int = 102400
    # A command line must arrive whole within command_timeout of the previous reply, however it
    # trickles in; DATA gets the same grace plus one second per min_data_rate bytes; a session
    # ends after max_session seconds whatever it does.
    command_timeout: float = 300.0
    min_data_rate: int = 500
    max_session: float = 3600.0
    # A finished message is scanned (Scan) before it is committed.
    scan: bool = False
    _ehlo: dict[tuple[bool, bool], bytes] = field(default_factory=dict, compare=False)

    @classmethod
    def configured(cls, config: Config, worker: str, tls_available: bool) -> Settings:
        smtp, limits = config.smtp, config.limits
        return cls(
            hostname=config.server.hostname,
            max_message_size=smtp.max_message_size,
            max_recipients=smtp.max_recipients,
            max_line_length=smtp.max_line_length,
            max_errors=smtp.max_errors,
            require_auth=smtp.require_auth,
            require_tls_for_auth=smtp.require_tls_for_auth,
            tls_available=tls_available,
            reject_bare_line_endings=smtp.bare_line_endings == "reject",
            policy=RelayPolicy(smtp.mynetworks, smtp.relay_domains),
            worker=worker,
            per_client_limits={
                "messages": limits.messages_per_hour,
                "recipients": limits.recipients_per_hour,
                "auth_failures": limits.auth_failures_per_hour,
            },
            proxy_trusted=Networks(smtp.proxy_trusted),
            max_header_size=smtp.max_header_size,
            command_timeout=smtp.timeout_seconds,
            min_data_rate=smtp.min_data_rate,
            max_session=smtp.max_session_seconds,
            scan=config.scan.enabled,
        )

    def ehlo_reply(self, offer_starttls: bool, offer_auth: bool) -> bytes:
        key = (offer_starttls, offer_auth)
        cached = self._ehlo.get(key)
        if cached is None:
            lines = [self.hostname, "PIPELINING", f"SIZE {self.max_message_size}", "VRFY", "ETRN"]
            if offer_starttls:
                lines.append("STARTTLS")
            if offer_auth:
                lines.append(f"AUTH {MECHANISMS}")
            lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"]
            cached = self._ehlo[key] = R.multiline(250, lines)
        return cached


# Effects: what the shell must do, then report back through the method named in each.


class Admit(NamedTuple):
    """Count the connection against the limits -> admitted(). `known` is false for PROXY UNKNOWN/LOCAL."""

    ip: str
    known: bool


class Reserve(NamedTuple):
    """Reserve events of a limited kind for `key` -> reserved(granted)."""

    kind: str
    key: str
    limit: int


class Commit(NamedTuple):
    """Make the message durable, `headers` before it, held if `held` -> committed()."""

    envelope: Envelope
    body: bytes
    headers: bytes = b""
    held: bool = False


class Scan(NamedTuple):
    """Have the message's content scanned -> scanned()."""

    envelope: Envelope
    body: bytes


class VerifyAuth(NamedTuple):
    """Check the password -> auth_verified()."""

    username: str
    password: str


class StartTls(NamedTuple):
    """The TLS handshake -> tls_started()."""


class RecordEtrn(NamedTuple):
    """Record the request -> etrn_recorded()."""

    domain: str


class Close(NamedTuple):
    """Close the connection once the replies are written."""


class Rejection(NamedTuple):
    """A refusal worth an event: where it happened, what the client heard, what it had sent."""

    stage: str  # connect, mail, rcpt, data
    reply: bytes
    command: str  # the refused command line (its first 256 characters), "" at connect or after DATA
    sender: str  # the transaction's sender, if MAIL was accepted


Action = Admit | Reserve | Commit | Scan | VerifyAuth | StartTls | RecordEtrn | Close
Step = tuple[bytes, "Action | None"]

_CLOSE = Close()

# Modes: what the next input bytes are.
_PROXY, _COMMAND, _DATA, _BDAT, _SKIP_LINE, _WAIT, _CLOSED = range(7)

_FORBIDDEN = frozenset({b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS"})

# Refusals when a reservation comes back empty; per-client limits end the connection, a quota does not.
_EXHAUSTED = {
    "messages": lambda limit: R.RateLimited("Too much mail from your address, try again later"),
    "recipients": lambda limit: R.RateLimited("Too many recipients from your address, try again later"),
    "auth_failures": lambda limit: R.RateLimited("Too many authentication failures, try again later"),
    "quota": lambda limit: R.QuotaExceeded(f"Daily sending quota of {limit} messages reached, try again later"),
}
# Refusals at the greeting, by the limit that refused.
# Admission refused because the node is in maintenance (MaintenanceControl), not by a limit.
MAINTENANCE = "maintenance"
_NOT_ADMITTED = {
    MAINTENANCE: R.IN_MAINTENANCE,
    "connections_per_minute": R.RateLimited("Too many connections from your address, try again later").reply,
    "max_connections": R.TooManyConnections().reply,
    "max_connections_per_ip": R.TooManyFromAddress().reply,
}


# The stages whose refusals are recorded: a message (or a connection) was turned away there.
_RECORDED_STAGES = frozenset({"mail", "rcpt", "data"})
_KEPT_COMMAND = 256
_STAGES = {b"MAIL": "mail", b"RCPT": "rcpt", b"DATA": "data", b"BDAT": "data", b"AUTH": "auth"}


class _NeedReservation(Exception):
    def __init__(self, request: Reserve) -> None:
        self.request = request


class Session:
    def __init__(
        self,
        settings: Settings,
        client_ip: str,
        client_port: int,
        listener: str = "smtp",
        tls: str = "",
        proxy_protocol: bool = False,
    ) -> None:
        self.settings = settings
        self.client_ip = client_ip
        self.client_port = client_port
        self.listener = listener
        self.tls = tls
        self._mode = _PROXY if proxy_protocol else _COMMAND
        self._buf = b""
        self._pos = 0
        self._out: list[bytes] = []
        self._action: Action | None = None
        # The action last handed to the shell: one still under way is not handed out again, so data,
        # a shutdown or a timeout arriving meanwhile cannot make it happen twice.
        self._handed_out: Action | None = None
        self._admitted = False
        self._address_known = True
        self._trusted = False
        self._draining = False
        self._errors = 0
        self.helo = ""
        self._esmtp = False
        self.auth_user = ""
        self._sasl: SaslExchange | None = None
        # Limited kinds -> (key, limit); events reserved and not yet spent, by (kind, key).
        self._limits: dict[str, tuple[str, int]] = {}
        self._held: dict[tuple[str, str], int] = {}
        self._exhausted = ""
        self.messages_accepted = 0
        # Refusals of a connection or a transaction, for the shell to record as events.
        self.rejections: list[Rejection] = []
        self._stage = "connect"
        self._command_line = ""
        self._now = 0.0
        self._started = 0.0
        self._line_started = 0.0
        self._data_started = 0.0
        self._data_bytes = 0
        self._reset_transaction()

    # ----- the shell's interface -------------------------------------------------------------

    def start(self, now: float) -> Step:
        """Asks to admit the client; behind a proxy, first waits for the PROXY header of a trusted proxy."""
        self._now = self._started = self._line_started = now
        if self._mode == _PROXY:
            if self.client_ip not in self.settings.proxy_trusted:
                self._close_with(R.UNTRUSTED_PROXY)
        else:
            self._ask_admission()
        return self._flush()

    def feed(self, data: bytes, now: float) -> Step:
        self._now = now
        if self._pos >= len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos :] + data
        self._pos = 0
        return self._run()

    @property
    def blocked(self) -> bool:
        return self._mode == _WAIT

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    @property
    def closed(self) -> bool:
        return self._mode == _CLOSED

    @property
    def in_transaction(self) -> bool:
        return self._sender is not None

    @property
    def deadline(self) -> float:
        """When expire() must be called if nothing else happens; infinite while an effect is under way, except
        an admission: a client left without a greeting for command_timeout is told so (a backstop, as the
        shell gives up on the counters sooner)."""
        mode = self._mode
        cap = self._started + self.settings.max_session
        if mode == _WAIT and isinstance(self._action, Admit):
            return min(self._line_started + self.settings.command_timeout, cap)
        if mode == _WAIT or mode == _CLOSED:
            return math.inf
        if mode == _DATA or mode == _BDAT:
            rate = self.settings.min_data_rate
            data = self._data_started + self.settings.command_timeout + (self._data_bytes / rate if rate > 0 else math.inf)
            return min(data, cap)
        return min(self._line_started + self.settings.command_timeout, cap)

    def expire(self, now: float) -> Step:
        """Ends the session with the reply that says which time limit passed, if one did."""
        if now >= self.deadline:
            if now >= self._started + self.settings.max_session:
                self._close_with(R.SESSION_TOO_LONG)
            elif self._mode in (_DATA, _BDAT):
                self._close_with(R.DATA_TOO_SLOW)
            else:
                self._close_with(R.TIMEOUT)
        return self._flush()

    def admitted(self, refused_by: str, exempt: bool, reserved: Mapping[tuple[str, str], int] | None = None) -> Step:
        """The answer to Admit: the limit that refused the connection ("" if none), whether per-client
        limits apply, and what was reserved with the admission, by (kind, key)."""
        assert isinstance(self._action, Admit)
        self._action = None
        self._mode = _COMMAND
        if refused_by:
            self.rejections.append(Rejection("connect", _NOT_ADMITTED[refused_by], "", ""))
            self._close_with(_NOT_ADMITTED[refused_by])
            return self._flush()
        self._admitted = True
        self._held.update(reserved or {})
        if self._draining:  # the server began to stop while the admission was being counted
            self._close_with(R.SHUTTING_DOWN)
            return self._flush()
        if not exempt:
            for kind, limit in self.settings.per_client_limits.items():
                if limit > 0:
                    self._limits[kind] = (self.client_ip, limit)
        self._out.append(f"220 {self.settings.hostname} ESMTP fastmta\r\n".encode())
        return self._run()

    def reserved(self, granted: int) -> Step:
        """The answer to Reserve: the command that asked runs again with what was granted."""
        request = self._action
        assert isinstance(request, Reserve)
        self._action = None
        self._mode = _COMMAND
        key = (request.kind, request.key)
        self._held[key] = self._held.get(key, 0) + granted
        if not granted:
            self._exhausted = request.kind
        return self._run()

    def committed(self, message_id: str, error: BaseException | None) -> Step:
        assert isinstance(self._action, Commit)
        self._action = None
        self._mode = _COMMAND
        if error is None:
            self.messages_accepted += 1
            self._out.append(R.queued(message_id))
        elif isinstance(error, StoreFullError):
            self._refuse(R.StoreFull())
        else:
            self._refuse(R.LocalError())
        return self._transaction_over()

    def scanned(self, verdict: Verdict) -> Step:
        """The scanners' verdict: the message is committed (tagged, or held), refused, or put off."""
        request = self._action
        assert isinstance(request, Scan)
        if verdict.action not in (REJECT, TEMPFAIL):
            envelope, body = request.envelope, request.body
            if verdict.replaces_spam_headers:
                body = without_spam_headers(body)
                envelope = dataclasses.replace(envelope, headers_size=envelope.headers_size - (len(request.body) - len(body)))
            self._action = Commit(envelope, body, verdict.headers, verdict.action == HOLD)
            return self._flush()
        self._action = None
        self._mode = _COMMAND
        self._refuse(R.ContentRejected(verdict.reason) if verdict.action == REJECT else R.ScanUnavailable())
        return self._transaction_over()

    def _transaction_over(self) -> Step:
        self._reset_transaction()
        if self._draining and self._mode != _CLOSED:
            self._close_with(R.SHUTTING_DOWN)
        return self._run()

    def auth_verified(self, user: User | None) -> Step:
        """`user` is the account the credentials belong to, None when they are wrong."""
        self._auth_checked()
        if user is not None:
            self.auth_user = user.username
            if user.quota:
                self._limits["quota"] = (user.username, user.quota)
            self._out.append(R.AUTH_OK)
        else:
            self._spend_held("auth_failures")
            self._refuse(R.AuthFailed())
        return self._run()

    def auth_unavailable(self) -> Step:
        """The credentials could not be checked (the accounts could not be read): try later, no failure counted."""
        self._auth_checked()
        self._refuse(R.AuthUnavailable())
        return self._run()

    def _auth_checked(self) -> None:
        assert isinstance(self._action, VerifyAuth)
        self._action = None
        self._mode = _COMMAND

    def tls_started(self, description: str) -> Step:
        """RFC 3207: after the handshake the session starts over, as if freshly connected."""
        self._action = None
        self._mode = _COMMAND
        self.tls = description
        self.helo = ""
        self._esmtp = False
        self.auth_user = ""
        self._limits.pop("quota", None)
        self._reset_transaction()
        return self._run()

    def etrn_recorded(self) -> Step:
        request = self._action
        assert isinstance(request, RecordEtrn)
        self._action = None
        self._mode = _COMMAND
        self._out.append(R.etrn_started(request.domain))
        return self._run()

    def shutdown(self, now: bool = False) -> Step:
        """The server is stopping: idle sessions end at once, open transactions may finish unless now."""
        self._draining = True
        if self._mode == _CLOSED:
            return self._flush()
        if now or (self._mode == _COMMAND and self._sender is None and self._sasl is None):
            self._close_with(R.SHUTTING_DOWN)
        return self._flush()

    def connection_lost(self) -> dict[tuple[str, str], int] | None:
        """The session is over; if it was admitted, what it reserved and did not spend (for ClientLimits.release)."""
        self._mode = _CLOSED
        if not self._admitted:
            return None
        self._admitted = False
        unused = {key: amount for key, amount in self._held.items() if amount}
        self._held.clear()
        return unused

    # ----- the loop ---------------------------------------------------------------------------

    def _flush(self) -> Step:
        out = b"".join(self._out)
        self._out.clear()
        if self._mode == _CLOSED:
            return out, _CLOSE
        action = self._action
        if action is self._handed_out:
            return out, None
        self._handed_out = action
        return out, action

    def _run(self) -> Step:
        while self._pos < len(self._buf):
            mode = self._mode
            if mode == _COMMAND:
                self._commands()
                # Still taking commands: every line there was is answered (a command that waits, or ends
                # command mode, changes the mode), and what is left waits for the rest of its line.
                if self._mode == _COMMAND:
                    break
            elif mode == _DATA:
                self._data()
            elif mode == _BDAT:
                self._bdat()
            elif mode == _SKIP_LINE:
                self._skip_line()
            elif mode == _PROXY:
                if not self._proxy():
                    break
            else:
                break
        return self._flush()

    def _commands(self) -> None:
        lines, ends = _ext.split_lines(self._buf, self._pos, self.settings.max_line_length)
        if not lines:
            return
        for line, end in zip(lines, ends, strict=True):
            start, self._pos = self._pos, end
            # Whatever the next line is, its time starts now: a trickle cannot stretch it.
            self._line_started = self._now
            if line is None:
                if self._buf[end - 1 : end] != b"\n":
                    self._mode = _SKIP_LINE
                self._sasl = None  # an over-long answer ends the AUTH exchange too
                self._refuse(R.LineTooLong())
            elif self._sasl is not None:
                self._auth_answer(line)
            else:
                self._command(line, start)
            if self._mode != _COMMAND:
                return

    def _skip_line(self) -> None:
        newline = self._buf.find(b"\n", self._pos)
        if newline < 0:
            self._pos = len(self._buf)
        else:
            self._pos = newline + 1
            self._mode = _COMMAND

    def _proxy(self) -> bool:
        try:
            parsed = parse_proxy_header(self._buf[self._pos :])
        except ProxyError:
            self._mode = _CLOSED
            return False
        if parsed is None:
            return False
        consumed, address = parsed
        self._pos += consumed
        if address is None:
            # UNKNOWN (or LOCAL): the client's address is not known, so it cannot be trusted.
            self._address_known = False
        else:
            self.client_ip, self.client_port = address
        self._ask_admission()
        return True

    def _ask_admission(self) -> None:
        self._trusted = self._address_known and self.settings.policy.trusted(self.client_ip)
        self._action = Admit(self.client_ip, self._address_known)
        self._mode = _WAIT
        self._line_started = self._now  # the admission's time (deadline) starts now

    def _close_with(self, reply: bytes) -> None:
        self._out.append(reply)
        self._mode = _CLOSED
        self._pos = len(self._buf)

    def _refuse(self, refusal: SmtpReplyError) -> None:
        if self._stage in _RECORDED_STAGES:
            self.rejections.append(Rejection(self._stage, refusal.reply, self._command_line, self._sender or ""))
        self._errors += 1
        if refusal.closes:
            self._close_with(refusal.reply)
        elif self._errors >= self.settings.max_errors:
            self._out.append(refusal.reply)
            self._close_with(R.TOO_MANY_ERRORS)
        else:
            self._out.append(refusal.reply)

    def _reset_transaction(self) -> None:
        self._sender: str | None = None
        self._recipients: list[Recipient] = []
        self._params: dict[str, str] = {}
        self._scanner: _ext.DataScanner | None = None
        self._chunks: bytearray | None = None
        self._chunks_size = 0
        self._bdat_remaining = 0
        self._bdat_last = False
        self._bdat_refusal: SmtpReplyError | None = None

    # ----- limits -----------------------------------------------------------------------------

    def _spend(self, *kinds: str) -> None:
        """Spends one event of each limited kind, all or none; without a reservation, asks for one first."""
        for kind in kinds:
            self._hold(kind)
        for kind in kinds:
            self._spend_held(kind)

    def _hold(self, kind: str) -> None:
        """Makes sure one event of `kind` is reserved, or raises the refusal once a reservation came back empty."""
        entry = self._limits.get(kind)
        if entry is None or self._held.get((kind, entry[0]), 0) > 0:
            return
        if self._exhausted == kind:
            self._exhausted = ""
            raise _EXHAUSTED[kind](entry[1])
        raise _NeedReservation(Reserve(kind, *entry))

    def _spend_held(self, kind: str) -> None:
        entry = self._limits.get(kind)
        if entry is not None:
            self._held[(kind, entry[0])] -= 1

    # ----- commands ---------------------------------------------------------------------------

    def _command(self, line: bytes, start: int) -> None:
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        handler = _HANDLERS.get(verb)
        self._stage = _STAGES.get(verb, "command")
        self._command_line = line[:_KEPT_COMMAND].decode("utf-8", "replace")
        try:
            if self._draining and self._sender is None and verb != b"QUIT":
                self._close_with(R.SHUTTING_DOWN)
                return
            if _CONTROL.search(line):
                raise R.BadCharacters()
            if handler is None:
                if verb in _FORBIDDEN:
                    raise R.ForbiddenCommand()
                raise R.UnknownCommand()
            try:
                text = argument.decode().strip(" ")
            except UnicodeDecodeError:
                raise R.BadSyntax("Syntax: arguments are not UTF-8") from None
            handler(self, text)
        except _NeedReservation as need:
            self._pos = start  # the command runs again once the reservation is answered
            self._action = need.request
            self._mode = _WAIT
        except SmtpReplyError as refusal:
            self._refuse(refusal)

    def _helo(self, argument: str) -> None:
        if not argument:
            raise R.BadSyntax("Syntax: HELO hostname")
        self._reset_transaction()
        self.helo = argument
        self._esmtp = False
        self._out.append(f"250 {self.settings.hostname}\r\n".encode())

    def _ehlo(self, argument: str) -> None:
        if not argument:
            raise R.BadSyntax("Syntax: EHLO hostname")
        self._reset_transaction()
        self.helo = argument
        self._esmtp = True
        offer_tls = self.settings.tls_available and not self.tls
        self._out.append(self.settings.ehlo_reply(offer_tls, self._auth_offered()))

    def _auth_offered(self) -> bool:
        return not self.auth_user and (bool(self.tls) or not self.settings.require_tls_for_auth)

    def _mail(self, argument: str) -> None:
        if not self.helo:
            raise R.BadSequence("Error: send HELO/EHLO first")
        if self._sender is not None:
            raise R.BadSequence("Error: nested MAIL command")
        if not self.auth_user and (self.settings.require_auth or self.listener == SUBMISSION):
            raise R.AuthRequired()
        address, raw_params = A.split_path(argument, "FROM:")
        params = mail_parameters(raw_params, self.settings.max_message_size)
        A.check_sender(address, "SMTPUTF8" in params)
        if self._limits:
            self._spend("messages", "quota")
        self._sender = address
        self._params = params
        self._out.append(R.SENDER_OK)

    def _rcpt(self, argument: str) -> None:
        if self._sender is None:
            raise R.BadSequence("Error: need MAIL command")
        if len(self._recipients) >= self.settings.max_recipients:
            raise R.TooManyRecipients()
        address, raw_params = A.split_path(argument, "TO:")
        if A.is_postmaster(address):
            # RFC 5321 §4.5.1: accepted from anyone, for this host's postmaster.
            address = f"{A.POSTMASTER}@{self.settings.hostname}"
        elif not (self._trusted or self.auth_user):
            if not self.settings.policy.accepts_domain(A.domain_of(address)):
                raise R.RelayDenied()
            if A.has_routing(address):
                raise R.RoutingDenied()
        accepted = recipient(address, raw_params)
        A.check_recipient(address, "SMTPUTF8" in self._params)
        if self._limits:
            self._spend("recipients")
        self._recipients.append(accepted)
        self._out.append(R.RECIPIENT_OK)

    def _data_command(self, argument: str) -> None:
        if argument:
            raise R.BadSyntax("Syntax: DATA takes no arguments")
        if self._sender is None:
            raise R.BadSequence("Error: need MAIL command")
        if not self._recipients:
            raise R.BadSequence("Error: no valid recipients")
        if self._chunks is not None:
            raise R.BadSequence("Error: DATA after BDAT in one transaction")
        self._scanner = _ext.DataScanner(self.settings.max_message_size)
        self._start_data(_DATA)
        self._out.append(R.START_DATA)

    def _start_data(self, mode: int) -> None:
        self._mode = mode
        self._data_started = self._now
        self._data_bytes = 0

    def _data(self) -> None:
        scanner = self._scanner
        assert scanner is not None
        end = scanner.feed(self._buf, self._pos)
        self._data_bytes += (len(self._buf) if end < 0 else end) - self._pos
        if end < 0:
            self._pos = len(self._buf)
            return
        self._pos = end
        self._mode = _COMMAND
        self._line_started = self._now
        self._stage, self._command_line = "data", ""
        if scanner.overflow:
            self._refuse(R.MessageTooBig())
            self._reset_transaction()
        elif scanner.bare_eol and self.settings.reject_bare_line_endings:
            self._refuse(R.BareLineEnding())
            self._reset_transaction()
        else:
            self._finish(scanner.body)

    def _bdat_command(self, argument: str) -> None:
        size_text, _, last = argument.partition(" ")
        last = last.strip(" ").upper()
        if not size_text.isdigit() or last not in ("", "LAST"):
            raise R.BadSyntax("Syntax: BDAT <size> [LAST]")
        size = int(size_text)
        # The chunk's bytes follow whatever we answer, so read them even when refusing.
        self._bdat_remaining = size
        self._bdat_last = last == "LAST"
        if self._sender is None or not self._recipients:
            self._bdat_refusal = R.BadSequence("Error: need MAIL and RCPT before BDAT")
        else:
            self._bdat_refusal = None
            if self._chunks is None:
                self._chunks = bytearray()
        self._start_data(_BDAT)
        if size == 0:
            self._bdat_chunk_done()

    def _bdat(self) -> None:
        available = len(self._buf) - self._pos
        take = min(available, self._bdat_remaining)
        chunks = self._chunks
        if chunks is not None and self._bdat_refusal is None:
            self._chunks_size += take
            if self._chunks_size <= self.settings.max_message_size:
                chunks += self._buf[self._pos : self._pos + take]
        self._pos += take
        self._data_bytes += take
        self._bdat_remaining -= take
        if self._bdat_remaining == 0:
            self._bdat_chunk_done()

    def _bdat_chunk_done(self) -> None:
        self._mode = _COMMAND
        self._stage, self._command_line = "data", ""
        self._line_started = self._now
        if self._bdat_refusal is not None:
            self._refuse(self._bdat_refusal)
        elif self._chunks_size > self.settings.max_message_size:
            self._refuse(R.MessageTooBig())
            self._reset_transaction()
        elif self._bdat_last:
            assert self._chunks is not None
            body = bytes(self._chunks)
            if self.settings.reject_bare_line_endings and _has_bare_line_ending(body):
                self._refuse(R.BareLineEnding())
                self._reset_transaction()
            else:
                self._finish(body)
        else:
            self._out.append(R.chunk_received(self._chunks_size))

    def _finish(self, body: bytes) -> None:
        """The end of a message: its header block checked, then handed out to be committed."""
        headers, headers_size = _ext.parse_headers(body)
        if headers_size > self.settings.max_header_size:
            self._refuse(R.HeaderTooBig())
            self._reset_transaction()
            return
        if _LONG_HEADER_LINE.search(body, 0, headers_size):
            self._refuse(R.HeaderLineTooLong())
            self._reset_transaction()
            return
        envelope = Envelope(
            sender=self._sender or "",
            recipients=self._recipients,
            params=self._params,
            helo=self.helo,
            client_ip=self.client_ip,
            client_port=self.client_port,
            listener=self.listener,
            tls=self.tls,
            auth_user=self.auth_user,
            protocol=self._protocol_name(),
            headers=headers,
            headers_size=headers_size,
        )
        self._action = Scan(envelope, body) if self.settings.scan else Commit(envelope, body)
        self._mode = _WAIT

    def _protocol_name(self) -> str:
        name = ("UTF8SMTP" if "SMTPUTF8" in self._params else "ESMTP") if self._esmtp else "SMTP"
        if self.tls:
            name += "S"
        if self.auth_user:
            name += "A"
        return name

    def _rset(self, argument: str) -> None:
        self._reset_transaction()
        self._out.append(R.OK)

    def _noop(self, argument: str) -> None:
        self._out.append(R.OK)

    def _quit(self, argument: str) -> None:
        self._close_with(R.BYE)

    def _help(self, argument: str) -> None:
        self._out.append(R.HELP)

    def _vrfy(self, argument: str) -> None:
        if not argument:
            raise R.BadSyntax("Syntax: VRFY address")
        self._out.append(R.VRFY_CANNOT)

    def _expn(self, argument: str) -> None:
        raise R.NotImplementedCommand()

    def _etrn(self, argument: str) -> None:
        if not self.helo:
            raise R.BadSequence("Error: send HELO/EHLO first")
        if self._sender is not None:
            raise R.BadSequence("Error: MAIL transaction in progress")
        domain = argument.lstrip("@#")
        if not domain or " " in domain:
            raise R.BadSyntax("Syntax: ETRN domain")
        self._action = RecordEtrn(domain)
        self._mode = _WAIT

    def _starttls(self, argument: str) -> None:
        if argument:
            raise R.BadSyntax("Syntax: STARTTLS takes no arguments")
        if self.tls:
            raise R.BadSequence("Error: TLS already active")
        if not self.settings.tls_available:
            raise R.TlsUnavailable()
        self._out.append(R.READY_FOR_TLS)
        # Whatever the client pipelined after STARTTLS came in plaintext and must not be trusted.
        self._buf = b""
        self._pos = 0
        self._action = StartTls()
        self._mode = _WAIT

    def _auth(self, argument: str) -> None:
        if not self.helo:
            raise R.BadSequence("Error: send EHLO first")
        if self.auth_user:
            raise R.BadSequence("Error: already authenticated")
        if self._sender is not None:
            raise R.BadSequence("Error: MAIL transaction in progress")
        if not self.tls and self.settings.require_tls_for_auth:
            raise R.EncryptionRequired()
        # A failure is counted before the password is checked, so parallel guesses cannot overrun the limit.
        self._hold("auth_failures")
        sasl = SaslExchange()
        self._auth_step(sasl, sasl.start(argument))

    def _auth_answer(self, line: bytes) -> None:
        sasl = self._sasl
        assert sasl is not None
        self._sasl = None
        try:
            self._auth_step(sasl, sasl.answer(line))
        except SmtpReplyError as refusal:
            self._refuse(refusal)

    def _auth_step(self, sasl: SaslExchange, step: bytes | Credentials) -> None:
        if isinstance(step, Credentials):
            self._action = VerifyAuth(step.username, step.password)
            self._mode = _WAIT
        else:
            self._sasl = sasl
            self._out.append(step)


def _has_bare_line_ending(body: bytes) -> bool:
    pairs = body.count(b"\r\n")
    return body.count(b"\n") != pairs or body.count(b"\r") != pairs


_HANDLERS = {
    b"HELO": Session._helo,
    b"EHLO": Session._ehlo,
    b"MAIL": Session._mail,
    b"RCPT": Session._rcpt,
    b"DATA": Session._data_command,
    b"BDAT": Session._bdat_command,
    b"RSET": Session._rset,
    b"NOOP": Session._noop,
    b"QUIT": Session._quit,
    b"HELP": Session._help,
    b"VRFY": Session._vrfy,
    b"EXPN": Session._expn,
    b"ETRN": Session._etrn,
    b"STARTTLS": Session._starttls,
    b"AUTH": Session._auth,
}
