"""One outbound SMTP connection (aiosmtplib) and the mail transaction it runs for one message."""

from __future__ import annotations

import _ssl
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosmtplib

from fastmta.queue.records import Message, Recipient


@dataclass(frozen=True)
class Destination:
    """What a pool's limits apply to: a route's next host, from one source address."""

    route_index: int
    host: str  # the name: for TLS, the limits and the delivery log
    port: int
    tls: TlsPolicy  # connections are shared only by mail that holds them to the same policy
    source_ip: str = ""


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


# What is kept of a reply, in octets: a reply line is at most 512 (RFC 5321 4.5.3.1.5), a multi-line
# reply may be longer; "Diagnostic-Code: smtp; " and this much stay within RFC 5322's 998 a line.
REPLY_LIMIT = 900
_LINE_BREAKS = re.compile(r"[\r\n]+")
# C0, DEL, C1 (NEL among them), the Unicode line and paragraph separators: each ends a line for some reader.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# aiosmtplib decodes with surrogateescape: a byte that was not UTF-8 is a lone surrogate, which a strict UTF-8 encoder refuses.
_UNDECODED = re.compile(r"[\ud800-\udfff]")


def one_line(reply: str, limit: int = REPLY_LIMIT) -> str:
    """A next hop's reply as it is stored, logged and quoted in a bounce: one line, no control characters, at most `limit` octets.

    The text is the remote's to choose, and aiosmtplib joins a multi-line reply's lines with LF:
    written as it came, a second line 'Action: delivered' would be a field of our report. Lines are
    joined with '; ', other control characters and runs of white space become one space.
    """
    text = _UNDECODED.sub("\ufffd", reply)
    lines = (" ".join(_CONTROLS.sub(" ", line).split()) for line in _LINE_BREAKS.split(text))
    flat = "; ".join(line for line in lines if line)
    encoded = flat.encode()
    if len(encoded) <= limit:
        return flat
    return encoded[: limit - 3].decode("utf-8", "ignore").rstrip() + "..."


class ConnectionFailed(Exception):
    """The next hop could not be reached or dropped us: every recipient of the attempt is deferred."""

    def __init__(self, message: str, status: str = "4.4.1") -> None:
        super().__init__(message)
        self.status = status  # the enhanced status code the deferral is given


@dataclass(frozen=True)
class TlsPolicy:
    mode: str  # "none" | "opportunistic" | "required"
    username: str = ""
    password: str = field(default="", repr=False)
    # A policy's own check of the next hop (DANE, MTA-STS; delivery/tlspolicy) in place of the
    # system's CAs: given the certificate chain (DER, leaf first) right after STARTTLS, or None when
    # there was none, it says why the connection must not be used, or "".
    check: Callable[[list[bytes] | None], str] | None = None


_OPPORTUNISTIC = ssl.create_default_context()
_OPPORTUNISTIC.check_hostname = False
# As Postfix's "may": any certificate beats plain text, so an unverifiable one is still used.
_OPPORTUNISTIC.verify_mode = ssl.CERT_NONE

_CONNECTION_ERRORS = (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError)


class _HandshakeFailed(Exception):
    """STARTTLS was offered but could not be completed."""


