"""Cluster mode measured: Redis operations per message, and throughput through HAProxy to 1, 2, 3… nodes.

`ops`: compare.py's fastmta-cluster target (a fastmta node and a redis-server of its own, per-client
limits counted for every client) under bench/source.py, for each connection pattern; Redis's
command statistics before and after give the commands per accepted message, by command. Throughput
and CPU beside local mode come from compare.py (--targets fastmta-limits,fastmta-cluster).

`scaling`: one redis-server, N nodes with the same limits and `[smtp] proxy_protocol`, and HAProxy
in TCP mode sending PROXY v2 to them (round robin); source.py sends through HAProxy, for each N.
On a machine with few cores the nodes share them, so this shows what HAProxy and the shared Redis
cost more than how nodes scale: run it where each node has cores of its own for the latter.

`cost`: the CPU an SMTP connection's counting costs in the worker, in-process and without the rest
of a session: fastmta.limits.ClientLimits admitting a connection (with its first reservations of
messages and recipients) and releasing it, on state.lmdb (local mode) and on Redis behind
FailoverCounters (cluster mode, a redis-server of its own), the latter also as the SMTP worker
does it, answered without waiting (fastmta.smtp.admissions on a uvloop loop, one connection at a
time: no batching helps it); the best of five runs of --connections.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import uvloop
from targets import (
    BENCH,
    COUNTED_LIMITS,
    FastMTA,
    FastMTAInCluster,
    FastMTAWithLimits,
    Running,
    free_port,
    spawn,
    wait_for_redis,
)

from fastmta.config import LimitsConfig
from fastmta.counters.failover import FailoverCounters
from fastmta.counters.interface import Counters
from fastmta.counters.redis_counters import RedisCounters, client
from fastmta.limits import ClientLimits
from fastmta.ratelimit import RateLimiter
from fastmta.smtp.admissions import AdmissionOutcome, Admissions


def info(port: int, section: str) -> str:
    """Redis's INFO of one section, as text."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"INFO {section}\r\n".encode())
        header = b""
        while not header.endswith(b"\r\n"):
            header += sock.recv(1)
        size = int(header[1:-2])
        body = b""
        while len(body) < size + 2:
            body += sock.recv(65536)
    return body.decode()


def command_stats(port: int) -> dict[str, int]:
    """Calls per command since Redis started (INFO commandstats), by command name."""
    calls = {}
    for line in info(port, "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_"):].partition(":")
            calls[name] = int(dict(field.split("=") for field in fields.split(","))["calls"])
    return calls


def redis_cpu(port: int) -> float:
    """Seconds of CPU redis-server has used, user and system (INFO cpu)."""
    fields = dict(line.split(":", 1) for line in info(port, "cpu").splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def source(port: int, sessions: int, per_connection: int, duration: float) -> dict:  # type: ignore[type-arg]
    """source.py's JSON report of a 1 KiB load on 127.0.0.1:port."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "source.py"), f"127.0.0.1:{port}", "--sessions", str(sessions), "--size", "1024",
         "--per-connection", str(per_connection), "--duration", str(duration), "--json", "--quiet"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if not done.stdout:
        raise RuntimeError(f"source.py failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def ops(args: argparse.Namespace, work: Path) -> list[dict]:  # type: ignore[type-arg]
    results = []
    target = FastMTAInCluster()
    running = target.start(work, free_port())
    try:
        for per_connection in (int(value) for value in args.per_connection.split(",")):
            before, cpu_before = command_stats(target.redis_port), redis_cpu(target.redis_port)
            load = source(running.port, args.sessions, per_connection, args.duration)
            after, cpu_after = command_stats(target.redis_port), redis_cpu(target.redis_port)
            accepted = max(1, load["messages_accepted"])
            by_command = {name: (after[name] - before.get(name, 0)) / accepted for name in after}
            results.append({
                "per_connection": per_connection,
                "messages_accepted": load["messages_accepted"],
                "messages_per_second": load["messages_per_second"],
                "redis_commands_per_message": round(sum(by_command.values()), 3),
                "redis_cpu_us_per_message": round((cpu_after - cpu_before) * 1e6 / accepted, 1),
                "by_command": {name: round(value, 3) for name, value in sorted(by_command.items()) if value},
            })  # fmt: skip
    finally:
        running.stop()
    return results


class ClusterNode(FastMTA):
    """A node of the scaling run: the same limits as fastmta-cluster, a shared Redis, behind HAProxy."""

    durability = "fsync before 250; limits in Redis; behind HAProxy"
    smtp_settings = (*FastMTAWithLimits.smtp_settings, "proxy_protocol = true", "workers = 1")

    def __init__(self, redis_url: str, node_id: str) -> None:
        self.name = node_id
        self.server_settings = (f'node_id = "{node_id}"',)
        self.sections = (*COUNTED_LIMITS, "[cluster]", f'redis_url = "{redis_url}"')


def haproxy(work: Path, backends: list[int]) -> tuple[subprocess.Popen[bytes], int]:
    """HAProxy in TCP mode, round robin, PROXY v2 to each backend; its process and port."""
    port = free_port()
    servers = "".join(f"    server n{i} 127.0.0.1:{backend} send-proxy-v2\n" for i, backend in enumerate(backends))
    config = work / "haproxy.cfg"
    config.write_text(
        "global\n    maxconn 4000\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n"
        f"    timeout server 30s\nfrontend smtp\n    bind 127.0.0.1:{port}\n    default_backend nodes\n"
        f"backend nodes\n    balance roundrobin\n{servers}"
    )
    process = spawn(["haproxy", "-db", "-f", str(config)], work / "haproxy.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("haproxy did not listen")


def redis_server(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server without persistence on a free port, answering; its process and port."""
    port = free_port()
    redis = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work),
                   "--save", "", "--appendonly", "no"], work / "redis.log")  # fmt: skip
    wait_for_redis(port, redis)
    return redis, port


