"""A next hop's reply as fastmta keeps it: one line, no control characters, bounded."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from fastmta.delivery.outbound import REPLY_LIMIT, one_line

# What a control character may look like to some reader of the bounce: C0, DEL, C1 (NEL), line and
# paragraph separators; lone surrogates are what aiosmtplib makes of bytes that are not UTF-8.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def test_one_line_joins_a_multiline_reply() -> None:
    assert one_line("550 5.1.1 first\nAction: delivered") == "550 5.1.1 first; Action: delivered"
    assert one_line("451 4.3.0 a\r\n\r\n  b\rc\n") == "451 4.3.0 a; b; c"
    assert one_line("550 x\x00y\x7fz\x85w\u2028v\tu") == "550 x y z w v u"
    assert one_line("550 M\udcfcller") == "550 M\ufffdller"  # a Latin-1 byte, as aiosmtplib decodes it
    assert one_line("550 ok") == "550 ok"


def test_one_line_is_bounded_in_octets() -> None:
    long = one_line("550 " + "ü" * 5000)
    assert len(long.encode()) <= REPLY_LIMIT and long.startswith("550 üü") and long.endswith("...")


@given(st.text())
def test_one_line_leaves_no_line_break_or_control(text: str) -> None:
    flat = one_line(text)
    assert not _UNSAFE.search(flat) and len(flat.encode()) <= REPLY_LIMIT
    assert one_line(flat) == flat
