"""The PROXY protocol parser: v1 text and v2 binary headers, built here per the HAProxy spec."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmta.smtp.proxy import V2_SIGNATURE, ProxyError, parse_proxy_header

# The v2 constants, written out from the spec rather than imported from the module under test.
LOCAL, PROXY = 0x20, 0x21
UNSPEC, TCP4, UDP4, TCP6, UDP6, UNIX_STREAM = 0x00, 0x11, 0x12, 0x21, 0x22, 0x31
PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_NOOP, PP2_TYPE_UNIQUE_ID = 0x01, 0x02, 0x04, 0x05

SMTP = b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n"


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack(">BH", kind, len(value)) + value


def v2(command: int, family: int, block: bytes = b"", tlvs: bytes = b"") -> bytes:
    """Signature, version/command, family/protocol, length of everything after these 16 bytes."""
    rest = block + tlvs
    return V2_SIGNATURE + struct.pack(">BBH", command, family, len(rest)) + rest


def inet4_block(source: str, destination: str, sport: int, dport: int) -> bytes:
    """Source address, destination address, source port, destination port: 12 bytes."""
    pton = socket.inet_pton
    return struct.pack(">4s4sHH", pton(socket.AF_INET, source), pton(socket.AF_INET, destination), sport, dport)


def inet6_block(source: str, destination: str, sport: int, dport: int) -> bytes:
    """The same for IPv6: 36 bytes."""
    pton = socket.inet_pton
    return struct.pack(">16s16sHH", pton(socket.AF_INET6, source), pton(socket.AF_INET6, destination), sport, dport)


def test_signature_is_the_one_in_the_spec() -> None:
    assert V2_SIGNATURE == bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])


# --- v1 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "address"),
    [
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n", ("192.0.2.1", 56324)),
        (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", ("255.255.255.255", 65535)),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 0 25\r\n", ("10.0.0.1", 0)),
        (b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 25\r\n", ("2001:db8::1", 4000)),
        # The address is returned in its canonical form.
        (b"PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0001 ::1 4000 587\r\n", ("2001:db8::1", 4000)),
        (b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 25\r\n", (str(ipaddress.ip_address("::ffff:192.0.2.7")), 1)),
    ],
)
def test_v1_tcp(line: bytes, address: tuple[str, int]) -> None:
    assert parse_proxy_header(line + SMTP) == (len(line), address)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN 2001:db8::1 2001:db8::2 4000 25\r\n",
        # The longest line the spec allows: 107 bytes, CRLF included.
        b"PROXY UNKNOWN " + b":".join([b"ffff"] * 8) + b" " + b":".join([b"ffff"] * 8) + b" 65535 65535\r\n",
    ],
)
def test_v1_unknown_has_no_address(line: bytes) -> None:
    assert parse_proxy_header(line + SMTP) == (len(line), None)


def test_v1_longest_line_is_107_bytes() -> None:
    line = b"PROXY UNKNOWN " + b":".join([b"ffff"] * 8) + b" " + b":".join([b"ffff"] * 8) + b" 65535 65535\r\n"
    assert len(line) == 107
    assert parse_proxy_header(line) == (107, None)
    # One byte more and the CRLF is past the limit: refused rather than waited for.
    with pytest.raises(ProxyError):
        parse_proxy_header(line[:-2] + b"5\r\n")


def test_v1_leftover_bytes_are_untouched() -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n"
    # What follows may itself look like a PROXY header; it belongs to the SMTP stream all the same.
    rest = b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n" + V2_SIGNATURE + b"\x00\xff\r\n"
    buf = line + rest
    consumed, address = parse_proxy_header(buf)
    assert address == ("192.0.2.1", 56324)
    assert buf[consumed:] == rest


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_any_buffer_type(kind: type) -> None:
    line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n"
    assert parse_proxy_header(kind(line + SMTP)) == (len(line), ("192.0.2.1", 56324))
    header = v2(PROXY, TCP4, inet4_block("192.0.2.1", "198.51.100.2", 56324, 25))
    assert parse_proxy_header(kind(header + SMTP)) == (len(header), ("192.0.2.1", 56324))


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n",
        b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 25\r\n",
        b"PROXY UNKNOWN\r\n",
    ],
)
def test_v1_incomplete_returns_none(line: bytes) -> None:
    """Every proper prefix, including the empty buffer and a line cut between CR and LF, asks for more."""
    for cut in range(len(line)):
        assert parse_proxy_header(line[:cut]) is None, line[:cut]
    assert parse_proxy_header(line)[0] == len(line)


def test_v1_without_crlf_waits_until_the_limit_then_fails() -> None:
    partial = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25"
    assert parse_proxy_header(partial + b" " * (106 - len(partial))) is None
    with pytest.raises(ProxyError, match="too long"):
        parse_proxy_header(partial + b" " * (107 - len(partial)))
    with pytest.raises(ProxyError):
        parse_proxy_header(b"PROXY " + b"A" * 4096)


@pytest.mark.parametrize(
    "data",
    [
        b"EHLO client.example\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"proxy TCP4 192.0.2.1 198.51.100.2 56324 25\r\n",
        b"PROXY\tTCP4 192.0.2.1 198.51.100.2 56324 25\r\n",
        b"PROXYTCP4",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"PROXY TCP5 192.0.2.1 198.51.100.2 56324 25\r\n",
        b"PROXY tcp4 192.0.2.1 198.51.100.2 56324 25\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25 extra\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25 \r\n",
        b"PROXY TCP4  192.0.2.1 198.51.100.2 56324 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\nEHLO x\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 25\r\n",
        b"PROXY TCP4 192.0.2.1 2001:db8::2 56324 25\r\n",
        b"PROXY TCP6 192.0.2.1 2001:db8::2 56324 25\r\n",
        b"PROXY TCP6 2001:db8::1 198.51.100.2 56324 25\r\n",
        b"PROXY TCP4 192.0.2.256 198.51.100.2 56324 25\r\n",
        b"PROXY TCP4 192.0.2 198.51.100.2 56324 25\r\n",
        b"PROXY TCP4 client 198.51.100.2 56324 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 +25 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 2_5 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 port 25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2  25\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 port\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 5\xc3\xa9 25\r\n",
    ],
)
def test_v1_malformed_raises(data: bytes) -> None:
    with pytest.raises(ProxyError):
        parse_proxy_header(data)


@pytest.mark.parametrize("port", [b"65536", b"-1", b"+25", b"1_0", b"", b"x"])
def test_v1_destination_port_is_validated_like_the_source_port(port: bytes) -> None:
    with pytest.raises(ProxyError):
        parse_proxy_header(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 " + port + b"\r\n")


def test_proxy_error_is_a_value_error() -> None:
    assert issubclass(ProxyError, ValueError)


@given(
    address=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    destination=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    rest=st.binary(max_size=64),
)
def test_v1_round_trip(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address,
    sport: int,
    dport: int,
    rest: bytes,
) -> None:
    if address.version != destination.version:
        destination = address
    proto = b"TCP4" if address.version == 4 else b"TCP6"
    line = b"PROXY %s %s %s %d %d\r\n" % (proto, str(address).encode(), str(destination).encode(), sport, dport)
    buf = line + rest
    consumed, parsed = parse_proxy_header(buf)
    assert consumed == len(line) and buf[consumed:] == rest
    assert parsed == (str(address), sport)


# --- v2 --------------------------------------------------------------------------------------------


TLVS = (
    tlv(PP2_TYPE_ALPN, b"smtp")
    + tlv(PP2_TYPE_AUTHORITY, b"mx.example")
    + tlv(PP2_TYPE_UNIQUE_ID, bytes(range(32)))
    + tlv(PP2_TYPE_NOOP, b"\x00" * 7)
)


@pytest.mark.parametrize("tlvs", [b"", TLVS], ids=["no-tlv", "tlvs"])
@pytest.mark.parametrize(
    ("family", "block", "address"),
    [
        (TCP4, inet4_block("192.0.2.1", "198.51.100.2", 56324, 25), ("192.0.2.1", 56324)),
        (UDP4, inet4_block("203.0.113.9", "198.51.100.2", 1, 25), ("203.0.113.9", 1)),
        (TCP6, inet6_block("2001:db8::1", "2001:db8::2", 4000, 587), ("2001:db8::1", 4000)),
        (UDP6, inet6_block("::1", "::2", 65535, 25), ("::1", 65535)),
        (TCP6, inet6_block("::ffff:192.0.2.7", "::1", 0, 25), (str(ipaddress.ip_address("::ffff:192.0.2.7")), 0)),
    ],
    ids=["tcp4", "udp4", "tcp6", "udp6", "mapped"],
)
def test_v2_proxy(family: int, block: bytes, address: tuple[str, int], tlvs: bytes) -> None:
    header = v2(PROXY, family, block, tlvs)
    buf = header + SMTP
    consumed, parsed = parse_proxy_header(buf)
    assert parsed == address
    assert consumed == 16 + len(block) + len(tlvs) == len(header)
    assert buf[consumed:] == SMTP


def test_v2_source_and_destination_are_not_swapped() -> None:
    header = v2(PROXY, TCP4, inet4_block("192.0.2.1", "198.51.100.2", 1111, 2222))
    assert parse_proxy_header(header) == (len(header), ("192.0.2.1", 1111))
    header = v2(PROXY, TCP6, inet6_block("2001:db8::1", "2001:db8::2", 1111, 2222))
    assert parse_proxy_header(header) == (len(header), ("2001:db8::1", 1111))


@pytest.mark.parametrize(
    ("family", "block"),
    [
        (UNSPEC, b""),
        (TCP4, inet4_block("192.0.2.1", "198.51.100.2", 56324, 25)),
        (TCP6, inet6_block("2001:db8::1", "2001:db8::2", 4000, 25)),
        (TCP4, b""),  # LOCAL may carry no address block even with a family set
    ],
)
@pytest.mark.parametrize("tlvs", [b"", TLVS], ids=["no-tlv", "tlvs"])
def test_v2_local_has_no_address(family: int, block: bytes, tlvs: bytes) -> None:
    """LOCAL: the proxy's own health check; the addresses, if any, must be ignored."""
    header = v2(LOCAL, family, block, tlvs)
    buf = header + SMTP
    assert parse_proxy_header(buf) == (len(header), None)
    assert buf[len(header) :] == SMTP


