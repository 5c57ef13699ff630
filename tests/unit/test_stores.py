"""The stores of routes that keep mail: each copy read back the way its readers read it (mailbox, files, SQL, S3)."""

from __future__ import annotations

import base64
import contextlib
import mailbox
import re
import resource
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import sqlalchemy as sa

from fastmta import cli
from fastmta.config import RouteConfig, StoreConfig
from fastmta.stores import opened
from fastmta.stores.base import Copy, Failed, Refused
from fastmta.stores.eml_tree import EmlTreeStore
from fastmta.stores.maildir import MaildirStore
from fastmta.stores.mbox import MboxStore
from fastmta.stores.sealed import Sealer, SealError
from fastmta.stores.sqlite import BadQuery, SqliteStore, page
from tests import s3

T0 = 1_709_812_800.0  # 2024-03-07 12:00:00 UTC
# Lines an mbox reader would take for separators, or for escaped ones: each must come back as sent.
TRICKY = b"Subject: quarterly\r\nFrom: a@x.test\r\n\r\nFrom here on\r\n>From there\r\n>>From far\r\nFromage\r\n"
KEY_1, KEY_2 = (base64.b64encode(bytes([n]) * 32).decode() for n in (1, 2))


def copy(body: bytes = TRICKY, message_id: str = "0ABCDEFGHJKMNPQR", recipients: tuple[str, ...] = ("bob@x.test",)) -> Copy:
    return Copy(message_id, "alice@x.test", recipients, T0, body)


def test_maildir_copies_are_read_back_by_mailbox_maildir(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path)
    store.put(copy(recipients=("Bob@X.test",)))
    store.put(copy(b"Subject: two\r\n\r\n2\r\n"))
    box = mailbox.Maildir(tmp_path / "bob@x.test", create=False)
    assert sorted(box.get_bytes(key) for key in box.keys()) == sorted([TRICKY, b"Subject: two\r\n\r\n2\r\n"])
    assert list((tmp_path / "bob@x.test" / "tmp").iterdir()) == []
    for hostile in ("../etc@x", "a/b@x", ".hidden@x"):
        with pytest.raises(Refused):
            store.put(copy(recipients=(hostile,)))


def unescaped(entry: bytes) -> bytes:
    """mboxrd read back: one ">" less on each line that matches ^>+From ."""
    return re.sub(rb"(?m)^>(>*From )", rb"\1", entry)


def test_mbox_is_mboxrd_under_separators_and_read_back_by_mailbox_mbox(tmp_path: Path) -> None:
    store = MboxStore(tmp_path)
    store.put(copy())
    store.put(Copy("1ABCDEFGHJKMNPQR", "", ("bob@x.test",), T0, b"Subject: bounce\r\n\r\nno final newline"))
    box = mailbox.mbox(tmp_path / "bob@x.test", create=False)
    first, second = box
    assert first.get_from().startswith("alice@x.test ") and second.get_from().startswith("MAILER-DAEMON ")
    raw = box.get_bytes(0)
    assert b"\n>From here on\n>>From there\n>>>From far\nFromage\n" in raw  # escaped, LF endings
    assert unescaped(raw) == TRICKY.replace(b"\r\n", b"\n")
    assert box.get_bytes(1) == b"Subject: bounce\n\nno final newline\n"
    assert not (tmp_path / "bob@x.test.lock").exists()
    with pytest.raises(Refused):
        store.put(copy(recipients=("bob@x.test.lock",)))


def test_mbox_waits_while_another_reader_holds_its_locks(tmp_path: Path) -> None:
    """Python's mailbox takes fcntl and the dot-lock, as mutt and procmail do: the store waits for both."""
    store = MboxStore(tmp_path)
    store.put(copy())
    box = mailbox.mbox(tmp_path / "bob@x.test", create=False)
    box.lock()
    writer = threading.Thread(target=store.put, args=(copy(b"Subject: later\r\n\r\nx\r\n"),))
    writer.start()
    writer.join(0.3)
    assert writer.is_alive() and len(mailbox.mbox(tmp_path / "bob@x.test")) == 1
    box.unlock()
    writer.join(5)
    assert not writer.is_alive() and len(mailbox.mbox(tmp_path / "bob@x.test")) == 2


@contextlib.contextmanager
def file_size_limit() -> Iterator[None]:
    """Writes past 4 KiB fail (EFBIG), as on a full disk; SIGXFSZ, which would kill the process, is ignored.
    Only around the write under test: pytest's own output, a file perhaps, must not meet the limit."""
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, handler)


def test_an_mbox_write_that_fails_halfway_is_cut_off(tmp_path: Path) -> None:
    store = MboxStore(tmp_path)
    store.put(copy())
    size = (tmp_path / "bob@x.test").stat().st_size
    with file_size_limit(), pytest.raises(Failed, match="mbox write failed"):
        store.put(copy(b"Subject: big\r\n\r\n" + b"x" * 8000 + b"\r\n"))
    assert (tmp_path / "bob@x.test").stat().st_size == size
    assert [message["subject"] for message in mailbox.mbox(tmp_path / "bob@x.test")] == ["quarterly"]


def test_eml_tree_files_a_message_under_its_day_and_a_retry_replaces_it(tmp_path: Path) -> None:
    store = EmlTreeStore(tmp_path)
    store.put(copy(recipients=("bob@x.test", "carol@x.test")))
    store.put(copy())
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == ["2024/03/07/0ABCDEFGHJKMNPQR.eml"]
    assert (tmp_path / "2024/03/07/0ABCDEFGHJKMNPQR.eml").read_bytes() == TRICKY


