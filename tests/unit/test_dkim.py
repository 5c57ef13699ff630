"""DKIM signing's pure pieces, checked against dkimpy: its canonicalisation and its verifier are the reference.

Keys are made once per module; the verifier reads the published record through a lookup function
here (tests/integration/test_dkim.py serves it from a DNS server instead).
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmta import cli
from fastmta.config import ConfigError, DkimConfig, DkimKeyConfig, load
from fastmta.dkim import keys
from fastmta.dkim.sign import PrivateKey, relaxed_body, relaxed_header, signature, split
from fastmta.dkim.signer import Signer, from_domain

WANTED = frozenset(name.encode() for name in DkimConfig().headers)
RSA = keys.generate("rsa")
ED25519 = keys.generate("ed25519")


def published(key: PrivateKey):  # type: ignore[no-untyped-def]
    """dkimpy's DNS lookup, answered with the record keygen prints for `key`."""
    record = keys.dns_record(key).encode()
    return lambda name, timeout=5: record


def verified(signed: bytes, key: PrivateKey) -> bool:
    return bool(dkim.verify(signed, dnsfunc=published(key)))


def signed(message: bytes, key: PrivateKey = RSA) -> bytes:
    return signature(message, key, "example.com", "sel", 1_700_000_000, WANTED) + message


# Lines as a body or a header may hold them: words, runs of SP and HTAB, 8-bit octets.
_TEXT = st.binary(max_size=60).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
_PIECES = [b"a", b"word", b" ", b"  ", b"\t", b" \t ", b"\xc3\xa9", b"\xff", b"x:y"]
_WORDS = st.lists(st.sampled_from(_PIECES), max_size=12).map(b"".join)
_LINE = _TEXT | _WORDS
_BODY = st.lists(_LINE, max_size=12).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


@given(_BODY)
def test_body_canonicalisation_is_dkimpys(body: bytes) -> None:
    """VT, FF and NUL included: bytes.split would take the first two for white space, DKIM does not."""
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


_FIELD_NAME = st.sampled_from([b"Subject", b"X-Thing", b"to", b"REPLY-TO"])
_FOLDED = st.lists(_WORDS.filter(lambda text: text.strip(b" \t")), min_size=1, max_size=3).map(b"\r\n ".join)


@given(_FIELD_NAME, _FOLDED)
def test_header_canonicalisation_is_dkimpys(name: bytes, value: bytes) -> None:
    ((lowered, canonical),) = Relaxed.canonicalize_headers([(name, value + b"\r\n")])
    assert relaxed_header(name + b":" + value) == lowered + b":" + canonical.removesuffix(b"\r\n")


_HEADERS = st.lists(st.tuples(_FIELD_NAME, _FOLDED), max_size=5).map(
    lambda fields: b"".join(name + b":" + value + b"\r\n" for name, value in fields)
)


@settings(max_examples=40, deadline=None)
@given(_HEADERS, _BODY, st.sampled_from([RSA, ED25519]))
def test_signatures_verify_with_dkimpy(headers: bytes, body: bytes, key: PrivateKey) -> None:
    message = b"From: Alice <alice@example.com>\r\n" + headers + b"\r\n" + body
    assert verified(signed(message, key), key)


def test_the_signature_is_folded_into_short_lines_and_oversigns_from() -> None:
    recipients = b"".join(b"To: person%d@example.org\r\n" % n for n in range(30))
    message = recipients + b"From: a@example.com\r\nSubject: s\r\n\r\nhi\r\n"
    header = signature(message, RSA, "example.com", "sel", 1_700_000_000, WANTED)
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    fields = dkim.util.parse_tag_value(header.split(b":", 1)[1])
    names = [name.strip() for name in fields[b"h"].split(b":")]
    assert names.count(b"from") == 2 and names.count(b"to") == 30 and names.count(b"subject") == 1
    assert verified(header + message, RSA)
    # A From added on the way breaks it; so does a changed body; white space the relaxed forms ignore does not.
    assert not verified(b"From: mallory@example.net\r\n" + header + message, RSA)
    assert not verified(header + message.replace(b"hi", b"ho"), RSA)
    assert verified(header + message.replace(b"Subject: s", b"Subject:\t s  ").replace(b"hi\r\n", b"hi \r\n\r\n"), RSA)