def scaling(args: argparse.Namespace, work: Path) -> list[dict]:  # type: ignore[type-arg]
    if not shutil.which("haproxy") or not shutil.which("redis-server"):
        raise SystemExit("scaling needs haproxy and redis-server (apt-get install haproxy redis-server)")
    redis, redis_port = redis_server(work)
    results = []
    try:
        for count in (int(value) for value in args.nodes.split(",")):
            nodes: list[Running] = []
            balancer = None
            try:
                for number in range(count):
                    node = ClusterNode(f"redis://127.0.0.1:{redis_port}/0", f"node{number}")
                    # Behind PROXY protocol a node greets only after a header: started() waits for the port alone.
                    nodes.append(node.start(work / f"n{count}-{number}", free_port(), probe=False))
                balancer, port = haproxy(work, [node.port for node in nodes])
                load = source(port, args.sessions, 0, args.duration)
                results.append({"nodes": count, "messages_per_second": load["messages_per_second"],
                                "messages_accepted": load["messages_accepted"],
                                "messages_failed": load["messages_failed"], "errors": load["errors"]})  # fmt: skip
            finally:
                if balancer is not None:
                    balancer.terminate()
                    balancer.wait()
                for running in nodes:
                    running.stop()
    finally:
        redis.terminate()
        redis.wait()
    return results


def connections(limits: ClientLimits, count: int) -> None:
    """`count` connections admitted and released, from 250 addresses; each sent one message to one recipient."""
    for number in range(count):
        ip = f"192.0.2.{number % 250}"
        reserved = limits.admit(ip, exempt=False)
        limits.release(ip, {key: amount - 1 for key, amount in reserved.items()})


def connections_without_waiting(limits: ClientLimits, counters: FailoverCounters, count: int) -> None:
    """connections() as a cluster's SMTP worker counts them: each admission answered when Redis replies."""
    loop = uvloop.new_event_loop()
    admissions = Admissions(limits, counters, loop, 1.0)

    async def run() -> None:
        for number in range(count):
            ip = f"192.0.2.{number % 250}"
            answered: asyncio.Future[AdmissionOutcome] = loop.create_future()
            admissions.ask(ip, False, answered.set_result)
            reserved = await answered
            assert isinstance(reserved, dict)
            limits.release(ip, {key: amount - 1 for key, amount in reserved.items()})

    try:
        loop.run_until_complete(run())
    finally:
        admissions.close()
        loop.close()


def cost(args: argparse.Namespace, work: Path) -> list[dict]:  # type: ignore[type-arg]
    if not shutil.which("redis-server"):
        raise SystemExit("cost needs redis-server (apt-get install redis-server)")
    limits = LimitsConfig(exempt_mynetworks=False, messages_per_hour=100_000_000, recipients_per_hour=100_000_000,
                          connections_per_minute=100_000_000)  # fmt: skip
    redis, port = redis_server(work)
    stores: dict[str, Counters] = {
        "local (state.lmdb)": RateLimiter(work / "local.lmdb"),
        "cluster (Redis)": FailoverCounters(
            RedisCounters(client(f"redis://127.0.0.1:{port}/0", 1.0), "bench:", "node"), RateLimiter(work / "failover.lmdb"),
            "bench",
        ),
    }  # fmt: skip
    results = []
    try:
        for name, store in stores.items():
            client_limits = ClientLimits(store, limits, 1_000_000, 1_000_000)
            runs = {name: functools.partial(connections, client_limits, args.connections)}
            if isinstance(store, FailoverCounters):
                runs[f"{name}, answered without waiting"] = functools.partial(
                    connections_without_waiting, client_limits, store, args.connections
                )
            for label, run in runs.items():
                best = min(timeit.repeat(run, number=1, repeat=5, timer=time.process_time))
                results.append({"store": label, "cpu_us_per_connection": round(best / args.connections * 1e6, 1)})
            store.close()
    finally:
        redis.terminate()
        redis.wait()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cluster.py", description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("ops", "scaling", "cost"))
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load per run (default 5)")
    p.add_argument("--sessions", type=int, default=20, help="concurrent sessions (default 20)")
    p.add_argument("--per-connection", default="1,0", help="ops: messages per connection to try, 0 = reuse (default 1,0)")
    p.add_argument("--nodes", default="1,2,3", help="scaling: node counts to try (default 1,2,3)")
    p.add_argument("--connections", type=int, default=3000, help="cost: connections per run (default 3000)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fastmta-cluster-bench-") as work:
        results = {"ops": ops, "scaling": scaling, "cost": cost}[args.mode](args, Path(work))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for row in results:
        if "store" in row:
            print(f"{row['store']}: {row['cpu_us_per_connection']} µs of CPU per connection (admission, release)")
            continue
        if "nodes" in row:
            print(f"{row['nodes']} node(s) through HAProxy: {row['messages_per_second']:.0f} msg/s "
                  f"({row['messages_accepted']} accepted, {row['messages_failed']} failed {row['errors']})")  # fmt: skip
            continue
        pattern = "one message per connection" if row["per_connection"] == 1 else f"per_connection={row['per_connection']}"
        print(f"{pattern}: {row['messages_accepted']} accepted, {row['messages_per_second']:.0f} msg/s, "
              f"{row['redis_commands_per_message']} Redis commands per message {row['by_command']}, "
              f"{row['redis_cpu_us_per_message']} µs of redis-server's CPU per message")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