def test_sealed_copies_open_with_the_key_that_sealed_them(tmp_path: Path) -> None:
    old = Sealer({"k1": base64.b64decode(KEY_1)}, "k1")
    sealed = old.seal(TRICKY)
    assert sealed.startswith(b"FMTASEAL\x01\x02k1") and TRICKY not in sealed and old.seal(TRICKY) != sealed
    rotated = Sealer({"k1": base64.b64decode(KEY_1), "k2": base64.b64decode(KEY_2)}, "k2")
    assert rotated.unseal(sealed) == TRICKY and rotated.unseal(rotated.seal(b"new")) == b"new"
    assert rotated.seal(b"new").startswith(b"FMTASEAL\x01\x02k2")
    with pytest.raises(SealError, match="key 'k2', which"):
        old.unseal(rotated.seal(b"new"))
    for changed in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:13] + b"k1" + sealed[15:][::-1], sealed[:40]):
        with pytest.raises(SealError, match="changed or cut short"):
            old.unseal(changed)
    with pytest.raises(SealError, match="not a sealed copy"):
        old.unseal(TRICKY)


def test_an_encrypted_route_seals_each_file_and_store_decrypt_opens_it(
    tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    keys = StoreConfig(keys={"k1": KEY_1, "k2": KEY_2}, active_key="k1")
    store = opened(RouteConfig(match=["*"], kind="eml-tree", path=str(tmp_path / "eml"), encrypt=True), keys)
    store.put(copy())
    sealed = tmp_path / "eml/2024/03/07/0ABCDEFGHJKMNPQR.eml"
    assert sealed.read_bytes().startswith(b"FMTASEAL")
    # Rotated since: k2 seals new copies, k1 still opens the old ones.
    config = tmp_path / "fastmta.toml"
    config.write_text(f'[store]\nactive_key = "k2"\nkeys = {{ k1 = "{KEY_1}", k2 = "{KEY_2}" }}\n')
    assert cli.main(["store", "decrypt", str(sealed), "-o", str(tmp_path / "plain.eml"), "--config", str(config)]) == 0
    assert (tmp_path / "plain.eml").read_bytes() == TRICKY and (tmp_path / "plain.eml").stat().st_mode & 0o777 == 0o600
    assert cli.main(["store", "decrypt", str(sealed), "--config", str(config)]) == 0
    assert capfdbinary.readouterr().out == TRICKY
    assert cli.main(["store", "decrypt", str(tmp_path / "plain.eml"), "--config", str(config)]) == 1
    assert b"not a sealed copy" in capfdbinary.readouterr().err


HTML = (
    b"Subject: =?utf-8?q?R=C3=A9sum=C3=A9?=\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<p>Your <b>invoice</b> is attached</p><script>tracking()</script>\r\n"
)


def test_sqlite_rows_read_back_and_found_by_full_text_search(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "stored.db")
    store.put(copy(HTML, "0AAAAAAAAAAAAAAA", ("bob@x.test", "carol@x.test")))
    store.put(copy(TRICKY, "0BBBBBBBBBBBBBBB"))
    store.put(copy(b"changed on a retry", "0BBBBBBBBBBBBBBB"))  # stored already: nothing changes
    store.close()
    with sqlite3.connect(tmp_path / "stored.db") as plain:
        rows = plain.execute("SELECT id, sender, recipients, subject, size, raw FROM stored_messages ORDER BY seq").fetchall()
    assert rows == [
        ("0AAAAAAAAAAAAAAA", "alice@x.test", '["bob@x.test","carol@x.test"]', "Résumé", len(HTML), HTML),
        ("0BBBBBBBBBBBBBBB", "alice@x.test", '["bob@x.test"]', "quarterly", len(TRICKY), TRICKY),
    ]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'stored.db'}")
    with engine.connect() as connection:
        [found], total = page(connection, "invoice", 10, 0)
        assert total == 1 and found.id == "0AAAAAAAAAAAAAAA" and found.snippet == "Your [invoice] is attached"
        assert page(connection, "subject:resume", 10, 0)[1] == 1  # diacritics folded
        assert page(connection, "tracking", 10, 0)[1] == 0  # script is not text
        assert page(connection, "far OR invoice", 10, 0)[1] == 2
        newest, total = page(connection, None, 1, 0)
        assert total == 2 and [row.id for row in newest] == ["0BBBBBBBBBBBBBBB"]
        for bad in ('"unbalanced', "nosuchcolumn:x"):
            with pytest.raises(BadQuery):
                page(connection, bad, 10, 0)
    engine.dispose()


def test_s3_objects_are_put_under_their_day_and_read_back(s3_endpoint: str) -> None:
    """Against moto's S3 server, a fake: no S3-compatible server runs offline here."""
    bucket = f"mail-{time.monotonic_ns()}"
    objects = s3.client(s3_endpoint)
    objects.create_bucket(Bucket=bucket)
    route = RouteConfig(
        match=["*"], kind="s3", bucket=bucket, region=s3.REGION, endpoint_url=s3_endpoint,
        access_key=s3.ACCESS_KEY, secret_key=s3.SECRET_KEY,
    )  # fmt: skip
    store = opened(route, StoreConfig())
    store.put(copy())
    stored = objects.get_object(Bucket=bucket, Key="2024/03/07/0ABCDEFGHJKMNPQR.eml")
    assert stored["Body"].read() == TRICKY and stored["ContentType"] == "message/rfc822"
    store.close()
    missing = opened(msgspec.structs.replace(route, bucket="no-such-bucket"), StoreConfig())
    with pytest.raises(Failed, match="NoSuchBucket"):
        missing.put(copy())
    missing.close()