@pytest.mark.parametrize("message", [
    b"From: a@example.com\r\n",  # no body at all
    b"From: a@example.com\r\n\r\n",  # an empty one
    b"From: a@example.com\r\nContent-Type: text/plain;\r\n\tcharset=utf-8\r\n\r\n\r\n\r\n",  # only empty lines
])
def test_messages_without_a_body_sign_and_verify(message: bytes) -> None:
    assert verified(signed(message, ED25519), ED25519)


def test_split_keeps_folds_with_their_field() -> None:
    assert split(b"A: 1\r\n 2\r\nB: 3\r\n\r\nbody\r\n") == ([b"A: 1\r\n 2", b"B: 3"], b"body\r\n")


# ----- keys, their files and their records --------------------------------------------------------


def keygen(config: Path, *arguments: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["dkim", "keygen", *arguments, "--config", str(config)])
    return code, out.getvalue()


def txt_strings(zone_entry: str) -> list[str]:
    """The character-strings of a zone-file TXT entry, as a DNS server would serve them."""
    return [part for index, part in enumerate(zone_entry.split('"')) if index % 2]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "fastmta.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    return path


def with_keys(config_file: Path, entries: str) -> Path:
    config_file.write_text(config_file.read_text() + entries)
    return config_file


def test_keygen_writes_a_private_file_and_prints_its_record(config_file: Path) -> None:
    code, printed = keygen(config_file, "Example.COM.", "s2025", "--algorithm", "ed25519")
    assert code == 0
    path = config_file.parent / "data" / "dkim" / "example.com" / "s2025.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert printed.startswith("s2025._domainkey.example.com. IN TXT (")
    assert "".join(txt_strings(printed)) == keys.dns_record(keys.read(path))
    # A key that may be signing is never replaced.
    assert keygen(config_file, "example.com", "s2025")[0] == 1 and keys.read(path) is not None
    assert keygen(config_file, "exa_mple.com", "s1")[0] == 2


def test_an_rsa_record_is_split_into_strings_that_fit(config_file: Path) -> None:
    strings = txt_strings(keys.zone_entry("example.com", "s", keys.dns_record(RSA)))
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == keys.dns_record(RSA) and "k=rsa; p=MIIBIjAN" in strings[0]


def _key_entry(selector: str, **fields: str) -> str:
    extra = "".join(f'{name} = "{value}"\n' for name, value in fields.items())
    return f'[[dkim.keys]]\ndomain = "example.com"\nselector = "{selector}"\n{extra}'


def test_a_missing_key_file_stops_the_config(config_file: Path) -> None:
    missing = r"^dkim.keys\[0\].key_file: no such file: .*/dkim/example.com/s1.key \(fastmta dkim keygen"
    with pytest.raises(ConfigError, match=missing):
        load(with_keys(config_file, _key_entry("s1")), environ={})


def test_a_key_file_others_may_read_stops_the_config(config_file: Path) -> None:
    keygen(config_file, "example.com", "s1", "--algorithm", "ed25519")
    path = config_file.parent / "data" / "dkim" / "example.com" / "s1.key"
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"^dkim.keys\[0\].key_file: .* \(mode 0644\); chmod 600 it"):
        load(with_keys(config_file, _key_entry("s1")), environ={})
    os.chmod(path, 0o600)
    assert load(config_file, environ={}).dkim.keys[0].selector == "s1"


def test_a_key_file_that_holds_no_dkim_key_stops_the_config(config_file: Path, tmp_path: Path) -> None:
    curve = tmp_path / "ec.pem"
    curve.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key")
    for path in (curve, garbage):
        os.chmod(path, 0o600)
    with_keys(config_file, _key_entry("ec", key_file=str(curve)))
    with pytest.raises(ConfigError, match=r"^dkim.keys\[0\].key_file: .*ec.pem: .*DKIM signs with RSA or Ed25519 keys"):
        load(config_file, environ={})
    config_file.write_text(config_file.read_text().replace(str(curve), str(garbage)))
    with pytest.raises(ConfigError, match=r"^dkim.keys\[0\].key_file: .*garbage.pem: not an unencrypted private key in PEM"):
        load(config_file, environ={})