class Connection:
    def __init__(self, destination: Destination, address: str, helo: str, connect_timeout: float, command_timeout: float) -> None:
        self.destination = destination
        self.address = address
        self.messages_sent = 0
        self.tls = False
        self._helo = helo
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._smtp = self._client()

    def _client(self) -> aiosmtplib.SMTP:
        destination = self.destination
        return aiosmtplib.SMTP(
            hostname=self.address,
            port=destination.port,
            local_hostname=self._helo,
            source_address=(destination.source_ip, 0) if destination.source_ip else None,
            timeout=self._command_timeout,
            start_tls=False,
        )

    async def open(self, policy: TlsPolicy) -> None:
        try:
            try:
                await self._greet(policy, starttls=policy.mode != "none")
            except _HandshakeFailed:
                if policy.mode != "opportunistic" or policy.username:
                    raise  # plain text would not do: the route wants TLS, or has credentials to protect
                # As Postfix's "may": a handshake that fails is retried once in plain text.
                self.close()
                self._smtp = self._client()
                await self._greet(policy, starttls=False)
        except ConnectionFailed:
            self.close()
            raise
        except aiosmtplib.SMTPAuthenticationError as exc:
            self.close()
            raise ConnectionFailed(f"authentication failed: {exc.code} {exc.message}") from None
        except aiosmtplib.SMTPResponseException as exc:
            self.close()
            raise ConnectionFailed(f"refused: {exc.code} {exc.message}") from None
        except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException, _HandshakeFailed) as exc:
            self.close()
            raise ConnectionFailed(f"cannot talk to {self.destination.host}[{self.address}]: {exc}") from None

    async def _greet(self, policy: TlsPolicy, starttls: bool) -> None:
        """Connect, EHLO, STARTTLS when asked and offered (and EHLO again), AUTH if the route has credentials."""
        smtp = self._smtp
        await smtp.connect(timeout=self._connect_timeout)
        await smtp.ehlo()
        if starttls and smtp.supports_extension("starttls"):
            verify = policy.mode == "required" and policy.check is None
            try:
                await smtp.starttls(
                    server_hostname=self.destination.host,
                    validate_certs=verify,
                    tls_context=None if verify else _OPPORTUNISTIC,
                )
            except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException) as exc:
                raise _HandshakeFailed(f"STARTTLS failed: {exc}") from None
            self.tls = True
            self._check(policy, self._peer_chain())
            await smtp.ehlo()
        elif policy.mode == "required" and policy.check is None:
            raise ConnectionFailed(f"{self.destination.host} does not offer STARTTLS, which the route requires")
        else:
            self._check(policy, None)
        if policy.username:
            if not self.tls and policy.mode != "none":
                # As Postfix's smtp_sasl_security_options = noplaintext: only a route that says
                # tls = "none" may send its password unencrypted.
                raise ConnectionFailed(
                    f"{self.destination.host} offers no working STARTTLS; not sending credentials in clear text"
                )
            await smtp.login(policy.username, policy.password)

    def _peer_chain(self) -> list[bytes]:
        """The certificates the next hop sent, leaf first, as DER."""
        tls = self._smtp.get_transport_info("ssl_object")
        # SSLObject.get_unverified_chain() is public from Python 3.13; before, only its _ssl object has it.
        chain = tls._sslobj.get_unverified_chain() if tls is not None else None
        return [certificate.public_bytes(_ssl.ENCODING_DER) for certificate in chain or ()]

    @staticmethod
    def _check(policy: TlsPolicy, chain: list[bytes] | None) -> None:
        if policy.check is not None:
            refusal = policy.check(chain)
            if refusal:
                raise ConnectionFailed(refusal, "4.7.5")  # "Cryptographic failure" (RFC 5248)

    @property
    def usable(self) -> bool:
        return self._smtp.is_connected

    @property
    def offers_dsn(self) -> bool:
        """A next hop with DSN takes over the sender's NOTIFY requests (RFC 3461 6.2.1)."""
        return self._smtp.supports_extension("dsn")

    async def send(self, message: Message, recipients: list[Recipient], body: bytes) -> dict[str, Reply]:
        """One transaction for all `recipients`; each gets the reply that decided its fate."""
        smtp = self._smtp
        utf8_hop = smtp.supports_extension("smtputf8")
        if message.smtputf8 and not utf8_hop and _needs_smtputf8(message, recipients, body):
            refusal = Reply(553, "5.6.7 The next hop does not support SMTPUTF8, which this message needs")
            return {r.address: refusal for r in recipients}
        mail_options = [f"SIZE={len(body)}"] if smtp.supports_extension("size") else []
        if message.body_type.upper() == "8BITMIME" and smtp.supports_extension("8bitmime"):
            mail_options.append("BODY=8BITMIME")
        if message.smtputf8 and utf8_hop:
            mail_options.append("SMTPUTF8")
        dsn = smtp.supports_extension("dsn")
        if dsn and message.ret:
            mail_options.append(f"RET={message.ret}")
        if dsn and message.envid:
            mail_options.append(f"ENVID={xtext(message.envid)}")
        encoding = "utf-8" if message.smtputf8 else "ascii"
        replies: dict[str, Reply] = {}
        try:
            try:
                await smtp.mail(message.sender, options=mail_options, encoding=encoding)
            except aiosmtplib.SMTPResponseException as exc:
                await self._reset()
                return {r.address: Reply(exc.code, exc.message) for r in recipients}
            accepted = []
            for recipient in recipients:
                options = []
                if dsn and recipient.notify:
                    options.append("NOTIFY=" + ",".join(recipient.notify))
                if dsn and recipient.orcpt:
                    options.append(f"ORCPT={xtext(recipient.orcpt)}")
                try:
                    await smtp.rcpt(recipient.address, options=options, encoding=encoding)
                    accepted.append(recipient)
                except aiosmtplib.SMTPResponseException as exc:
                    replies[recipient.address] = Reply(exc.code, exc.message)
            if not accepted:
                await self._reset()
                return replies
            final = await self._transfer(body)
            for recipient in accepted:
                replies[recipient.address] = final
            self.messages_sent += 1
            return replies
        except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException) as exc:
            self.close()
            raise ConnectionFailed(f"lost {self.destination.host}[{self.address}]: {exc}") from None

    async def _transfer(self, body: bytes) -> Reply:
        """The message itself: one BDAT LAST when the next hop offers CHUNKING, else DATA with dot-stuffing.

        Written here rather than with SMTP.data(), whose per-line regular expressions cost 2.6 ms
        per 100 KiB message: bytes.count and bytes.replace do the same work in C, in microseconds.
        The connection is ours alone while it is out of the pool, so nothing else writes between.
        """
        smtp = self._smtp
        protocol = smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        body = crlf_lines(body)
        if smtp.supports_extension("chunking"):
            protocol.write(b"BDAT %d LAST\r\n" % len(body))
            protocol.write(body)
        else:
            start = await smtp.execute_command(b"DATA")
            if start.code != 354:
                return Reply(start.code, start.message)
            protocol.write(dot_stuffed(body))
            protocol.write(b".\r\n")
        response = await protocol.read_response(timeout=smtp.timeout)
        return Reply(response.code, response.message)

    async def _reset(self) -> None:
        try:
            await self._smtp.rset()
        except aiosmtplib.SMTPResponseException:
            self.close()

    async def quit(self) -> None:
        try:
            await self._smtp.quit()
        except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException):
            self.close()

    def close(self) -> None:
        self._smtp.close()


