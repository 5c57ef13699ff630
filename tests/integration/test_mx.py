"""The MX resolver against a DNS server on loopback: order, both address families, caching for the TTL, failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from fastmta.delivery.mx import DnsFailure, MxResolver
from tests.integration.nexthop import Dns


@pytest.fixture
def dns() -> Iterator[Dns]:
    zone = Dns(
        mx={
            "example.org": [(20, "mx2.example.org"), (10, "mx1.example.org")],
            "null.example": [(0, ".")],
            "half.example": [(10, "v6trouble.example")],
        },
        a={"mx1.example.org": "127.0.0.3", "mx2.example.org": "127.0.0.4", "bare.example": "127.0.0.5",
           "v6trouble.example": "127.0.0.6"},
        aaaa={"mx1.example.org": "::1"},
        ttl=1,
        negative_ttl=1,
        servfail={("v6trouble.example", "AAAA")},
    ).start()
    yield zone
    zone.stop()


def resolve(resolver: MxResolver, domain: str) -> list[tuple[str, str]]:
    return asyncio.run(resolver.destinations(domain))


def test_preference_order_with_both_address_families(dns: Dns) -> None:
    resolver = MxResolver([f"127.0.0.1:{dns.port}"], timeout=2)
    assert resolve(resolver, "example.org") == [
        ("mx1.example.org", "127.0.0.3"), ("mx1.example.org", "::1"), ("mx2.example.org", "127.0.0.4"),
    ]
    assert resolve(resolver, "bare.example") == [("bare.example", "127.0.0.5")]  # no MX: its own address


def test_answers_are_cached_for_their_ttl_and_so_are_empty_ones(dns: Dns) -> None:
    resolver = MxResolver([f"127.0.0.1:{dns.port}"], timeout=2)

    def ask_all() -> None:
        resolve(resolver, "example.org")
        resolve(resolver, "bare.example")
        with pytest.raises(DnsFailure):  # no such domain: kept as long as an empty answer
            resolve(resolver, "nowhere.example")

    ask_all()
    asked = dict(dns.queries)
    ask_all()
    assert dict(dns.queries) == asked  # all from the cache
    time.sleep(1.2)  # past the records' TTL and the SOA's negative TTL
    ask_all()
    assert dns.queries[("example.org", "MX")] == 2 and dns.queries[("bare.example", "MX")] == 2
    assert dns.queries[("nowhere.example", "MX")] == 2


def test_one_family_failing_for_now_leaves_the_other(dns: Dns) -> None:
    resolver = MxResolver([f"127.0.0.1:{dns.port}"], timeout=2)
    assert resolve(resolver, "half.example") == [("v6trouble.example", "127.0.0.6")]


@pytest.mark.parametrize(("domain", "permanent", "status"), [
    ("nowhere.example", True, "5.1.2"), ("null.example", True, "5.1.10"),
])
def test_domains_that_take_no_mail(dns: Dns, domain: str, permanent: bool, status: str) -> None:
    resolver = MxResolver([f"127.0.0.1:{dns.port}"], timeout=2)
    with pytest.raises(DnsFailure) as failure:
        resolve(resolver, domain)
    assert (failure.value.permanent, failure.value.status) == (permanent, status)
