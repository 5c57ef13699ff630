"""MTA-STS and DANE against the real server: a loopback DNS (TXT, TLSA with the AD bit), the policy host on
HTTPS, next hops with certificates the test makes; and the policy cache across restarts and id changes."""

from __future__ import annotations

import asyncio
import os
import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from fastmta import metrics
from fastmta.config import RouteConfig, TlsPolicyConfig
from fastmta.delivery.mx import DnsFailure, MxResolver
from fastmta.delivery.tlspolicy import pkix
from fastmta.delivery.tlspolicy.fetch import FetchFailed, PolicyFetcher
from fastmta.delivery.tlspolicy.mta_sts import StsPolicy
from fastmta.delivery.tlspolicy.policy import TlsPolicies
from fastmta.delivery.tlspolicy.sts_cache import CachedPolicy, StsPolicies
from tests.conftest import Server, free_port
from tests.integration.nexthop import Dns, NextHop
from tests.integration.sts_peers import Issued, PolicyHost, TestCa, policy
from tests.integration.test_delivery import journal, wait_until
from tests.integration.test_delivery_tls import server_context
from tests.integration.test_ingress import MESSAGE

# Each recipient domain is one case: its MX host, which next hop that name leads to, its policy.
GOOD, SELF_SIGNED = "127.0.0.1", "127.0.0.2"
MX_ADDRESS = {
    "enforce.test": GOOD, "unlisted.test": GOOD, "badcert.test": SELF_SIGNED, "testing.test": SELF_SIGNED,
    "dane.test": SELF_SIGNED, "danebad.test": GOOD, "insecure.test": GOOD, "cached.test": GOOD,
    "spoofed.test": SELF_SIGNED,
}
POLICIES = {
    "enforce.test": policy("enforce", "*.enforce.test"),
    "unlisted.test": policy("enforce", "mx.elsewhere.test"),
    "badcert.test": policy("enforce", "mx.badcert.test"),
    "testing.test": policy("testing", "mx.testing.test"),
    "cached.test": policy("enforce", "mx.cached.test", max_age=3600),
}
DANE_SIGNED = ("dane.test", "danebad.test", "spoofed.test")
# What delivery's own resolver ([delivery] dns_servers) answers unlike the DNSSEC resolver: a forged MX
# RRset for a signed domain, naming a host whose zone is not signed (so DANE would not apply to it).
FORGED_MX = {"spoofed.test": [(10, "mx.forged.test")]}
# Its TXT record promises a policy the policy host does not serve (404).
UNSERVED = "missing.test"


@dataclass
class World:
    ca: TestCa
    dns: Dns  # the DNSSEC-validating resolver
    ordinary_dns: Dns  # delivery's resolver
    policy_host: PolicyHost
    good: NextHop
    self_signed: NextHop
    server: Server


