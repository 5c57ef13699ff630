"""What the outbound TLS policy costs: the lookup per delivery (cached and not) and the certificate check per new connection.

Times the real pieces in-process against loopback peers: the tests' DNS server (dnslib, playing the
DNSSEC-validating resolver too) and MTA-STS policy host (HTTPS on port 443 of a loopback address, so
run it as root), with certificates from a CA of its own. Needs the test extras (`make dev`).
  lookup, uncached    a runner that knows nothing: DNS queries, and for MTA-STS the HTTPS fetch
  lookup, restarted   a new runner: DNS queries, the policy read from data_dir/mta-sts/
  lookup, cached      a runner that has it all (DNS answers within their TTL, the policy in memory)
  check               the chain verified after STARTTLS, once per new connection
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fastmta.config import RouteConfig, TlsPolicyConfig  # noqa: E402 (needs the repo on sys.path)
from fastmta.delivery.mx import MxResolver  # noqa: E402
from fastmta.delivery.tlspolicy.policy import TlsPolicies  # noqa: E402
from tests.integration.nexthop import Dns  # noqa: E402
from tests.integration.sts_peers import PolicyHost, TestCa, policy  # noqa: E402

PORT = 25
ROUTE = RouteConfig(match=["*"], kind="mx", port=PORT)
CASES = {  # what each recipient domain publishes
    "none": "no policy (a TXT lookup that finds nothing)",
    "sts": "MTA-STS, enforce",
    "dane": "DANE, TLSA 3 1 1 (DNSSEC)",
}


@dataclass
class World:
    ca: TestCa
    dns: Dns
    policy_host: PolicyHost
    chain: list[bytes]  # what the MX hosts send: leaf, then the CA

    def stop(self) -> None:
        self.dns.stop()
        self.policy_host.stop()


def world(directory: Path) -> World:
    ca = TestCa(directory)
    host = PolicyHost(ca.issue("policy-host", "mta-sts.sts.bench"))
    host.policies["sts.bench"] = policy("enforce", "mx.sts.bench")
    mx = ca.issue("mx", *(f"mx.{case}.bench" for case in CASES))
    dane_name = f"_{PORT}._tcp.mx.dane.bench"
    dns = Dns(
        mx={f"{case}.bench": [(10, f"mx.{case}.bench")] for case in CASES},
        a={f"mx.{case}.bench": "127.0.0.1" for case in CASES} | {"mta-sts.sts.bench": host.address},
        txt={"_mta-sts.sts.bench": ["v=STSv1; id=1;"]},
        tlsa={dane_name: [(3, 1, 1, mx.spki_sha256())]},
        secure={"dane.bench", "mx.dane.bench", dane_name},
    ).start()
    return World(ca, dns, host.start(), mx.der_chain())


async def median_seconds(runners: list[TlsPolicies], domain: str) -> float:
    """Median time of one plan(), each by the next runner of the list (the same one again and again for "cached")."""
    candidates = [(f"mx.{domain}", "127.0.0.1")]
    spent = []
    for policies in runners:
        started = time.perf_counter()
        await policies.plan(ROUTE, domain, candidates)
        spent.append(time.perf_counter() - started)
    return statistics.median(spent)


async def measure_case(here: World, case: str, rounds: int, cached_rounds: int) -> dict[str, float]:
    server = f"127.0.0.1:{here.dns.port}"
    config = TlsPolicyConfig(ca_file=str(here.ca.ca_file), dnssec_resolver=server)
    kept = Path(tempfile.mkdtemp())  # data_dir of the "restarted" runners: the first one writes the policy file

    def runner(data_dir: Path) -> TlsPolicies:
        return TlsPolicies(config, MxResolver([server], 5), data_dir, 5, lambda *report: None)

    domain = f"{case}.bench"
    fresh = [runner(Path(tempfile.mkdtemp())) for _ in range(rounds)]
    restarted = [runner(kept) for _ in range(rounds + 1)]
    steady = runner(kept)
    try:
        await restarted.pop().plan(ROUTE, domain, [(f"mx.{domain}", "127.0.0.1")])
        figures = {
            "uncached_ms": await median_seconds(fresh, domain) * 1e3,
            "restarted_ms": await median_seconds(restarted, domain) * 1e3,
            "cached_us": await median_seconds([steady] * cached_rounds, domain) * 1e6,
        }
        hops, _ = await steady.plan(ROUTE, domain, [(f"mx.{domain}", "127.0.0.1")])
        check = hops[0].tls.check
        if check is not None:
            assert check(here.chain) == "", case
            figures["check_us"] = timeit.timeit(functools.partial(check, here.chain), number=cached_rounds) / cached_rounds * 1e6
    finally:
        for policies in (*fresh, *restarted, steady):
            await policies.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tls_policy_cost.py", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=50, help="uncached and restarted lookups per case")
    p.add_argument("--cached-rounds", type=int, default=5000, help="cached lookups and certificate checks per case")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    here = world(Path(tempfile.mkdtemp()))

    async def measure() -> dict[str, dict[str, float]]:
        return {case: await measure_case(here, case, args.rounds, args.cached_rounds) for case in CASES}

    try:
        results = asyncio.run(measure())
    finally:
        here.stop()
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{'case':<46} {'uncached':>10} {'restarted':>10} {'cached':>10} {'check':>10}")
    for case, figures in results.items():
        check = f"{figures['check_us']:.0f} µs" if "check_us" in figures else "—"
        print(f"{CASES[case]:<46} {figures['uncached_ms']:>7.2f} ms {figures['restarted_ms']:>7.2f} ms "
              f"{figures['cached_us']:>7.1f} µs {check:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
