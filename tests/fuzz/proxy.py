"""Fuzz target: the PROXY protocol v1/v2 header parser.

The input is the start of a connection. The parser may say "incomplete" (None), refuse
(ProxyError), or return what it consumed, which lies within the buffer, and the client's address,
a valid IP address in its canonical form, without an IPv6 zone ("%eth0": it means nothing
past the proxy's own links, and ipaddress takes any text there), and a port. Whatever follows the header must not change
the result: parsing just the consumed bytes, or those bytes and more, gives the same answer.
"""

from __future__ import annotations

import ipaddress

from tests.fuzz import harness

with harness.instrumented("ipaddress"):
    from fastmta.smtp.proxy import ProxyError, parse_proxy_header


def test_one_input(data: bytes) -> None:
    try:
        parsed = parse_proxy_header(data)
    except ProxyError:
        return
    if parsed is None:
        return
    consumed, address = parsed
    assert 0 < consumed <= len(data), (consumed, len(data))
    if address is not None:
        ip, port = address
        parsed_ip = ipaddress.ip_address(ip)
        assert str(parsed_ip) == ip, f"not a canonical IP address: {ip!r}"
        assert not isinstance(parsed_ip, ipaddress.IPv6Address) or parsed_ip.scope_id is None, f"IPv6 zone in {ip!r}"
        assert 0 <= port <= 65535
    assert parse_proxy_header(data[:consumed]) == parsed, "the result depends on bytes past the header"
    assert parse_proxy_header(data + b"\r\nEHLO x\r\n") == parsed, "the result depends on bytes past the header"


if __name__ == "__main__":
    harness.fuzz("proxy", test_one_input)
