"""Envelope addresses: the path of MAIL/RCPT, RFC 5321 mailbox syntax, xtext, and sender-specified routing.

Pure functions, no state: the session asks them about one argument at a time.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

from fastmta.smtp import replies as R

# RFC 5321 §4.1.2; RFC 6531 adds any non-ASCII character to atext and to domain labels (U-labels).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LOCAL_PART = re.compile(rf"(?:{_DOT_STRING}|{_QUOTED_STRING})")
_LABEL_CHAR = r"[A-Za-z0-9\u0080-\U0010ffff]"
_LABEL = rf"{_LABEL_CHAR}(?:[A-Za-z0-9\-\u0080-\U0010ffff]*{_LABEL_CHAR})?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_CONTROL = re.compile("[\x00-\x1f\x7f]")

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
POSTMASTER = "postmaster"


def split_path(argument: str, keyword: str) -> tuple[str, list[str]]:
    """'FROM:<a@b> SIZE=10' -> ('a@b', ['SIZE=10']); a source route is dropped; raises BadSyntax."""
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
        # A source route (RFC 5321 §4.1.2, Appendix C): accepted and ignored, as every modern MTA does.
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


def domain_of(address: str) -> str:
    """What a relay decision looks at: the text after the last '@' (the domain a receiver routes on)."""
    return address.rpartition("@")[2]


@lru_cache(maxsize=4096)  # a bulk sender sends from one address all day
def is_mailbox(address: str) -> bool:
    """RFC 5321 §4.1.2 Mailbox: dot-atom or quoted local part, '@', a domain or an IPv4/IPv6 literal."""
    if len(address.encode()) > MAX_PATH - 2:
        return False
    local, at, domain = address.rpartition("@")
    if not at or len(local.encode()) > MAX_LOCAL_PART or not _LOCAL_PART.fullmatch(local):
        return False
    if domain.startswith("[") and domain.endswith("]"):
        return _is_address_literal(domain[1:-1])
    return len(domain.encode()) <= MAX_DOMAIN and _DOMAIN.fullmatch(domain) is not None


def _is_address_literal(literal: str) -> bool:
    try:
        if literal[:5].upper() == "IPV6:":
            if "%" in literal:
                return False  # RFC 5321's IPv6-addr has no zone; ipaddress takes one, with any text in it
            ipaddress.IPv6Address(literal[5:])
        else:
            ipaddress.IPv4Address(literal)
    except ValueError:
        return False
    return True


def has_routing(address: str) -> bool:
    """Sender-specified routing a downstream server might still obey: '%', '!' or '@' in the local part.

    Postfix's allow_untrusted_routing = no refuses the same addresses from untrusted clients. The
    raw text counts, quoted or escaped, because an older receiver may unquote before it routes.
    """
    local = address.rpartition("@")[0]
    return "@" in local or "%" in local or "!" in local


def check_sender(address: str, smtputf8: bool) -> None:
    """The MAIL FROM path: empty (the null sender) or a mailbox."""
    if address:
        _check_mailbox(address, smtputf8, R.BadSender)


def check_recipient(address: str, smtputf8: bool) -> None:
    _check_mailbox(address, smtputf8, R.BadRecipient)


def _check_mailbox(address: str, smtputf8: bool, refusal: type[R.SmtpReplyError]) -> None:
    if not smtputf8 and not address.isascii():
        raise R.NonAsciiAddress()
    if not is_mailbox(address):
        raise refusal()


def is_postmaster(address: str) -> bool:
    """RFC 5321 §4.5.1: RCPT TO:<postmaster> without a domain must be accepted."""
    return address.lower() == POSTMASTER


def xtext_decode(value: str, parameter: str) -> str:
    """RFC 3461 xtext ('+XX' is a hex-escaped byte); a decoded control character is refused."""
    if "+" in value:
        out = bytearray()
        index = 0
        raw = value.encode()
        while index < len(raw):
            if raw[index] == 0x2B:
                hex_digits = raw[index + 1 : index + 3]
                if len(hex_digits) != 2 or not all(c in b"0123456789ABCDEFabcdef" for c in hex_digits):
                    raise R.BadSyntax(f"Syntax: bad xtext in {parameter}")
                out.append(int(hex_digits, 16))
                index += 3
            else:
                out.append(raw[index])
                index += 1
        value = out.decode("utf-8", "replace")
    if _CONTROL.search(value):
        raise R.BadSyntax(f"Syntax: control character in {parameter}")
    return value
