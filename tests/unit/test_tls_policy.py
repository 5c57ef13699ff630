"""The pure pieces of the outbound TLS policy: MTA-STS formats, DANE matching, path checks, and the config that turns them on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fastmta.config import load
from fastmta.delivery.tlspolicy import dane, pkix
from fastmta.delivery.tlspolicy.mta_sts import PolicyError, StsPolicy, mx_allowed, mx_matches, parse_policy, policy_id
from fastmta.delivery.tlspolicy.policy import StsCheck
from tests.integration.sts_peers import Issued, TestCa, spki


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=STSv1; id=20240101T000000;"], "20240101T000000"),
        (["v=STSv1;id=abc"], "abc"),
        (["google-site-verification=x", "v=STSv1; id=abc; ext=1"], "abc"),  # other records are not counted
        (["v=STSv1; id=abc", "v=STSv1; id=def"], None),  # two policies: none (RFC 8461 §3.1)
        (["v=STSv1; id=has-dash"], None),
        (["v=STSv1; id=" + "a" * 33], None),
        (["v=STSv10; id=abc"], None),
        (["v=STSv1"], None),
        ([], None),
    ],
)
def test_the_txt_record_gives_the_policy_id(records: list[str], expected: str | None) -> None:
    assert policy_id(records) == expected


def test_a_policy_file_with_crlf_or_lf_lines() -> None:
    text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\nx: y\r\n"
    assert parse_policy(text) == StsPolicy("enforce", ("mail.example.com", "*.example.net"), 604800)
    assert parse_policy(text.replace("\r\n", "\n")) == parse_policy(text)
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999\n").max_age == 31557600  # capped at a year


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("mode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
        ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "mode"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: soon\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "max_age"),
        ("version: STSv1\nmode: testing\nmax_age: 86400\n", "mx"),
    ],
)
def test_a_bad_policy_file_names_the_field(text: str, named: str) -> None:
    with pytest.raises(PolicyError, match=f"^{named}:"):
        parse_policy(text)


def test_mx_patterns_match_the_name_or_one_more_label() -> None:
    assert mx_matches("mail.example.com", "MAIL.example.com.")
    assert mx_matches("*.example.com", "mx1.example.com")
    assert not mx_matches("*.example.com", "example.com")
    assert not mx_matches("*.example.com", "a.b.example.com")  # one label, not several (RFC 8461 §4.1)
    assert not mx_matches("*.example.com", "mx1.example.com.evil")
    assert mx_allowed(StsPolicy("enforce", ("a.example", "*.b.example"), 1), "mx.b.example")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def issued(ca: TestCa) -> Issued:
    return ca.issue("mx", "mx.example.org")


def test_dane_ee_matches_the_leaf_alone(issued: Issued) -> None:
    leaf = issued.chain[0]
    chain = pkix.parsed(issued.der_chain())
    for record in (
        dane.Tlsa(3, 1, 1, hashlib.sha256(spki(leaf)).digest()),
        dane.Tlsa(3, 1, 2, hashlib.sha512(spki(leaf)).digest()),
        dane.Tlsa(3, 0, 0, leaf.public_bytes(serialization.Encoding.DER)),
    ):
        # No name check for DANE-EE (RFC 7672 §3.1.1): any host name will do.
        assert dane.mismatch(chain, (record,), "any.example") == "", record
    wrong = dane.Tlsa(3, 1, 1, hashlib.sha256(b"another key").digest())
    assert "matches none of its TLSA records" in dane.mismatch(chain, (wrong,), "mx.example.org")


def test_dane_ta_anchors_a_path_check_for_the_host_name(ca: TestCa, issued: Issued) -> None:
    chain = pkix.parsed(issued.der_chain())
    anchor = dane.Tlsa(2, 1, 1, hashlib.sha256(spki(ca.certificate)).digest())
    assert dane.mismatch(chain, (anchor,), "mx.example.org") == ""
    assert "no matching subjectAltName" in dane.mismatch(chain, (anchor,), "other.example.org")
    # The leaf is no trust anchor, and a TA the server does not send cannot be found.
    leaf_as_anchor = dane.Tlsa(2, 1, 1, hashlib.sha256(spki(issued.chain[0])).digest())
    assert dane.mismatch(chain, (leaf_as_anchor,), "mx.example.org") != ""
    assert dane.mismatch(chain[:1], (anchor,), "mx.example.org") != ""


def test_published_but_unusable_tlsa_records_ask_only_for_tls(issued: Issued) -> None:
    assert dane.mismatch(pkix.parsed(issued.der_chain()), (), "mx.example.org") == ""


def test_the_path_check_wants_the_name_and_a_known_ca(ca: TestCa, issued: Issued, tmp_path: Path) -> None:
    store = pkix.anchors(pkix.ca_context(str(ca.ca_file)))
    chain = pkix.parsed(issued.der_chain())
    assert pkix.path_problem(chain, store, "mx.example.org") == ""
    assert "not trusted" in pkix.path_problem(chain, store, "mx.example.net")
    stranger = pkix.anchors(pkix.ca_context(str(TestCa(tmp_path, "another CA").ca_file)))
    assert "not trusted" in pkix.path_problem(chain, stranger, "mx.example.org")


def test_mta_sts_testing_reports_what_enforce_refuses(ca: TestCa, tmp_path: Path) -> None:
    reports: list[tuple[str, str, str]] = []
    store = pkix.anchors(pkix.ca_context(str(TestCa(tmp_path, "another CA").ca_file)))
    chain = ca.issue("stranger", "mx.example.org").der_chain()
    enforce = StsCheck("mx.example.org", True, True, store, lambda *report: reports.append(report))
    testing = StsCheck("mx.example.org", False, False, store, lambda *report: reports.append(report))
    assert "not trusted" in enforce(chain) and "STARTTLS" in enforce(None) and enforce([]) == "no certificate was sent (MTA-STS)"
    assert testing(chain) == "" and testing(None) == ""
    assert [(policy, mode) for policy, mode, _ in reports] == [("mta-sts", "enforce")] * 3 + [("mta-sts", "testing")] * 2
    assert "is not an MX host of the domain's MTA-STS policy; certificate of mx.example.org not trusted" in reports[-2][2]


def test_dane_on_a_route_with_its_resolver(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[tls_policy]\ndnssec_resolver = '127.0.0.53'\n[[routes]]\nmatch = ['*']\nkind = 'mx'\ntls = 'dane'\n")
    config = load(path, environ={})
    assert config.routes[0].tls == "dane" and config.tls_policy.mta_sts