@pytest.mark.parametrize(
    ("family", "block"),
    [
        (UNSPEC, b""),
        (UNIX_STREAM, b"/run/src.sock".ljust(108, b"\0") + b"/run/dst.sock".ljust(108, b"\0")),
        (0x01, b""),
    ],
    ids=["unspec", "unix", "unspec-tcp"],
)
def test_v2_proxy_without_an_inet_family_has_no_address(family: int, block: bytes) -> None:
    header = v2(PROXY, family, block, tlv(PP2_TYPE_ALPN, b"smtp"))
    buf = header + SMTP
    assert parse_proxy_header(buf) == (len(header), None)
    assert buf[len(header) :] == SMTP


@pytest.mark.parametrize(
    "header",
    [
        v2(PROXY, TCP4, inet4_block("192.0.2.1", "198.51.100.2", 56324, 25), TLVS),
        v2(PROXY, TCP6, inet6_block("2001:db8::1", "2001:db8::2", 4000, 25), TLVS),
        v2(LOCAL, UNSPEC),
    ],
    ids=["tcp4", "tcp6", "local"],
)
def test_v2_incomplete_returns_none(header: bytes) -> None:
    """Every proper prefix asks for more: the signature, the fixed part, the addresses, the TLVs."""
    for cut in range(len(header)):
        assert parse_proxy_header(header[:cut]) is None, cut
    assert parse_proxy_header(header)[0] == len(header)