def _needs_smtputf8(message: Message, recipients: list[Recipient], body: bytes) -> bool:
    """As Postfix's autodetection: a client may ask for SMTPUTF8 for mail that is plain ASCII after all."""
    end = body.find(b"\r\n\r\n")
    header = body if end < 0 else body[:end]
    return not (message.sender.isascii() and all(r.address.isascii() for r in recipients) and header.isascii())


_LINE_END = re.compile(rb"\r\n|\r|\n")


def crlf_lines(body: bytes) -> bytes:
    """Every line ended by CRLF, the last one too; a body that already is comes back as it is."""
    crlf = body.count(b"\r\n")
    if body.count(b"\r") != crlf or body.count(b"\n") != crlf:  # bare CR or LF, kept by bare_line_endings = "accept"
        body = _LINE_END.sub(b"\r\n", body)
    return body if body.endswith(b"\r\n") or not body else body + b"\r\n"


def dot_stuffed(body: bytes) -> bytes:
    """RFC 5321 4.5.2 for a body of CRLF lines: a dot at the start of a line doubled (the end-of-data line is not added)."""
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def xtext(value: str) -> str:
    """RFC 3461 xtext: '+', '=' and anything outside printable ASCII become '+XX'.

    Total: a lone surrogate (a byte that was not UTF-8) is escaped too, never an exception.
    """
    return "".join(
        c if "!" <= c <= "~" and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for c in value
    )