def _dns(port: int, policy_host: PolicyHost, self_signed_spki: bytes) -> Dns:
    tlsa_name = "_{}._tcp.mx.{}".format
    secure = {name for domain in DANE_SIGNED for name in (domain, f"mx.{domain}", tlsa_name(port, domain))}
    return Dns(
        mx={domain: [(10, f"mx.{domain}")] for domain in MX_ADDRESS},
        a={f"mx.{domain}": address for domain, address in MX_ADDRESS.items()} | {"mx.forged.test": GOOD}
        | {f"mta-sts.{domain}": policy_host.address for domain in (*POLICIES, UNSERVED)},
        txt={f"_mta-sts.{domain}": ["v=STSv1; id=1;"] for domain in (*POLICIES, UNSERVED)},
        # DANE-EE for the self-signed hop: dane.test matches it, danebad.test (whose MX is the other
        # hop) does not, and insecure.test's records come without the AD bit, so they do not count.
        tlsa={tlsa_name(port, domain): [(3, 1, 1, self_signed_spki)] for domain in (*DANE_SIGNED, "insecure.test")},
        secure=secure,
    ).start()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Path, Path]) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("tlspolicy")
    ca = TestCa(directory)
    try:
        policy_host = PolicyHost(ca.issue("policy-host", *(f"mta-sts.{domain}" for domain in (*POLICIES, UNSERVED))))
    except PermissionError:
        pytest.skip("the MTA-STS policy host listens on port 443, as RFC 8461 has it: that needs root")
    policy_host.policies.update(POLICIES)
    policy_host.start()
    port = free_port()
    good_certificate = ca.issue("good-hop", *(f"mx.{domain}" for domain, address in MX_ADDRESS.items() if address == GOOD))
    good = NextHop(port=port, host=GOOD, tls_context=good_certificate.server_context()).start()
    self_signed = NextHop(port=port, host=SELF_SIGNED, tls_context=server_context(tls_files)).start()
    dns = _dns(port, policy_host, Issued.load(tls_files).spki_sha256())
    ordinary_dns = Dns(mx=dns.mx | FORGED_MX, a=dns.a, txt=dns.txt, tlsa=dns.tlsa).start()
    server = Server(directory, {
        "delivery": {
            "workers": 1, "dns_servers": [f"127.0.0.1:{ordinary_dns.port}"], "connect_timeout": "2s", "retry_schedule": ["1h"],
        },
        "routes": [{"match": ["*"], "kind": "mx", "port": port}],  # tls = "opportunistic", the default
        "tls_policy": {"ca_file": str(ca.ca_file), "dnssec_resolver": f"127.0.0.1:{dns.port}"},
    }).start()
    cases = [domain for domain in MX_ADDRESS if domain != "cached.test"]
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        for domain in cases:
            client.sendmail("alice@example.com", [f"bob@{domain}"], MESSAGE)
    wait_until(lambda: len(journal(server)) == len(cases))
    yield World(ca, dns, ordinary_dns, policy_host, good, self_signed, server)
    server.stop()
    for peer in (good, self_signed, dns, ordinary_dns, policy_host):
        peer.stop()


def outcome(world: World, domain: str) -> dict[str, Any]:
    (entry,) = [e for e in journal(world.server) if e["recipient"] == f"bob@{domain}"]
    return entry


def arrived(hop: NextHop, domain: str) -> bool:
    return any(a.recipients == [f"bob@{domain}"] and a.tls for a in hop.recorder.arrivals)


def test_enforce_delivers_to_a_listed_mx_with_a_certificate_for_its_name(world: World) -> None:
    assert outcome(world, "enforce.test")["status"] == "delivered" and arrived(world.good, "enforce.test")
    assert world.policy_host.fetches["enforce.test"] == 1


@pytest.mark.parametrize(("domain", "reason"), [
    ("unlisted.test", "4.7.5 mx.unlisted.test is not an MX host of unlisted.test's MTA-STS policy"),
    ("badcert.test", "4.7.5 certificate of mx.badcert.test not trusted"),
])
def test_enforce_defers_an_unlisted_mx_or_a_bad_certificate(world: World, domain: str, reason: str) -> None:
    entry = outcome(world, domain)
    assert entry["status"] == "deferred" and entry["reply"].startswith(f"451 {reason}"), entry


def test_testing_mode_delivers_and_counts_the_failure(world: World) -> None:
    assert outcome(world, "testing.test")["status"] == "delivered" and arrived(world.self_signed, "testing.test")
    # Written by the runner once a second: one each for unlisted.test and badcert.test, testing.test, danebad.test.
    expected = {("mta-sts", "enforce"): 2, ("mta-sts", "testing"): 1, ("dane", "enforce"): 1}
    wait_until(lambda: failures(world.server) == expected)


def test_dane_ee_match_delivers_and_a_mismatch_defers(world: World) -> None:
    # The self-signed certificate is for mx.test: DANE-EE checks the key, not the name or the CA.
    assert outcome(world, "dane.test")["status"] == "delivered" and arrived(world.self_signed, "dane.test")
    entry = outcome(world, "danebad.test")
    assert entry["status"] == "deferred" and "4.7.5 certificate of mx.danebad.test matches none of its TLSA" in entry["reply"]


def test_tlsa_records_without_the_ad_bit_are_ignored(world: World) -> None:
    assert outcome(world, "insecure.test")["status"] == "delivered" and arrived(world.good, "insecure.test")