def test_v2_waits_for_the_whole_declared_length() -> None:
    header = V2_SIGNATURE + struct.pack(">BBH", PROXY, TCP4, 0xFFFF) + inet4_block("192.0.2.1", "198.51.100.2", 1, 2)
    assert parse_proxy_header(header + b"\0" * (0xFFFF - 12 - 1)) is None
    assert parse_proxy_header(header + b"\0" * (0xFFFF - 12)) == (16 + 0xFFFF, ("192.0.2.1", 1))


@pytest.mark.parametrize(
    "data",
    [
        # Wrong version nibble (1, 3) or an undefined command (2..F).
        V2_SIGNATURE + struct.pack(">BBH", 0x11, TCP4, 12) + inet4_block("192.0.2.1", "198.51.100.2", 1, 2),
        V2_SIGNATURE + struct.pack(">BBH", 0x31, TCP4, 12) + inet4_block("192.0.2.1", "198.51.100.2", 1, 2),
        V2_SIGNATURE + struct.pack(">BBH", 0x22, TCP4, 12) + inet4_block("192.0.2.1", "198.51.100.2", 1, 2),
        V2_SIGNATURE + struct.pack(">BBH", 0x2F, UNSPEC, 0),
        V2_SIGNATURE + struct.pack(">BBH", 0x00, UNSPEC, 0),
        # Address blocks shorter than the family needs.
        v2(PROXY, TCP4, inet4_block("192.0.2.1", "198.51.100.2", 1, 2)[:-1]),
        v2(PROXY, TCP4, b""),
        v2(PROXY, TCP6, inet6_block("2001:db8::1", "2001:db8::2", 1, 2)[:-1]),
        # A TCP6 header whose length covers an IPv4-sized block and a TLV: 23 bytes, not 36.
        v2(PROXY, TCP6, inet4_block("192.0.2.1", "198.51.100.2", 1, 2), tlv(PP2_TYPE_NOOP, b"\0" * 8)),
        # Signature that diverges at the last byte.
        V2_SIGNATURE[:-1] + b"\r" + struct.pack(">BBH", PROXY, UNSPEC, 0),
        b"\r\n\r\nPROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
    ],
    ids=[
        "v1-nibble", "v3-nibble", "cmd-2", "cmd-f", "zero",
        "tcp4-11", "tcp4-0", "tcp6-35", "tcp6-short", "sig", "crlf-v1",
    ],  # fmt: skip
)
def test_v2_malformed_raises(data: bytes) -> None:
    with pytest.raises(ProxyError):
        parse_proxy_header(data + SMTP)


def test_v2_bad_command_is_refused_before_the_body_arrives() -> None:
    with pytest.raises(ProxyError):
        parse_proxy_header(V2_SIGNATURE + struct.pack(">BBH", 0x11, TCP4, 12))


@given(
    address=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    tlvs=st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4),
    rest=st.binary(max_size=64),
)
def test_v2_round_trip(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    sport: int,
    dport: int,
    tlvs: list[tuple[int, bytes]],
    rest: bytes,
) -> None:
    if address.version == 4:
        family, block = TCP4, inet4_block(str(address), "198.51.100.2", sport, dport)
    else:
        family, block = TCP6, inet6_block(str(address), "2001:db8::2", sport, dport)
    header = v2(PROXY, family, block, b"".join(tlv(kind, value) for kind, value in tlvs))
    buf = header + rest
    consumed, parsed = parse_proxy_header(buf)
    assert consumed == len(header) and buf[consumed:] == rest
    assert parsed == (str(address), sport)
