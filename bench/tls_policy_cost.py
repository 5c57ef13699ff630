"""What the outbound TLS policy costs: the policy lookup per delivery (cached and not) and the certificate check per new connection.

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
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
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


def world(directory: Path) -> tuple[TestCa, Dns, PolicyHost, dict[str, bytes]]:
    ca = TestCa(directory)
    host = PolicyHost(ca.issue("policy-host", "mta-sts.sts.bench"))
    host.policies["sts.bench"] = policy("enforce", "mx.sts.bench")
    mx = ca.issue("mx", "mx.sts.bench", "mx.dane.bench", "mx.none.bench")
    dane_name = f"_{PORT}._tcp.mx.dane.bench"
    dns = Dns(
        mx={f"{case}.bench": [(10, f"mx.{case}.bench")] for case in CASES},
        a={f"mx.{case}.bench": "127.0.0.1" for case in CASES} | {"mta-sts.sts.bench": host.address},
        txt={"_mta-sts.sts.bench": ["v=STSv1; id=1;"]},
        tlsa={dane_name: [(3, 1, 1, mx.spki_sha256())]},
        secure={"dane.bench", "mx.dane.bench", dane_name},
    ).start()
    return ca, dns, host.start(), {case: b"" for case in CASES} | {"chain": b"".join(mx.der_chain())} | {
        f"der{index}": der for index, der in enumerate(mx.der_chain())
    }


async def timed(action: Callable[[], Awaitable[object]], rounds: int) -> float:
    """Median seconds of one call."""
    spent = []
    for _ in range(rounds):
        started = time.perf_counter()
        await action()
        spent.append(time.perf_counter() - started)
    return statistics.median(spent)


async def measure(ca: TestCa, dns: Dns, data: dict[str, bytes], rounds: int, cached_rounds: int) -> dict[str, dict[str, float]]:
    server = [f"127.0.0.1:{dns.port}"]
    config = TlsPolicyConfig(ca_file=str(ca.ca_file), dnssec_resolver=server[0])
    keep = Path(tempfile.mkdtemp())

    def runner(data_dir: Path) -> TlsPolicies:
        return TlsPolicies(config, MxResolver(server, 5), data_dir, 5, lambda *report: None)

    results: dict[str, dict[str, float]] = {}
    for case in CASES:
        domain = f"{case}.bench"
        candidates = [(f"mx.{domain}", "127.0.0.1")]
        fresh = [runner(Path(tempfile.mkdtemp())) for _ in range(rounds)]
        restarted = [runner(keep) for _ in range(rounds)]
        await restarted[0].plan(ROUTE, domain, candidates)  # writes the policy file the others read
        steady = runner(keep)
        await steady.plan(ROUTE, domain, candidates)
        uncached = iter(fresh)
        warm = iter(restarted[1:] + restarted[:1])
        results[case] = {
            "uncached_ms": await timed(lambda: next(uncached).plan(ROUTE, domain, candidates), rounds) * 1e3,
            "restarted_ms": await timed(lambda: next(warm).plan(ROUTE, domain, candidates), rounds) * 1e3,
            "cached_us": await timed(lambda: steady.plan(ROUTE, domain, candidates), cached_rounds) * 1e6,
        }
        hops, _ = await steady.plan(ROUTE, domain, candidates)
        check = hops[0].tls.check
        chain = [data["der0"], data["der1"]]
        if check is not None:
            assert check(chain) == "", case

            async def verify() -> None:
                check(chain)

            results[case]["check_us"] = await timed(verify, cached_rounds) * 1e6
        for policies in (*fresh, *restarted, steady):
            await policies.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tls_policy_cost.py", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=50, help="uncached and restarted lookups per case")
    p.add_argument("--cached-rounds", type=int, default=5000, help="cached lookups and certificate checks per case")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    ca, dns, host, data = world(Path(tempfile.mkdtemp()))
    try:
        results = asyncio.run(measure(ca, dns, data, args.rounds, args.cached_rounds))
    finally:
        dns.stop()
        host.stop()
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