def test_a_signed_mx_rrset_is_taken_from_the_dnssec_resolver_not_a_forged_answer(world: World) -> None:
    # Delivery's resolver names mx.forged.test, whose unsigned zone would mean "no DANE" (RFC 7672 §2.2).
    entry = outcome(world, "spoofed.test")
    assert entry["status"] == "delivered" and entry["host"] == "mx.spoofed.test", entry
    assert arrived(world.self_signed, "spoofed.test") and not arrived(world.good, "spoofed.test")


def test_a_signed_mx_rrset_names_the_hosts_and_a_host_it_does_not_name_is_refused(world: World, tmp_path: Path) -> None:
    route = RouteConfig(match=["*"], kind="mx", port=world.good.port)
    config = TlsPolicyConfig(ca_file=str(world.ca.ca_file), dnssec_resolver=f"127.0.0.1:{world.dns.port}")

    async def look_up() -> tuple[str, list[tuple[str, str]], Any]:
        resolver = MxResolver([f"127.0.0.1:{world.ordinary_dns.port}"], timeout=2)
        policies = TlsPolicies(config, resolver, tmp_path, 2, lambda *report: None)
        try:
            # The DNSSEC resolver failing the RRset (as it fails a forged one): delivery's answer is not taken instead.
            world.dns.servfail.add(("spoofed.test", "MX"))
            with pytest.raises(DnsFailure) as failed:
                await policies.destinations(route, "spoofed.test")
            world.dns.servfail.discard(("spoofed.test", "MX"))
            hosts = await policies.destinations(route, "spoofed.test")
            return failed.value.status, hosts, await policies.plan(route, "spoofed.test", [("mx.forged.test", GOOD)])
        finally:
            world.dns.servfail.discard(("spoofed.test", "MX"))
            await policies.close()

    status, hosts, planned = asyncio.run(look_up())
    assert status == "4.4.3" and hosts == [("mx.spoofed.test", SELF_SIGNED)]
    assert planned == ([], "mx.forged.test is not a mail exchanger of spoofed.test's DNSSEC-signed MX records (DANE)")