@pytest.mark.parametrize(("entries", "message"), [
    (_key_entry("s1") + _key_entry("s1"), r"dkim.keys\[1\]: the same domain, selector and workspace as keys\[0\]"),
    (_key_entry("s_1"), r"dkim.keys\[0\].selector: not a DNS name"),
    ('[dkim]\nheaders = ["subject"]\n', r"dkim.headers: must include from"),
    ('[dkim]\nheaders = ["from", "DKIM-Signature"]\n', r"dkim.headers: dkim-signature cannot be signed"),
])
def test_key_entries_that_contradict_each_other(config_file: Path, entries: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(with_keys(config_file, entries), environ={}, dkim_keys=False)


def test_one_signing_key_of_each_algorithm(config_file: Path) -> None:
    for selector, algorithm in (("r1", "rsa"), ("e1", "ed25519"), ("e2", "ed25519")):
        keygen(config_file, "example.com", selector, "--algorithm", algorithm)
    with_keys(config_file, _key_entry("r1") + _key_entry("e1") + _key_entry("e2"))
    with pytest.raises(ConfigError, match=r"dkim.keys\[2\]: example.com has a signing ed25519-sha256 key already \(keys\[1\]\)"):
        load(config_file, environ={})
    config_file.write_text(config_file.read_text() + "signing = false\n")  # e2, the last entry, retired
    assert [key.signing for key in load(config_file, environ={}).dkim.keys] == [True, True, False]


# ----- which key signs -----------------------------------------------------------------------------


@pytest.mark.parametrize(("header_from", "domain"), [
    ('"Doe, Jane" <jane@Example.COM>', "example.com"),
    ("jane@example.com (Jane)", "example.com"),
    ("Jane <jane@bücher.example>", "xn--bcher-kva.example"),
    ("undisclosed-recipients:;", ""),
    ("", ""),
])
def test_the_from_domain(header_from: str, domain: str) -> None:
    assert from_domain(header_from) == domain


@given(st.text())
def test_any_from_field_gives_a_domain_or_none(header_from: str) -> None:
    """The runner asks before every signature: an exception would hold the message until its lease ran out."""
    assert isinstance(from_domain(header_from), str)


def test_the_workspace_keys_first_then_the_domains_and_never_a_retired_one(tmp_path: Path) -> None:
    def key(selector: str, private: PrivateKey = ED25519, workspace: str = "", signing: bool = True) -> keys.DkimKey:
        return keys.DkimKey("example.com", selector, workspace, signing, tmp_path / selector, private, 0.0)

    signer = Signer([key("old", signing=False), key("rsa", RSA), key("ed"), key("ws", workspace="acme")], DkimConfig().headers)

    def selectors(header_from: str, workspace: str) -> list[str]:
        return [key.selector for key in signer.keys_for(header_from, workspace)]

    assert selectors("a@example.com", "") == ["rsa", "ed"] == selectors("a@example.com", "other")
    assert selectors("a@EXAMPLE.com", "acme") == ["ws"] and selectors("a@example.org", "acme") == []
    message = b"From: a@example.com\r\n\r\nhi\r\n"
    assert signer.signed(b"From: a@example.org\r\n\r\nhi\r\n", "a@example.org", "", 0).startswith(b"From:")  # unsigned
    # Signed by both keys, RSA and Ed25519, and each signature verifies on its own.
    both = signer.signed(message, "a@example.com", "", 1_700_000_000)
    assert both.count(b"DKIM-Signature:") == 2
    verifier = dkim.DKIM(both)
    assert verifier.verify(0, dnsfunc=published(RSA)) and verifier.verify(1, dnsfunc=published(ED25519))
    assert DkimKeyConfig(domain="Example.COM.", selector="s").domain == "example.com"
