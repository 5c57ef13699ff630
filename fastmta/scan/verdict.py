"""What the scanners found, and what it makes of a message: accepted (tagged), held, refused, or put off.

Pure functions on values: the scanner (scanner.py) gathers the findings, the session turns the
verdict into the reply. Every text that reaches a client or a header passes through here and holds
no control character (DESIGN §2: the rule for every header fastmta writes).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from fastmta.config import ScanConfig

ACCEPT, HOLD, REJECT, TEMPFAIL = "accept", "hold", "reject", "tempfail"

# Why a scanner gave no answer, as the metrics label it.
ERROR, TIMEOUT, BUSY = "error", "timeout", "busy"

# SpamAssassin rule names are letters, digits and underscores; anything else from spamd is dropped.
_RULE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")
_MAX_NAME = 100
_FOLD_AT = 76


class ScanError(Exception):
    """A scanner answered something that is not a verdict."""


class SpamReport(NamedTuple):
    spam: bool
    score: float
    threshold: float
    rules: tuple[str, ...]


class VirusReport(NamedTuple):
    virus: str  # the signature's name; empty: clean


class Unavailable(NamedTuple):
    """No verdict: `why` is ERROR (down, refused, malformed answer), TIMEOUT or BUSY (max_concurrent reached)."""

    why: str
    detail: str = ""


# None: that scanner did not look (off, or the message is over spam_max_size).
SpamFinding = SpamReport | Unavailable | None
VirusFinding = VirusReport | Unavailable | None


class Verdict(NamedTuple):
    action: str  # ACCEPT, HOLD, REJECT or TEMPFAIL
    reason: str = ""  # REJECT: the text after "550 5.7.1"
    headers: bytes = b""  # to prepend to the message when it is queued
    # SpamAssassin is on: headers of its names that the client sent are removed, so none can pass for
    # our verdict (on a message spamd did not judge, or below ours for a reader that takes the last).
    replaces_spam_headers: bool = False


def spam_found(finding: SpamFinding) -> SpamReport | None:
    return finding if isinstance(finding, SpamReport) and finding.spam else None


def virus_found(finding: VirusFinding) -> str:
    """The virus's name; empty when none was found."""
    return finding.virus if isinstance(finding, VirusReport) else ""


def decide(config: ScanConfig, spam: SpamFinding, virus: VirusFinding) -> Verdict:
    """A refusal the scanners are sure of comes first, then a missing answer, then holding."""
    found_spam, found_virus = spam_found(spam), virus_found(virus)
    if found_virus and config.virus_action == REJECT:
        return Verdict(REJECT, f"Message rejected: virus found ({safe_name(found_virus)})")
    if found_spam and config.spam_action == REJECT:
        score, required = found_spam.score, found_spam.threshold
        return Verdict(REJECT, f"Message rejected as spam (score {score:.1f}, required {required:.1f})")
    if config.unavailable == TEMPFAIL and (isinstance(spam, Unavailable) or isinstance(virus, Unavailable)):
        return Verdict(TEMPFAIL)
    held = (found_virus and config.virus_action == HOLD) or (found_spam and config.spam_action == HOLD)
    headers = spam_headers(spam) if isinstance(spam, SpamReport) else b""
    return Verdict(HOLD if held else ACCEPT, headers=headers, replaces_spam_headers=config.spamassassin)


_SPAM_HEADER_NAMES = (b"x-spam-flag", b"x-spam-score", b"x-spam-status")


def without_spam_headers(message: bytes) -> bytes:
    """The message less the X-Spam-Flag, X-Spam-Score and X-Spam-Status fields of its header block (with
    their folded lines); the same bytes when it has none, without a copy."""
    end = message.find(b"\r\n\r\n")
    head = message[: end + 2] if end >= 0 else message
    if b"x-spam-" not in head.lower():
        return message
    kept: list[bytes] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] not in (b" ", b"\t"):  # a new field starts; a folded line belongs to the one before
            dropping = line.split(b":", 1)[0].strip().lower() in _SPAM_HEADER_NAMES
        if not dropping:
            kept.append(line)
    return b"".join(kept) + message[len(head):]


def safe_name(name: str) -> str:
    """A scanner's name for what it found, as printable ASCII without spaces, at most 100 characters."""
    return _UNPRINTABLE.sub("?", name)[:_MAX_NAME]


def spam_headers(report: SpamReport) -> bytes:
    """X-Spam-Flag, X-Spam-Score and X-Spam-Status as SpamAssassin writes them, tests folded into short lines."""
    flag = "YES" if report.spam else "NO"
    status = f"X-Spam-Status: {'Yes' if report.spam else 'No'}, score={report.score:.1f} required={report.threshold:.1f}"
    rules = [rule for rule in report.rules if _RULE.match(rule)]
    lines = [status + " tests=" + (rules[0] if rules else "none")]
    for rule in rules[1:]:
        if len(lines[-1]) + 1 + len(rule) > _FOLD_AT:
            lines[-1] += ","
            lines.append("\t" + rule)
        else:
            lines[-1] += "," + rule
    head = f"X-Spam-Flag: {flag}\r\nX-Spam-Score: {report.score:.1f}\r\n"
    return (head + "\r\n".join(lines) + "\r\n").encode("ascii")

