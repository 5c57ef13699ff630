"""Content scanning's pure pieces: the verdict, the headers fastmta writes, the daemons' answers, the session's
replies to a verdict, the quarantine in the store, and the settings."""

from __future__ import annotations

import email
import time
from pathlib import Path

import pytest

from fastmta.config import ConfigError, ScanConfig, load
from fastmta.events import records as events
from fastmta.events.names import WEBHOOK_NAMES
from fastmta.events.records import EVENT_DECODER, EVENT_ENCODER
from fastmta.queue.records import HELD, Message, Recipient, new_message_id
from fastmta.queue.store import QueueStore, StoreFullError
from fastmta.scan import clamd, spamd
from fastmta.scan.verdict import (
    ACCEPT,
    BUSY,
    ERROR,
    HOLD,
    REJECT,
    TEMPFAIL,
    ScanError,
    SpamReport,
    Unavailable,
    Verdict,
    VirusReport,
    decide,
    spam_headers,
    without_spam_headers,
)
from fastmta.smtp.session import Session
from tests.session_driver import Driver, make_settings

SPAM = SpamReport(True, 1003.3, 5.0, ("GTUBE", "NO_RELAYS"))
HAM = SpamReport(False, -0.1, 5.0, ("NO_RELAYS",))
VIRUS = VirusReport("Eicar-Test-Signature.UNOFFICIAL")
CLEAN = VirusReport("")
DOWN = Unavailable(ERROR, "connection refused")


def scan(**changes: object) -> ScanConfig:
    return ScanConfig(spamassassin=True, clamav=True, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "spam", "virus", "action"),
    [
        (scan(), HAM, CLEAN, ACCEPT),
        (scan(), SPAM, CLEAN, ACCEPT),  # tagged
        (scan(spam_action="hold"), SPAM, CLEAN, HOLD),
        (scan(spam_action="reject"), SPAM, CLEAN, REJECT),
        (scan(), HAM, VIRUS, REJECT),
        (scan(spam_action="hold"), SPAM, VIRUS, REJECT),
        (scan(virus_action="hold"), HAM, VIRUS, HOLD),
        (scan(virus_action="hold", spam_action="reject"), SPAM, VIRUS, REJECT),
        # What a scanner is sure of beats the other one's silence.
        (scan(), DOWN, VIRUS, REJECT),
        (scan(spam_action="reject"), SPAM, DOWN, REJECT),
        (scan(), HAM, DOWN, TEMPFAIL),
        (scan(), Unavailable(BUSY), Unavailable(BUSY), TEMPFAIL),
        (scan(unavailable="accept"), HAM, DOWN, ACCEPT),
        (scan(unavailable="accept", spam_action="hold"), SPAM, DOWN, HOLD),
        (scan(unavailable="accept"), Unavailable(BUSY), Unavailable(BUSY), ACCEPT),
        (scan(), None, CLEAN, ACCEPT),  # over spam_max_size, or spamd off
    ],
)
def test_the_verdict(config: ScanConfig, spam: SpamReport | Unavailable | None, virus: VirusReport | Unavailable, action: str) -> None:
    verdict = decide(config, spam, virus)
    assert verdict.action == action
    # Every message spamd judged carries its headers; no other does.
    assert verdict.headers == (spam_headers(spam) if isinstance(spam, SpamReport) and action in (ACCEPT, HOLD) else b"")


def test_the_reasons_a_client_hears() -> None:
    assert decide(scan(), HAM, VIRUS).reason == "Message rejected: virus found (Eicar-Test-Signature.UNOFFICIAL)"
    assert decide(scan(spam_action="reject"), SPAM, CLEAN).reason == "Message rejected as spam (score 1003.3, required 5.0)"
    # A name clamd sends is printable ASCII without spaces by the time a client hears it.
    sneaky = decide(scan(), HAM, VirusReport("Bad\r\n250 2.0.0 Ok \x00" + "x" * 300)).reason
    assert sneaky.isascii() and sneaky.isprintable() and "\r" not in sneaky and len(sneaky) < 160


def test_spam_headers_are_spamassassins_folded_and_clean() -> None:
    rules = tuple(f"RULE_NUMBER_{n}" for n in range(30)) + ("BAD\r\nX-Injected: yes", "ALSO BAD", "")
    raw = spam_headers(SpamReport(True, 7.25, 5.0, rules))
    lines = raw.split(b"\r\n")
    assert lines[0] == b"X-Spam-Flag: YES" and lines[1] == b"X-Spam-Score: 7.2"
    assert lines[2].startswith(b"X-Spam-Status: Yes, score=7.2 required=5.0 tests=RULE_NUMBER_0,RULE_NUMBER_1,")
    assert raw.endswith(b"\r\n") and all(len(line) <= 78 for line in lines)
    assert all(line.startswith(b"\t") for line in lines[3:-1])
    assert all(32 <= byte < 127 or byte in (9, 10, 13) for byte in raw)
    parsed = email.message_from_bytes(raw + b"\r\nbody\r\n")
    assert "X-Injected" not in parsed and len(parsed.get_all("X-Spam-Status")) == 1
    status = "".join(parsed["X-Spam-Status"].split())  # unfolded
    assert status.endswith("tests=" + ",".join(rules[:30]))
    assert spam_headers(SpamReport(False, 0.0, 5.0, ())) == (
        b"X-Spam-Flag: NO\r\nX-Spam-Score: 0.0\r\nX-Spam-Status: No, score=0.0 required=5.0 tests=none\r\n"
    )


