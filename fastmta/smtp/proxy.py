"""Reads the HAProxy PROXY protocol header (v1 text, v2 binary) that a load balancer sends before SMTP."""

from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V1_MAX = 107  # the longest v1 line, CRLF included
_V2_HEADER = struct.Struct(">BBH")
_V2_LOCAL, _V2_PROXY = 0x20, 0x21
_V2_ADDRESSES = {0x11: (4, ipaddress.IPv4Address), 0x12: (4, ipaddress.IPv4Address),
                 0x21: (16, ipaddress.IPv6Address), 0x22: (16, ipaddress.IPv6Address)}  # fmt: skip

Address = tuple[str, int]


class ProxyError(ValueError):
    """The connection did not start with a valid PROXY header."""


def parse_proxy_header(buf: bytes | bytearray | memoryview) -> tuple[int, Address | None] | None:
    """None until the header is complete; then (bytes consumed, the client's address or None for LOCAL/UNKNOWN)."""
    head = bytes(buf[: len(V2_SIGNATURE)])
    if V2_SIGNATURE.startswith(head):
        return _parse_v2(bytes(buf)) if len(head) == len(V2_SIGNATURE) else None
    if _V1_PREFIX.startswith(head[: len(_V1_PREFIX)]):
        return _parse_v1(bytes(buf[:_V1_MAX])) if len(head) >= len(_V1_PREFIX) else None
    raise ProxyError("no PROXY header")


def _parse_v1(data: bytes) -> tuple[int, Address | None] | None:
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= _V1_MAX:
            raise ProxyError("PROXY v1 line too long")
        return None
    fields = data[:end].decode("ascii", "replace").split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return end + 2, None
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyError("malformed PROXY v1 line")
    family = ipaddress.IPv4Address if fields[1] == "TCP4" else ipaddress.IPv6Address
    if "%" in fields[2] or "%" in fields[3]:
        # ipaddress takes an IPv6 zone with any text in it; past the proxy a zone means nothing.
        raise ProxyError("malformed PROXY v1 address: zone index")
    try:
        source = family(fields[2])
        family(fields[3])
    except ValueError as exc:
        raise ProxyError(f"malformed PROXY v1 address: {exc}") from None
    for port_text in fields[4:6]:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ProxyError("malformed PROXY v1 port")
    return end + 2, (str(source), int(fields[4]))


def _parse_v2(data: bytes) -> tuple[int, Address | None] | None:
    fixed = len(V2_SIGNATURE) + _V2_HEADER.size
    if len(data) < fixed:
        return None
    command, family, length = _V2_HEADER.unpack_from(data, len(V2_SIGNATURE))
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyError("unsupported PROXY v2 version or command")
    if len(data) < fixed + length:
        return None
    consumed = fixed + length
    if command == _V2_LOCAL or family not in _V2_ADDRESSES:
        return consumed, None
    size, address_type = _V2_ADDRESSES[family]
    if length < 2 * size + 4:
        raise ProxyError("PROXY v2 address block too short")
    source = address_type(data[fixed : fixed + size])
    (port,) = struct.unpack_from(">H", data, fixed + 2 * size)
    return consumed, (str(source), port)