def failures(server: Server) -> dict[tuple[str, str], float]:
    """fastmta_tls_policy_failures_total by (policy, mode), from the files /metrics is made of."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(metrics.directory_for(server.data_dir)))
    return {
        (sample.labels["policy"], sample.labels["mode"]): sample.value
        for family in registry.collect() if family.name == "fastmta_tls_policy_failures"
        for sample in family.samples if sample.name.endswith("_total")
    }


def test_the_policy_is_cached_across_restarts_and_fetched_again_when_its_id_changes(world: World, tmp_path: Path) -> None:
    clock = [1000.0]

    async def look_up() -> Any:
        # A new resolver and cache each time, as a restarted runner has: only the files remain.
        resolver = MxResolver([f"127.0.0.1:{world.dns.port}"], timeout=2)
        fetcher = PolicyFetcher(resolver, pkix.ca_context(str(world.ca.ca_file)), timeout=5)
        policies = StsPolicies(resolver, fetcher, tmp_path, clock=lambda: clock[0])
        try:
            return [await policies.policy("cached.test") for _ in range(2)]
        finally:
            await fetcher.close()

    fetches = world.policy_host.fetches
    first = asyncio.run(look_up())
    assert first[0] == first[1] and first[0].mode == "enforce" and fetches["cached.test"] == 1
    assert asyncio.run(look_up()) == first and fetches["cached.test"] == 1  # from data_dir, after a "restart"
    world.policy_host.policies["cached.test"] = policy("testing", "mx.cached.test", max_age=3600)
    world.dns.txt["_mta-sts.cached.test"] = ["v=STSv1; id=2;"]
    assert [p.mode for p in asyncio.run(look_up())] == ["testing", "testing"] and fetches["cached.test"] == 2
    del world.dns.txt["_mta-sts.cached.test"]  # the TXT record gone: the cached policy holds until its max_age
    assert asyncio.run(look_up())[0].mode == "testing"
    clock[0] += 3601
    assert asyncio.run(look_up()) == [None, None] and fetches["cached.test"] == 2


def test_a_policy_that_cannot_be_fetched_counts_as_none_and_is_not_fetched_again_at_once(world: World, tmp_path: Path) -> None:
    async def look_up_twice() -> list[Any]:
        resolver = MxResolver([f"127.0.0.1:{world.dns.port}"], timeout=2)
        fetcher = PolicyFetcher(resolver, pkix.ca_context(str(world.ca.ca_file)), timeout=5)
        policies = StsPolicies(resolver, fetcher, tmp_path)
        try:
            return [await policies.policy(UNSERVED) for _ in range(2)]
        finally:
            await fetcher.close()

    assert asyncio.run(look_up_twice()) == [None, None]  # as if there were none (RFC 8461 §5.1)
    assert world.policy_host.fetches[UNSERVED] == 1


def test_a_connection_verified_for_one_policy_host_is_not_reused_for_another_at_its_address(world: World) -> None:
    # mta-sts.victim.test leads to the policy host's address, whose certificate does not name it; the
    # host keeps connections alive, so only a new connection (and handshake) for this name can catch that.
    world.dns.a["mta-sts.victim.test"] = world.policy_host.address
    world.policy_host.policies["victim.test"] = policy("enforce", "mx.attacker.test")

    async def fetch_both() -> tuple[StsPolicy, str]:
        fetcher = PolicyFetcher(MxResolver([f"127.0.0.1:{world.dns.port}"], timeout=2), pkix.ca_context(str(world.ca.ca_file)), 5)
        try:
            first = await fetcher("enforce.test")
            with pytest.raises(FetchFailed) as refused:
                await fetcher("victim.test")
            return first, str(refused.value)
        finally:
            await fetcher.close()

    first, refusal = asyncio.run(fetch_both())
    assert first.mode == "enforce" and "mta-sts.victim.test" in refusal and "certificate" in refusal.lower(), refusal
    assert world.policy_host.fetches["victim.test"] == 0


def test_the_policy_files_are_read_and_written_off_the_event_loop(world: World, tmp_path: Path) -> None:
    """A slow disk, played by FIFOs: the cached file, then the new one's temporary name, each wait for the "disk"
    thread, which serves them once the loop has run something else meanwhile (or after 5 s, to a loop that cannot)."""
    cached, temporary = tmp_path / "slow.test.json", tmp_path / f".slow.test.json.{os.getpid()}"
    for fifo in (cached, temporary):
        os.mkfifo(fifo)
    world.dns.txt["_mta-sts.slow.test"] = ["v=STSv1; id=2;"]
    old, new = StsPolicy("testing", ("mx.slow.test",), 3600), StsPolicy("enforce", ("mx.slow.test",), 3600)
    # Set by the loop just after the read, then the write, began: only a loop that is not held up by them can.
    read_begun, write_begun = threading.Event(), threading.Event()
    went_on: list[bool] = []
    written: list[bytes] = []

    def disk() -> None:
        went_on.append(read_begun.wait(5))
        cached.write_bytes(msgspec.json.encode(CachedPolicy("1", old, time.time())))
        went_on.append(write_begun.wait(5))
        written.append(temporary.read_bytes())

    async def fetch(domain: str) -> StsPolicy:
        # Not the HTTPS fetch (tested above): the file written next is the point here.
        asyncio.get_running_loop().call_soon(write_begun.set)
        return new

    async def look_up() -> StsPolicy | None:
        policies = StsPolicies(MxResolver([f"127.0.0.1:{world.dns.port}"], timeout=2), fetch, tmp_path)
        looking = asyncio.ensure_future(policies.policy("slow.test"))
        asyncio.get_running_loop().call_soon(read_begun.set)
        return await looking

    serving = threading.Thread(target=disk, daemon=True)
    serving.start()
    assert asyncio.run(look_up()) == new
    serving.join(10)
    assert went_on == [True, True]
    assert msgspec.json.decode(written[0], type=CachedPolicy).policy == new