def test_spamd_answers() -> None:
    reply = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 15\r\nSpam: True ; 1003.3 / 5.0\r\n\r\nGTUBE,NO_RELAYS"
    assert spamd.parse_reply(reply) == SpamReport(True, 1003.3, 5.0, ("GTUBE", "NO_RELAYS"))
    assert spamd.parse_reply(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -0.1 / 5.0\r\n\r\n") == SpamReport(False, -0.1, 5.0, ())
    for broken in (
        b"SPAMD/1.0 76 Bad header line: Content-length\r\n\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n",  # no Spam header
        b"SPAMD/1.1 0 EX_OK\r\nSpam: Maybe ; 1 / 5\r\n\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; nan / 5.0\r\n\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9 / \r\n\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9",  # cut off
        b"HTTP/1.1 400 Bad Request\r\n\r\n",
    ):
        with pytest.raises(ScanError):
            spamd.parse_reply(broken)


def test_clamd_answers() -> None:
    assert clamd.parse_reply(b"stream: OK\0") == VirusReport("")
    assert clamd.parse_reply(b"stream: Eicar-Test-Signature FOUND\0") == VirusReport("Eicar-Test-Signature")
    for broken in (b"INSTREAM size limit exceeded. ERROR\0", b"UNKNOWN COMMAND\0", b""):
        with pytest.raises(ScanError):
            clamd.parse_reply(broken)


def test_settings_and_their_variables() -> None:
    config = load(environ={
        "SMTP_ENABLE_SPAMASSASSIN": "true", "SMTP_SPAMASSASSIN_HOST": "10.0.0.5", "SMTP_SPAMASSASSIN_PORT": "7830",
        "SMTP_ENABLE_CLAMAV": "yes", "SMTP_CLAMAV_HOST": "clamd.internal", "SMTP_CLAMAV_PORT": "3311",
        "FASTMTA_SCAN_SPAM_ACTION": "hold", "FASTMTA_SCAN_TIMEOUT": "5s",
    })  # fmt: skip
    scanning = config.scan
    assert scanning.enabled and (scanning.spamassassin_host, scanning.spamassassin_port) == ("10.0.0.5", 7830)
    assert (scanning.clamav_host, scanning.clamav_port) == ("clamd.internal", 3311)
    assert scanning.spam_action == "hold" and scanning.timeout == 5.0
    assert not load(environ={}).scan.enabled
    for environ, named in (
        ({"FASTMTA_SCAN_VIRUS_ACTION": "tag"}, "scan.virus_action"),
        ({"FASTMTA_SCAN_UNAVAILABLE": "retry"}, "scan.unavailable"),
        ({"SMTP_CLAMAV_PORT": "99999"}, "scan.clamav_port"),
        ({"FASTMTA_SCAN_CONNECT_TIMEOUT": "0s"}, "scan.connect_timeout"),
        ({"SMTP_SPAMASSASSIN_HOST": ""}, "scan.spamassassin_host"),
        ({"SMTP_ENABLE_CLAMAV": "maybe"}, "SMTP_ENABLE_CLAMAV"),
    ):
        with pytest.raises(ConfigError, match=named):
            load(environ=environ)


MESSAGE = b"Subject: s\r\n\r\nbody\r\n"
TRANSACTION = b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" + MESSAGE + b".\r\n"


def scanning_driver(verdict: Verdict) -> Driver:
    return Driver(Session(make_settings(scan=True), "127.0.0.1", 4000), verdict=verdict)


def test_a_scanned_message_is_committed_with_the_headers_tagged_or_held() -> None:
    headers = spam_headers(SPAM)
    for verdict, state in ((Verdict(ACCEPT, headers=headers), "active"), (Verdict(HOLD, headers=headers), HELD)):
        driver = scanning_driver(verdict)
        assert driver.feed(TRANSACTION).endswith(b"250 2.0.0 Ok: queued as " + driver.commits[0].message.id.encode() + b"\r\n")
        (scanned,), (committed,) = driver.scans, driver.commits
        assert scanned.body == MESSAGE and committed.message.state == state
        received, rest = committed.body.split(b"\r\n", 1)[0], committed.body.split(headers, 1)
        assert received.startswith(b"Received: ") and rest[1] == MESSAGE
        assert committed.message.headers_size == len(committed.body) - len(b"body\r\n")


def test_spam_headers_the_client_sent_are_removed_when_spamassassin_is_on() -> None:
    forged = b"X-Spam-Flag: NO\r\nSubject: s\r\nx-spam-status: No, score=-5.0\r\n\ttests=FORGED\r\n\r\nX-Spam-Flag: body\r\n"
    assert without_spam_headers(forged) == b"Subject: s\r\n\r\nX-Spam-Flag: body\r\n"
    assert without_spam_headers(MESSAGE) is MESSAGE
    assert decide(scan(), None, CLEAN).replaces_spam_headers and not decide(ScanConfig(clamav=True), None, CLEAN).replaces_spam_headers
    driver = scanning_driver(Verdict(ACCEPT, replaces_spam_headers=True))
    driver.feed(TRANSACTION.replace(MESSAGE, forged))
    (committed,) = driver.commits
    assert committed.body.startswith(b"Received: ") and b"X-Spam" not in committed.body.split(b"\r\n\r\n")[0]
    assert committed.body.endswith(b"\r\nSubject: s\r\n\r\nX-Spam-Flag: body\r\n")
    assert committed.message.headers_size == committed.body.index(b"\r\n\r\n") + 4


@pytest.mark.parametrize(
    ("verdict", "reply"),
    [
        (Verdict(REJECT, "Message rejected: virus found (Eicar)"), b"550 5.7.1 Message rejected: virus found (Eicar)\r\n"),
        (Verdict(TEMPFAIL), b"451 4.7.1 Content scanning is unavailable, try again later\r\n"),
    ],
)
def test_a_refused_message_is_not_committed_and_the_session_goes_on(verdict: Verdict, reply: bytes) -> None:
    driver = scanning_driver(verdict)
    assert driver.feed(TRANSACTION).endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n" + reply)
    assert driver.commits == [] and len(driver.scans) == 1
    (rejection,) = driver.session.rejections
    assert (rejection.stage, rejection.reply, rejection.sender) == ("data", reply, "a@example.com")
    driver.session.rejections.clear()
    driver.verdict = Verdict(ACCEPT)
    again = driver.feed(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nBDAT 20 LAST\r\n" + MESSAGE)
    assert again.split(b"\r\n")[-2].startswith(b"250 2.0.0 Ok: queued as")
    assert len(driver.scans) == 2 and driver.commits[0].data == MESSAGE


def test_without_scanning_a_message_goes_straight_to_commit() -> None:
    driver = Driver(Session(make_settings(), "127.0.0.1", 4000), verdict=Verdict(REJECT, "never asked"))
    driver.feed(TRANSACTION)
    assert driver.scans == [] and len(driver.commits) == 1


def message() -> Message:
    now = time.time()
    return Message(id=new_message_id(now), sender="a@example.com", recipients=[Recipient(address="b@example.org")],
                   received_at=now, size=10, next_attempt=now)  # fmt: skip


def found(message_id: str) -> events.SpamDetected:
    return events.SpamDetected(id=events.new_event_id(), at=time.time(), node="n1", message_id=message_id, action="held",
                               score=1003.3, threshold=5.0, rules=["GTUBE"])  # fmt: skip


def test_a_quarantined_message_waits_for_a_release_with_its_findings_beside_it(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 4 << 20, node="n1")
    store.outbox.register(["history"])
    held, fits, too_big = message(), message(), message()
    held.state = HELD
    batch = [(held, b"spam"), (fits, b"ham"), (too_big, b"z" * (8 << 20))]
    stored = store.insert(batch, message_events={m.id: [found(m.id)] for m in (held, too_big)})
    assert stored[:2] == [None, None] and isinstance(stored[2], StoreFullError)
    assert store.due() == [fits.id] and store.get(held.id).state == HELD  # type: ignore[union-attr]
    kinds = [(type(e).__name__, e.message_id) for entry in store.outbox.read(0, 10) if (e := entry.event) is not None]
    # A finding is stored exactly when its message is.
    assert kinds == [("Received", held.id), ("Held", held.id), ("SpamDetected", held.id), ("Received", fits.id)]
    store.set_held(held.id, False)
    assert sorted(store.due()) == sorted([held.id, fits.id])


def test_findings_round_trip_and_have_webhook_names() -> None:
    virus = events.VirusDetected(id=events.new_event_id(), at=1.0, node="n1", message_id="m", action="rejected",
                                 client_ip="192.0.2.1", sender="a@example.com", virus="Eicar")  # fmt: skip
    for event in (found("m"), virus):
        assert EVENT_DECODER.decode(EVENT_ENCODER.encode(event)) == event
    assert (WEBHOOK_NAMES["spam_detected"], WEBHOOK_NAMES["virus_detected"]) == ("spam.detected", "virus.detected")
