"""SMTP replies: named constants with enhanced status codes, and one exception type per distinct refusal."""

from __future__ import annotations


def reply(code: int, status: str, text: str) -> bytes:
    return f"{code} {status} {text}\r\n".encode()


def multiline(code: int, lines: list[str]) -> bytes:
    *head, last = lines
    return "".join([f"{code}-{line}\r\n" for line in head] + [f"{code} {last}\r\n"]).encode()


OK = reply(250, "2.0.0", "Ok")
SENDER_OK = reply(250, "2.1.0", "Ok")
RECIPIENT_OK = reply(250, "2.1.5", "Ok")
START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
BYE = reply(221, "2.0.0", "Bye")
VRFY_CANNOT = reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")
READY_FOR_TLS = reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK = reply(235, "2.7.0", "Authentication successful")
AUTH_USERNAME = b"334 VXNlcm5hbWU6\r\n"
AUTH_PASSWORD = b"334 UGFzc3dvcmQ6\r\n"
AUTH_CONTINUE = b"334 \r\n"
HELP = multiline(
    214,
    [
        "2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY ETRN STARTTLS AUTH",
        "2.0.0 See RFC 5321",
    ],
)
SHUTTING_DOWN = reply(421, "4.3.2", "Service shutting down, closing connection")
IN_MAINTENANCE = reply(421, "4.3.2", "Service in maintenance, try again later")
TIMEOUT = reply(421, "4.4.2", "Timeout exceeded, closing connection")
DATA_TOO_SLOW = reply(421, "4.4.2", "Data arriving too slowly, closing connection")
SESSION_TOO_LONG = reply(421, "4.4.2", "Session time limit exceeded, closing connection")
UNTRUSTED_PROXY = reply(421, "4.7.0", "PROXY header not accepted from this address")
TOO_MANY_ERRORS = reply(421, "4.7.0", "Too many errors, closing connection")
LOCAL_ERROR = reply(451, "4.3.0", "Local error in processing")
STORE_FULL = reply(452, "4.3.1", "Insufficient system storage")


def queued(message_id: str) -> bytes:
    return b"250 2.0.0 Ok: queued as " + message_id.encode() + b"\r\n"


def chunk_received(size: int) -> bytes:
    return b"250 2.0.0 Ok: " + str(size).encode() + b" octets received\r\n"


def etrn_started(domain: str) -> bytes:
    return reply(250, "2.0.0", f"Queuing for node {domain} started")


class SmtpReplyError(Exception):
    """A refusal the client hears; the class fixes the code, the instance may refine the text."""

    code = 451
    status = "4.3.0"
    text = "Local error in processing"
    closes = False
    limit = ""  # for a refusal by a configured limit: that setting's name, as the metrics label it

    def __init__(self, text: str | None = None) -> None:
        super().__init__(text or self.text)
        self.reply = reply(self.code, self.status, text or self.text)


class UnknownCommand(SmtpReplyError):
    code, status, text = 500, "5.5.2", "Error: command not recognized"


class LineTooLong(SmtpReplyError):
    code, status, text = 500, "5.5.2", "Error: line too long"


class BadCharacters(SmtpReplyError):
    code, status, text = 501, "5.5.4", "Syntax: control character in command"


class BadSyntax(SmtpReplyError):
    code, status, text = 501, "5.5.4", "Syntax error in parameters or arguments"


class NotImplementedCommand(SmtpReplyError):
    code, status, text = 502, "5.5.1", "Error: command not implemented"


class BadSequence(SmtpReplyError):
    code, status, text = 503, "5.5.1", "Error: bad sequence of commands"


class UnknownParameter(SmtpReplyError):
    code, status, text = 555, "5.5.4", "Unsupported option"


class BadSender(SmtpReplyError):
    code, status, text = 501, "5.1.7", "Bad sender address syntax"


class BadRecipient(SmtpReplyError):
    code, status, text = 501, "5.1.3", "Bad recipient address syntax"


class RoutingDenied(SmtpReplyError):
    code, status, text = 550, "5.7.1", "Sender-specified routing is not allowed"


class NonAsciiAddress(SmtpReplyError):
    code, status, text = 553, "5.6.7", "Non-ASCII address requires SMTPUTF8"


class RelayDenied(SmtpReplyError):
    code, status, text = 554, "5.7.1", "Relay access denied"


class AuthRequired(SmtpReplyError):
    code, status, text = 530, "5.7.0", "Authentication required"


class EncryptionRequired(SmtpReplyError):
    code, status, text = 538, "5.7.11", "Encryption required for requested authentication mechanism"


class AuthFailed(SmtpReplyError):
    code, status, text = 535, "5.7.8", "Authentication credentials invalid"


class AuthUnavailable(SmtpReplyError):
    """RFC 4954's temporary failure: the accounts could not be read (the cluster's database is down)."""

    code, status, text = 454, "4.7.0", "Temporary authentication failure, try again later"


class AuthCancelled(SmtpReplyError):
    code, status, text = 501, "5.7.0", "Authentication cancelled"


class UnknownMechanism(SmtpReplyError):
    code, status, text = 504, "5.5.4", "Unrecognized authentication mechanism"


class TlsUnavailable(SmtpReplyError):
    code, status, text = 454, "4.7.0", "TLS not available"


class MessageTooBig(SmtpReplyError):
    code, status, text = 552, "5.3.4", "Message size exceeds fixed limit"


class TooManyRecipients(SmtpReplyError):
    code, status, text = 452, "4.5.3", "Error: too many recipients"


class HeaderLineTooLong(SmtpReplyError):
    code, status, text = 552, "5.3.4", "Message header line exceeds 998 octets"


class HeaderTooBig(SmtpReplyError):
    code, status, text = 552, "5.3.4", "Message header size exceeds limit"


class BareLineEnding(SmtpReplyError):
    code, status, text = 550, "5.6.0", "Message contains bare CR or bare LF line endings"


class ContentRejected(SmtpReplyError):
    code, status, text = 550, "5.7.1", "Message content rejected"


class ScanUnavailable(SmtpReplyError):
    code, status, text = 451, "4.7.1", "Content scanning is unavailable, try again later"


class StoreFull(SmtpReplyError):
    code, status, text = 452, "4.3.1", "Insufficient system storage"


class LocalError(SmtpReplyError):
    pass


class RateLimited(SmtpReplyError):
    code, status, text = 421, "4.7.0", "Rate limit exceeded, try again later"
    closes = True


class QuotaExceeded(SmtpReplyError):
    code, status, text = 450, "4.7.1", "Daily sending quota reached, try again later"


class TooManyConnections(SmtpReplyError):
    code, status, text = 421, "4.7.0", "Too many connections, try again later"
    closes = True


class TooManyFromAddress(SmtpReplyError):
    code, status, text = 421, "4.7.0", "Too many simultaneous connections from your address, try again later"
    closes = True


class ForbiddenCommand(SmtpReplyError):
    code, status, text = 221, "2.7.0", "Error: this is an SMTP server, not a web proxy"
    closes = True
