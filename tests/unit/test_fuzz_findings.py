"""What fuzzing (tests/fuzz) found, each with the input that showed it; one block per fuzz target."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastmta.config import ConfigError, load
from fastmta.smtp.address import is_mailbox
from fastmta.smtp.proxy import ProxyError, parse_proxy_header
from fastmta.smtp.session import Session
from tests.session_driver import Driver, make_settings

# ----- config: only ConfigError escapes load() ------------------------------------------------------


def test_smtp_health_port_with_a_malformed_admin_listen_is_a_config_error(tmp_path: Path) -> None:
    """Found by the config target: parse_hostport's ValueError escaped."""
    path = tmp_path / "c.toml"
    path.write_text('[admin]\nlisten = "[::1]:808(0"\n')
    with pytest.raises(ConfigError, match=r"admin.listen: bad port"):
        load(path, environ={"SMTP_HEALTH_PORT": "9100"})


def test_smtp_health_port_keeps_an_ipv6_admin_host(tmp_path: Path) -> None:
    """Seen running the config target's seeds: '[::1]:8080' became '::1:9100', read back as host '::1:9100'."""
    path = tmp_path / "c.toml"
    path.write_text('[admin]\nlisten = "[::1]:8080"\n')
    assert load(path, environ={"SMTP_HEALTH_PORT": "9100"}).admin.listen == "[::1]:9100"


@pytest.mark.parametrize(
    ("text", "environ", "named"),
    [
        ("smtp = 1\n", {"SMTP_PORT": "2600"}, "smtp: Expected a table"),
        ("admin = []\n", {"SMTP_HEALTH_PORT": "9100"}, "admin: Expected a table"),
        ('server = "x"\n', {"SMTP_HOSTNAME": "mx.example"}, "server: Expected a table"),
        ("smtp = 1\n", {"SMTP_ENABLE_TLS": "no"}, "smtp: Expected a table"),
        ("[smtp]\nlisten = [25]\n", {"SMTP_HOST": "::1"}, "smtp.listen: Expected `str`"),
        ("[admin]\nlisten = 8080\n", {"SMTP_HEALTH_PORT": "9100"}, "admin.listen: Expected `str`"),
    ],
)
def test_a_variable_overriding_a_key_of_a_malformed_section_is_a_config_error(
    tmp_path: Path, text: str, environ: dict[str, str], named: str
) -> None:
    """Found reviewing the config target's first crash: the same code assumed every section a table."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named):
        load(path, environ=environ)


def test_deeply_nested_toml_is_a_config_error(tmp_path: Path) -> None:
    """tomllib recurses once per nesting level and has no limit of its own: RecursionError escaped."""
    path = tmp_path / "c.toml"
    path.write_text("a = " + "[" * 5000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load(path, environ={})


def test_a_certificate_path_the_system_cannot_look_up_is_a_config_error(tmp_path: Path) -> None:
    """Path.is_file() lets ENAMETOOLONG (and EACCES) through as OSError."""
    path = tmp_path / "c.toml"
    path.write_text(f'[smtp]\ntls_cert = "{"a" * 300}"\ntls_key = "k"\n')
    with pytest.raises(ConfigError, match="smtp.tls_cert: File name too long"):
        load(path, environ={})


# ----- address: is_mailbox() accepts no control character --------------------------------------------


@pytest.mark.parametrize(
    "address",
    ['"q\ufffdotedl\\"t"@[IPv6:9::%IPV6\x01\x00\x00\x00\x00\x00\x00#1[]', "a@[IPv6:fe80::1%eth0]", "a@[IPv6:::1%]]"],
)
def test_an_ipv6_address_literal_has_no_zone(address: str) -> None:
    """Found by the address target: ipaddress accepts "%" and any text after it as an IPv6 scope."""
    assert not is_mailbox(address)


def test_ipv6_address_literals_without_a_zone_stay_mailboxes() -> None:
    assert is_mailbox("a@[IPv6:2001:db8::1]") and is_mailbox("a@[IPv6:::ffff:192.0.2.1]")


# ----- proxy: the client's address is a plain IP address --------------------------------------------


@pytest.mark.parametrize("header", [b"PROXY TCP6 ::%0 :: 1 5\r\n", b"PROXY TCP6 fe80::1%\x01x 2001:db8::2 1 25\r\n"])
def test_a_proxy_v1_address_with_an_ipv6_zone_is_refused(header: bytes) -> None:
    """Found by the proxy target: the zone (any text) became part of the client's address, and so of
    the per-IP limit keys, where a proxy's every zone would count as another client."""
    with pytest.raises(ProxyError):
        parse_proxy_header(header)


# ----- session: every input is answered, no exception escapes -----------------------------------------


@pytest.mark.parametrize("line", [b"AUTH PLAIN AGFsaWNl\xc5\xb7JpZ2h0", b"AUTH LOGIN \xc3\xa9"])
def test_auth_with_non_ascii_base64_is_a_syntax_error(line: bytes) -> None:
    """Found by the session target: base64 raised ValueError for a str holding non-ASCII characters,
    out of the session and into the event loop, which dropped the connection without a reply."""
    driver = Driver(Session(make_settings(require_tls_for_auth=False), "127.0.0.1", 4000))
    driver.feed(b"EHLO c\r\n")
    assert driver.feed(line + b"\r\n") == b"501 5.5.4 Syntax: not base64\r\n"
