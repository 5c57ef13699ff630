"""The ESMTP state machine, sans I/O: fed received bytes, it returns reply bytes and at most one action.

The asyncio shell (protocol.py) owns the socket. A session never blocks: whatever needs a wait
(the durable commit, a password check, the TLS handshake, an ETRN record) is handed out as an
action, and the session stops consuming input until the shell reports the action's outcome.
Input stays buffered meanwhile, so pipelined commands are answered in order.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from fastmta import _ext
from fastmta.accounts import User
from fastmta.queue.records import Message, Recipient, new_message_id
from fastmta.queue.store import StoreFullError
from fastmta.smtp import replies as R
from fastmta.smtp.policy import ClientLimits, RelayPolicy
from fastmta.smtp.proxy import ProxyError, parse_proxy_header
from fastmta.smtp.replies import SmtpReplyError

SUBMISSION = "submission"
SMTPS = "smtps"


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
    _ehlo: dict[tuple[bool, bool], bytes] = field(default_factory=dict, compare=False)

    def ehlo_reply(self, offer_starttls: bool, offer_auth: bool) -> bytes:
        key = (offer_starttls, offer_auth)
        cached = self._ehlo.get(key)
        if cached is None:
            lines = [self.hostname, "PIPELINING", f"SIZE {self.max_message_size}", "VRFY", "ETRN"]
            if offer_starttls:
                lines.append("STARTTLS")
            if offer_auth:
                lines.append("AUTH PLAIN LOGIN")
            lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"]
            cached = self._ehlo[key] = R.multiline(250, lines)
        return cached


class Commit(NamedTuple):
    message: Message
    body: bytes


class VerifyAuth(NamedTuple):
    username: str
    password: str


class StartTls(NamedTuple):
    pass


class RecordEtrn(NamedTuple):
    domain: str


class Close(NamedTuple):
    pass


Action = Commit | VerifyAuth | StartTls | RecordEtrn | Close
Step = tuple[bytes, "Action | None"]

_CLOSE = Close()

# Modes: what the next input bytes are.
_PROXY, _COMMAND, _DATA, _BDAT, _SKIP_LINE, _WAIT, _CLOSED = range(7)

_FORBIDDEN = frozenset({b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS"})
_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def _split_path(argument: str, keyword: str) -> tuple[str, list[str]]:
    """'FROM:<a@b> SIZE=10' -> ('a@b', ['SIZE=10']); raises BadSyntax."""
    head = argument[: len(keyword)]
    if head.upper() != keyword:
        raise R.BadSyntax(f"Syntax: {'MAIL FROM' if keyword == 'FROM:' else 'RCPT TO'}:<address>")
    rest = argument[len(keyword) :].lstrip(" ")
    if rest.startswith("<"):
        end = _closing_bracket(rest)
        if end < 0:
            raise R.BadSyntax("Syntax: missing '>' after the address")
        address, params = rest[1:end], rest[end + 1 :]
        if params and not params.startswith(" "):
            raise R.BadSyntax("Syntax: junk after the address")
    else:
        address, _, params = rest.partition(" ")
    if address.startswith("@") and ":" in address:
        # A source route (RFC 5321 C): ignored, as every modern MTA does.
        address = address.partition(":")[2]
    return address, params.split()


def _closing_bracket(text: str) -> int:
    if '"' not in text and "\\" not in text:
        return text.find(">")
    quoted = False
    escaped = False
    for index in range(1, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
    return -1


_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")


def _check_address(address: str, smtputf8: bool) -> None:
    if len(address) > 254 or _CONTROL_CHARACTER.search(address):
        raise R.BadAddress()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(local) > 64:
        raise R.BadAddress()
    if " " in address and not (local.startswith('"') and local.endswith('"')):
        raise R.BadAddress()
    if not (domain.startswith("[") and domain.endswith("]")):
        if ".." in domain or domain.startswith((".", "-")) or domain.endswith(("-",)) or " " in domain:
            raise R.BadAddress()
    if not smtputf8 and not address.isascii():
        raise R.NonAsciiAddress()


def _xtext_decode(value: str) -> str:
    """RFC 3461 xtext: '+XX' is a hex-escaped byte."""
    if "+" not in value:
        return value
    out = bytearray()
    index = 0
    raw = value.encode()
    while index < len(raw):
        if raw[index] == 0x2B:
            try:
                out.append(int(raw[index + 1 : index + 3], 16))
            except ValueError:
                raise R.BadSyntax("Syntax: bad xtext") from None
            index += 3
        else:
            out.append(raw[index])
            index += 1
    return out.decode("utf-8", "replace")


class Session:
    def __init__(
        self,
        settings: Settings,
        limits: ClientLimits,
        client_ip: str,
        client_port: int,
        listener: str = "smtp",
        tls: str = "",
        proxy_protocol: bool = False,
    ) -> None:
        self.settings = settings
        self._limits = limits
        self.client_ip = client_ip
        self.client_port = client_port
        self.listener = listener
        self.tls = tls
        self._mode = _PROXY if proxy_protocol else _COMMAND
        self._buf = b""
        self._pos = 0
        self._out: list[bytes] = []
        self._action: Action | None = None
        self._admitted = False
        self._trusted = False
        self._draining = False
        self._errors = 0
        self.rejected_by = ""  # the limit that refused the connection at greeting
        self.helo = ""
        self._esmtp = False
        self.auth_user = ""
        self._daily_quota = 0
        self._auth_step = ""
        self._auth_username = ""
        self.messages_accepted = 0
        self._reset_transaction()

    # ----- the shell's interface -------------------------------------------------------------

    def start(self) -> Step:
        """The greeting, or a refusal; with PROXY protocol, nothing until the header arrives."""
        if self._mode != _PROXY:
            self._greet()
        return self._flush()

    def feed(self, data: bytes) -> Step:
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

    def committed(self, error: BaseException | None) -> Step:
        commit = self._action
        assert isinstance(commit, Commit)
        self._action = None
        self._mode = _COMMAND
        if error is None:
            self.messages_accepted += 1
            self._out.append(R.queued(commit.message.id))
        elif isinstance(error, StoreFullError):
            self._refuse(R.StoreFull())
        else:
            self._refuse(R.LocalError())
        self._reset_transaction()
        if self._draining and self._mode != _CLOSED:
            self._close_with(R.SHUTTING_DOWN)
        return self._run()

    def auth_verified(self, user: User | None) -> Step:
        """`user` is the account the credentials belong to, None when they are wrong."""
        assert isinstance(self._action, VerifyAuth)
        self._action = None
        self._mode = _COMMAND
        if user is not None:
            self.auth_user = user.username
            self._daily_quota = user.quota
            self._out.append(R.AUTH_OK)
        else:
            self._limits.record_auth_failure(self.client_ip)
            self._refuse(R.AuthFailed())
        return self._run()

    def tls_started(self, description: str) -> Step:
        """RFC 3207: after the handshake the session starts over, as if freshly connected."""
        self._action = None
        self._mode = _COMMAND
        self.tls = description
        self.helo = ""
        self._esmtp = False
        self.auth_user = ""
        self._daily_quota = 0
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
        if now or (self._mode == _COMMAND and self._sender is None and not self._auth_step):
            self._close_with(R.SHUTTING_DOWN)
        return self._flush()

    def timed_out(self) -> Step:
        self._close_with(R.TIMEOUT)
        return self._flush()

    def connection_lost(self) -> None:
        self._mode = _CLOSED
        if self._admitted:
            self._admitted = False
            self._limits.release(self.client_ip)

    # ----- the loop ---------------------------------------------------------------------------

    def _flush(self) -> Step:
        out = b"".join(self._out)
        self._out.clear()
        action = self._action
        if self._mode == _CLOSED:
            action = _CLOSE
        return out, action

    def _run(self) -> Step:
        while self._pos < len(self._buf):
            mode = self._mode
            if mode == _COMMAND:
                self._commands()
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
            if self._mode == _COMMAND and self._pos < len(self._buf) and not self._has_line():
                break
        return self._flush()

    def _has_line(self) -> bool:
        if self._buf.find(b"\n", self._pos) >= 0:
            return True
        return len(self._buf) - self._pos > self.settings.max_line_length

    def _commands(self) -> None:
        lines, ends = _ext.split_lines(self._buf, self._pos, self.settings.max_line_length)
        if not lines:
            return
        for line, end in zip(lines, ends):
            self._pos = end
            if line is None:
                if self._buf[end - 1 : end] != b"\n":
                    self._mode = _SKIP_LINE
                self._auth_step = ""  # an over-long answer ends the AUTH exchange too
                self._refuse(R.LineTooLong())
            elif self._auth_step:
                self._auth_continue(line)
            else:
                self._command(line)
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
        if address is not None:
            self.client_ip, self.client_port = address
        self._mode = _COMMAND
        self._greet()
        return True

    def _greet(self) -> None:
        try:
            self._limits.admit(self.client_ip)
        except SmtpReplyError as refusal:
            self.rejected_by = refusal.limit
            self._close_with(refusal.reply)
            return
        self._admitted = True
        self._trusted = self.settings.policy.trusted(self.client_ip)
        self._out.append(f"220 {self.settings.hostname} ESMTP fastmta\r\n".encode())

    def _close_with(self, reply: bytes) -> None:
        self._out.append(reply)
        self._mode = _CLOSED
        self._pos = len(self._buf)

    def _refuse(self, refusal: SmtpReplyError) -> None:
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

    # ----- commands ---------------------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        handler = _HANDLERS.get(verb)
        try:
            if self._draining and self._sender is None and verb != b"QUIT":
                self._close_with(R.SHUTTING_DOWN)
                return
            if b"\0" in line:
                raise R.BadCharacters()
            if handler is None:
                if verb in _FORBIDDEN:
                    raise R.ForbiddenCommand()
                raise R.UnknownCommand()
            try:
                text = argument.decode().strip()
            except UnicodeDecodeError:
                raise R.BadSyntax("Syntax: arguments are not UTF-8") from None
            handler(self, text)
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
        address, raw_params = _split_path(argument, "FROM:")
        params = self._mail_params(raw_params)
        if address:
            _check_address(address, "SMTPUTF8" in params)
        self._limits.check_message(self.client_ip)
        if self._daily_quota:
            self._limits.check_daily_quota(self.auth_user, self._daily_quota)
        self._sender = address
        self._params = params
        self._out.append(R.SENDER_OK)

    def _mail_params(self, raw_params: list[str]) -> dict[str, str]:
        params: dict[str, str] = {}
        for raw in raw_params:
            key, _, value = raw.partition("=")
            key = key.upper()
            if key == "SIZE":
                if not value.isdigit():
                    raise R.BadSyntax("Syntax: SIZE=<number>")
                if int(value) > self.settings.max_message_size:
                    raise R.MessageTooBig()
            elif key == "BODY":
                value = value.upper()
                if value not in ("7BIT", "8BITMIME"):
                    raise R.UnknownParameter(f"Unsupported BODY type {value}")
            elif key == "SMTPUTF8":
                if value:
                    raise R.BadSyntax("Syntax: SMTPUTF8 takes no value")
            elif key == "RET":
                value = value.upper()
                if value not in ("FULL", "HDRS"):
                    raise R.BadSyntax("Syntax: RET=FULL or RET=HDRS")
            elif key == "ENVID":
                value = _xtext_decode(value)
                if not value or len(value) > 100:
                    raise R.BadSyntax("Syntax: ENVID=<xtext of at most 100 characters>")
            elif key != "AUTH":
                raise R.UnknownParameter(f"Unsupported option {key}")
            params[key] = value
        return params

    def _rcpt(self, argument: str) -> None:
        if self._sender is None:
            raise R.BadSequence("Error: need MAIL command")
        if len(self._recipients) >= self.settings.max_recipients:
            raise R.TooManyRecipients()
        address, raw_params = _split_path(argument, "TO:")
        recipient = Recipient(address=address)
        for raw in raw_params:
            key, _, value = raw.partition("=")
            key = key.upper()
            if key == "NOTIFY":
                notify = value.upper().split(",")
                if notify != ["NEVER"] and not (notify and set(notify) <= _NOTIFY_VALUES):
                    raise R.BadSyntax("Syntax: NOTIFY=NEVER or a list of SUCCESS,FAILURE,DELAY")
                recipient.notify = notify
            elif key == "ORCPT":
                kind, semicolon, original = value.partition(";")
                if not semicolon or not kind or not original:
                    raise R.BadSyntax("Syntax: ORCPT=<type>;<address>")
                recipient.orcpt = f"{kind};{_xtext_decode(original)}"
            else:
                raise R.UnknownParameter(f"Unsupported option {key}")
        _check_address(address, "SMTPUTF8" in self._params)
        domain = address.rpartition("@")[2]
        if not (self._trusted or self.auth_user or self.settings.policy.accepts_domain(domain)):
            raise R.RelayDenied()
        self._limits.check_recipient(self.client_ip)
        self._recipients.append(recipient)
        self._out.append(R.RECIPIENT_OK)

    def _data(self) -> None:
        scanner = self._scanner
        assert scanner is not None
        end = scanner.feed(self._buf, self._pos)
        if end < 0:
            self._pos = len(self._buf)
            return
        self._pos = end
        self._mode = _COMMAND
        if scanner.overflow:
            self._reset_transaction()
            self._refuse(R.MessageTooBig())
        elif scanner.bare_eol and self.settings.reject_bare_line_endings:
            self._reset_transaction()
            self._refuse(R.BareLineEnding())
        else:
            self._enqueue(scanner.body)

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
        self._mode = _DATA
        self._out.append(R.START_DATA)

    def _bdat_command(self, argument: str) -> None:
        size_text, _, last = argument.partition(" ")
        last = last.strip().upper()
        if not size_text.isdigit() or last not in ("", "LAST"):
            raise R.BadSyntax("Syntax: BDAT <size> [LAST]")
        size = int(size_text)
        # The chunk's bytes follow whatever we answer, so read them even when refusing.
        self._bdat_remaining = size
        self._bdat_last = last == "LAST"
        self._mode = _BDAT
        if self._sender is None or not self._recipients:
            self._bdat_refusal = R.BadSequence("Error: need MAIL and RCPT before BDAT")
        else:
            self._bdat_refusal = None
            if self._chunks is None:
                self._chunks = bytearray()
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
        self._bdat_remaining -= take
        if self._bdat_remaining == 0:
            self._bdat_chunk_done()

    def _bdat_chunk_done(self) -> None:
        self._mode = _COMMAND
        if self._bdat_refusal is not None:
            self._refuse(self._bdat_refusal)
        elif self._chunks_size > self.settings.max_message_size:
            self._reset_transaction()
            self._refuse(R.MessageTooBig())
        elif self._bdat_last:
            assert self._chunks is not None
            self._enqueue(bytes(self._chunks))
        else:
            self._out.append(R.chunk_received(self._chunks_size))

    def _enqueue(self, body: bytes) -> None:
        headers, headers_size = _ext.parse_headers(body)
        now = time.time()
        message_id = new_message_id(now)
        params = self._params
        received = self._received_header(message_id, now)
        stored = received + body
        message = Message(
            id=message_id,
            sender=self._sender or "",
            recipients=self._recipients,
            received_at=now,
            size=len(stored),
            next_attempt=now,
            client_ip=self.client_ip,
            client_port=self.client_port,
            helo=self.helo,
            protocol=self._protocol_name(),
            listener=self.listener,
            worker=self.settings.worker,
            auth_user=self.auth_user,
            tls=self.tls,
            body_type=params.get("BODY", ""),
            smtputf8="SMTPUTF8" in params,
            declared_size=int(params.get("SIZE", 0)),
            ret=params.get("RET", ""),
            envid=params.get("ENVID", ""),
            message_id=headers.get("message-id", ""),
            header_from=headers.get("from", ""),
            header_to=headers.get("to", ""),
            subject=headers.get("subject", ""),
            date=headers.get("date", ""),
            workspace_id=headers.get("x-workspace-id", ""),
            campaign_id=headers.get("x-campaign-id", ""),
            user_id=headers.get("x-user-id", ""),
            priority=headers.get("x-priority", ""),
            headers_size=headers_size + len(received),
        )
        self._action = Commit(message, stored)
        self._mode = _WAIT

    def _protocol_name(self) -> str:
        name = ("UTF8SMTP" if "SMTPUTF8" in self._params else "ESMTP") if self._esmtp else "SMTP"
        if self.tls:
            name += "S"
        if self.auth_user:
            name += "A"
        return name

    def _received_header(self, message_id: str, now: float) -> bytes:
        recipients = self._recipients
        for_clause = f"\r\n\tfor <{recipients[0].address}>" if len(recipients) == 1 else ""
        tls = f"\r\n\t(using {self.tls})" if self.tls else ""
        return (
            f"Received: from {self.helo} (unknown [{self.client_ip}]){tls}\r\n"
            f"\tby {self.settings.hostname} (fastmta) with {self._protocol_name()} id {message_id}"
            f"{for_clause}; {_rfc5322_date(now)}\r\n"
        ).encode()

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
        self._limits.check_auth_allowed(self.client_ip)
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        initial = initial.strip()
        if mechanism == "PLAIN":
            if initial:
                self._auth_plain(initial)
            else:
                self._auth_step = "plain"
                self._out.append(R.AUTH_CONTINUE)
        elif mechanism == "LOGIN":
            if initial:
                self._auth_username = self._decode64(initial)
                self._auth_step = "login-password"
                self._out.append(R.AUTH_PASSWORD)
            else:
                self._auth_step = "login-username"
                self._out.append(R.AUTH_USERNAME)
        else:
            raise R.UnknownMechanism()

    def _auth_continue(self, line: bytes) -> None:
        step, self._auth_step = self._auth_step, ""
        try:
            text = line.decode("ascii").strip()
            if text == "*":
                raise R.AuthCancelled()
            if step == "plain":
                self._auth_plain(text)
            elif step == "login-username":
                self._auth_username = self._decode64(text)
                self._auth_step = "login-password"
                self._out.append(R.AUTH_PASSWORD)
            else:
                self._verify(self._auth_username, self._decode64(text))
        except UnicodeDecodeError:
            self._refuse(R.BadSyntax("Syntax: not base64"))
        except SmtpReplyError as refusal:
            self._refuse(refusal)

    def _auth_plain(self, encoded: str) -> None:
        parts = self._decode64(encoded).split("\0")
        if len(parts) != 3:
            raise R.BadSyntax("Syntax: AUTH PLAIN wants authzid NUL authcid NUL password")
        authzid, username, password = parts
        if authzid and authzid != username:
            raise R.AuthFailed()
        self._verify(username, password)

    def _verify(self, username: str, password: str) -> None:
        if not username or not password:
            raise R.AuthFailed()
        self._action = VerifyAuth(username, password)
        self._mode = _WAIT

    @staticmethod
    def _decode64(text: str) -> str:
        try:
            return base64.b64decode(text, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise R.BadSyntax("Syntax: not base64") from None


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

_date_second = -1
_date_text = ""


def _rfc5322_date(now: float) -> str:
    """Formatting a date costs more than the rest of the header; one per second is enough."""
    global _date_second, _date_text
    second = int(now)
    if second != _date_second:
        _date_second = second
        _date_text = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(second))
    return _date_text
