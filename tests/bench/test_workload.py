"""Sizes, weighted mixes and pre-built transactions of bench/workload.py."""

import pytest
from workload import apportion, build_message, build_pool, parse_domains, parse_size, parse_sizes, transaction


@pytest.mark.parametrize(("text", "size"), [("1024", 1024), ("1k", 1024), ("100K", 102400), ("2m", 2 << 20), ("300b", 300)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "k", "1.5k", "-1k", "12", "1g"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_distribution_is_normalised() -> None:
    assert parse_sizes("1k:70,10k:25,100k:5") == [(1024, 0.7), (10240, 0.25), (102400, 0.05)]
    assert parse_sizes("1k") == [(1024, 1.0)]
    assert parse_domains("a.example:3,b.example") == [("a.example", 0.75), ("b.example", 0.25)]


@pytest.mark.parametrize("text", ["1k:0", "1k:-1", "1k:x", ":5", "1k,,2k"])
def test_distribution_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_sizes(text)


def test_apportion_matches_the_mix_exactly() -> None:
    items = apportion([("a", 0.7), ("b", 0.25), ("c", 0.05)], 1000)
    assert (items.count("a"), items.count("b"), items.count("c")) == (700, 250, 50)
    assert len(apportion([("a", 1 / 3), ("b", 1 / 3), ("c", 1 / 3)], 100)) == 100


@pytest.mark.parametrize("size", [256, 300, 1023, 1024, 1025, 1026, 10240, 102400])
def test_message_has_the_exact_size_and_no_dot_lines(size: int) -> None:
    message = build_message(size, "s@example.com")
    assert len(message) == size
    assert message.endswith(b"\r\n")
    assert b"\r\n." not in message
    assert all(len(line) <= 998 for line in message.split(b"\r\n"))


def test_pool_follows_the_size_mix() -> None:
    pool = build_pool([(1024, 0.7), (10240, 0.3)], [("example.com", 1.0)], 2, "s@example.com", True, False, 0)
    sizes = [tx.size for tx in pool]
    assert sizes.count(1024) == 700 and sizes.count(10240) == 300


def test_pipelined_transaction_waits_only_for_354() -> None:
    commands = [b"MAIL FROM:<s@x>\r\n", b"RCPT TO:<a@x>\r\n", b"RCPT TO:<b@x>\r\n"]
    tx = transaction(b"body\r\n", b"body\r\n.\r\n", commands, pipelining=True, bdat=False)
    assert [step.replies for step in tx.steps] == [4, 1]
    assert tx.steps[0].chunks == (b"".join(commands) + b"DATA\r\n",)


def test_unpipelined_transaction_sends_a_command_per_step() -> None:
    commands = [b"MAIL FROM:<s@x>\r\n", b"RCPT TO:<a@x>\r\n"]
    tx = transaction(b"body\r\n", b"body\r\n.\r\n", commands, pipelining=False, bdat=False)
    assert [step.replies for step in tx.steps] == [1, 1, 1, 1]


def test_bdat_sends_the_body_with_the_envelope() -> None:
    tx = transaction(b"body\r\n", b"body\r\n.\r\n", [b"MAIL FROM:<s@x>\r\n", b"RCPT TO:<a@x>\r\n"], True, True)
    assert len(tx.steps) == 1 and tx.steps[0].replies == 3
    assert tx.steps[0].chunks[-2:] == (b"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nBDAT 6 LAST\r\n", b"body\r\n")
