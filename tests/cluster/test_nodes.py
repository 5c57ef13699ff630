"""Three real `fastmta serve` nodes sharing a real redis-server and a real PostgreSQL history, behind a
real HAProxy (TCP, PROXY v2): limits, the delivery switch and a destination's connections hold across
them, users and API tokens made through one node work on the others at once, a 30 s Redis outage
under load degrades them without stopping mail and they recover, and a node killed under load loses
no acknowledged message, in delivery or in the shared history."""

from __future__ import annotations

import base64
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import sqlalchemy as sa

from fastmta.access.stores import Access
from fastmta.queue.records import node_tag
from tests import postgres
from tests.admin.conftest import wait_until
from tests.conftest import Server, installed
from tests.haproxy import Haproxy
from tests.integration.nexthop import NextHop
from tests.redis_server import RedisServer

LIMIT = 6  # messages_per_hour per client address, across the cluster
OUTAGE_SECONDS = 30.0  # how long Redis is stopped under load


@dataclass
class Node:
    server: Server
    token: str

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.admin_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)


@dataclass
class Cluster:
    redis: RedisServer
    nodes: list[Node]
    next_hop: NextHop
    balancer: Haproxy
    history: sa.Engine  # the nodes' shared PostgreSQL history

    def send(self, source: str, subject: str) -> int:
        """One message through HAProxy in its own connection from `source`: the reply code to DATA, or
        to what refused it first; 0 when the connection broke before an answer (not acknowledged)."""
        try:
            with smtplib.SMTP("127.0.0.1", self.balancer.port, timeout=10, source_address=(source, 0)) as smtp:
                smtp.ehlo("client.test")
                code = smtp.mail("alice@example.com")[0]
                if code != 250:
                    return code
                smtp.rcpt("bob@example.org")
                return smtp.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())[0]
        except smtplib.SMTPResponseException as refused:
            return refused.smtp_code
        except (smtplib.SMTPServerDisconnected, OSError):
            return 0


def _started(server: Server) -> Node:
    """The node started, with an operator token made by its CLI (named after the node: tokens are shared)."""
    server.start()
    created = server.cli("token", "create", "--role", "operator", "--name", f"test-{server.settings['server']['node_id']}")
    assert created.returncode == 0, created.stderr
    return Node(server, created.stdout.decode().split()[-1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    installed("redis-server", "redis-server")
    installed("haproxy", "haproxy")
    if postgres.binaries() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    with postgres.server(tmp_path_factory.mktemp("postgres")) as history_url:
        yield from _nodes(tmp_path_factory, history_url)


def _nodes(tmp_path_factory: pytest.TempPathFactory, history_url: str) -> Iterator[Cluster]:
    redis_dir = tmp_path_factory.mktemp("redis")
    redis = RedisServer(redis_dir).start()
    next_hop = NextHop().start()
    next_hop.recorder.data_delay = 0.1  # connections stay open long enough to overlap if they could
    servers = []
    try:
        for number in range(3):
            settings = {
                "server": {"node_id": f"node{number}"},
                "smtp": {"workers": 1, "proxy_protocol": True, "require_tls_for_auth": False},
                "limits": {"messages_per_hour": LIMIT, "exempt_mynetworks": False},
                "delivery": {"workers": 1},
                "routes": [
                    {"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": next_hop.port, "tls": "none",
                     "max_connections": 1},
                ],
                "admin": {"enabled": True},
                "cluster": {"redis_url": redis.url, "heartbeat_ttl": "3s", "redis_timeout": "200ms"},
                "history": {"enabled": True, "url": history_url},
            }  # fmt: skip
            servers.append(Server(tmp_path_factory.mktemp(f"node{number}"), settings))
        # The nodes start side by side: each start is mostly waiting for its children to come up.
        with ThreadPoolExecutor(len(servers)) as pool:
            nodes = list(pool.map(_started, servers))
        balancer = Haproxy(tmp_path_factory.mktemp("haproxy"), [server.port for server in servers]).start()
        history = sa.create_engine(history_url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            yield Cluster(redis, nodes, next_hop, balancer, history)
        finally:
            history.dispose()
            balancer.stop()
    finally:
        for server in servers:
            if server.process is not None:
                server.stop()
        next_hop.stop()
        if redis.process is not None:
            redis.stop()


def test_a_per_ip_limit_holds_across_nodes(cluster: Cluster) -> None:
    """Reservations are taken one message at a time at this limit, so it is exact: LIMIT, not one more."""
    codes = [cluster.send("127.0.0.2", f"limit {attempt}") for attempt in range(LIMIT + 4)]
    assert codes.count(250) == LIMIT
    assert codes[:LIMIT] == [250] * LIMIT
    cluster.next_hop.recorder.wait_for(LIMIT)


def test_suspending_through_one_node_stops_every_runner_and_a_destination_limit_is_cluster_wide(cluster: Cluster) -> None:
    first, second = cluster.nodes[:2]
    with first.api() as api:
        assert api.post("/api/v1/delivery/suspend").json()["data"]["suspended"]
    with second.api() as api:
        assert api.get("/api/v1/delivery").json()["data"]["suspended"]
    arrived = len(cluster.next_hop.recorder.arrivals)
    for number in range(6):  # HAProxy takes turns: two to each node
        assert cluster.send("127.0.0.3", f"held {number}") == 250
    # Every runner looks at the switch at least once a second, and before each batch.
    assert not wait_until(lambda: len(cluster.next_hop.recorder.arrivals) > arrived, timeout=1.5)
    with second.api() as api:
        assert not api.post("/api/v1/delivery/activate").json()["data"]["suspended"]
    cluster.next_hop.recorder.wait_for(arrived + 6)
    # The nodes had mail for the next hop at once; one connection at a time across them.
    assert cluster.next_hop.recorder.most_open == 1


def test_the_nodes_list_each_other(cluster: Cluster) -> None:
    with cluster.nodes[1].api() as api:
        listed = wait_until(lambda: len(api.get("/api/v1/cluster/nodes").json()["data"]["nodes"]) == 3 or None)
        assert listed
        body = api.get("/api/v1/cluster/nodes").json()["data"]
    assert body["this_node"] == "node1"
    assert sorted(view["report"]["node"] for view in body["nodes"]) == ["node0", "node1", "node2"]
    assert all(view["report"]["status"] == "ok" and view["report"]["queue_depth"] is not None for view in body["nodes"])
    assert all(view["report"]["queue_id_tag"] == node_tag(view["report"]["node"]) for view in body["nodes"])


def _auth(node: Node, username: str, password: str) -> int:
    """The reply code to AUTH PLAIN on the node's own port, past HAProxy (the test sends the PROXY header)."""
    client = smtplib.SMTP()
    client.sock = socket.create_connection(("127.0.0.1", node.server.port), timeout=10)
    try:
        client.sock.sendall(b"PROXY TCP4 127.0.0.9 127.0.0.1 40000 25\r\n")
        assert client.getreply()[0] == 220
        client.ehlo("client.test")
        return client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{username}\0{password}".encode()).decode())[0]
    finally:
        client.close()


def test_a_user_and_a_token_made_through_one_node_work_on_the_others_at_once(cluster: Cluster) -> None:
    """Users, tokens and the audit log are in the shared PostgreSQL: no copy, no cache, so a change made
    through one node holds on every node from the next request on."""
    first, second, third = cluster.nodes
    # The nodes' own tokens are operators'; users and tokens are made with an admin's, put in the shared store.
    admin = {"Authorization": f"Bearer {Access.sql(cluster.history).tokens.create('cluster-admin', 'admin')[1]}"}
    with httpx.Client(base_url=first.server.admin_url, headers=admin, timeout=10) as api:
        assert api.post("/api/v1/users", json={"username": "shared", "password": "pw of shared"}).status_code == 201
        created = api.post("/api/v1/tokens", json={"name": "shared-viewer", "role": "viewer"}).json()["data"]
    viewer = {"Authorization": f"Bearer {created['token']}"}

    assert _auth(second, "shared", "pw of shared") == 235
    assert httpx.get(f"{third.server.admin_url}/api/v1/delivery", headers=viewer, timeout=10).status_code == 200
    audit = httpx.get(f"{third.server.admin_url}/api/v1/audit", headers=admin, params={"actor": "token:cluster-admin"}, timeout=10)
    assert [entry["action"] for entry in audit.json()["data"]["items"]] == ["token.create", "user.create"]

    revoked = httpx.delete(f"{second.server.admin_url}/api/v1/tokens/{created['info']['id']}", headers=admin, timeout=10)
    assert revoked.status_code == 200
    assert httpx.get(f"{third.server.admin_url}/api/v1/delivery", headers=viewer, timeout=10).status_code == 401
    assert httpx.delete(f"{third.server.admin_url}/api/v1/users/shared", headers=admin, timeout=10).status_code == 200
    assert _auth(first, "shared", "pw of shared") == 535


def _degraded_gauge(node: Node) -> str:
    with node.api() as api:
        metrics = api.get("/metrics").text
    series = 'fastmta_cluster_degraded{worker="smtp-0"}'
    return next((line.rsplit(" ", 1)[1] for line in metrics.splitlines() if line.startswith(series)), "")


def _degraded_everywhere(cluster: Cluster, degraded: bool) -> bool:
    """Every node says so in /health (still 200: a load balancer keeps it) and in fastmta_cluster_degraded."""
    for node in cluster.nodes:
        response = httpx.get(f"{node.server.admin_url}/health", timeout=10)
        state = response.json()["data"]
        wanted = ("degraded", "degraded", "1.0") if degraded else ("ok", "ok", "0.0")
        if response.status_code != 200 or (state["status"], state["cluster"], _degraded_gauge(node)) != wanted:
            return False
    return True


def _suspended_everywhere(cluster: Cluster) -> bool:
    for node in cluster.nodes:
        with node.api() as api:
            if not api.get("/api/v1/delivery").json()["data"]["suspended"]:
                return False
    return True


def test_redis_stopped_for_30_s_under_load_degrades_every_node_and_they_recover(cluster: Cluster) -> None:
    """A steady load through HAProxy while redis-server is stopped for OUTAGE_SECONDS (the issue's 30 s):
    every node says it is degraded and keeps taking every message (each address stays under the
    limit), and once Redis is back (empty) every node says it is not, writes back what it counted
    alone, and the delivery switch changed on one node during the outage wins on all of them, being
    the later change. Nothing acknowledged is lost."""
    codes: dict[int, int] = {}
    stop = threading.Event()
    # Four messages a second at most, each address used every 25 seconds: far under LIMIT per hour.
    sources = [f"127.0.2.{number}" for number in range(1, 101)]

    def load() -> None:
        number = 0
        while not stop.is_set():
            codes[number] = cluster.send(sources[number % len(sources)], f"outage {number}")
            number += 1
            stop.wait(0.25)

    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(load)
        try:
            assert wait_until(lambda: len(codes) >= 2)
            cluster.redis.stop()
            restart_at = time.monotonic() + OUTAGE_SECONDS
            sent_before = len(codes)
            try:
                assert wait_until(lambda: _degraded_everywhere(cluster, True))
                assert cluster.send("127.0.0.4", "counted alone") == 250  # in one node's state.lmdb
                # The outage lasts its time, the load going on. Near its end delivery is suspended
                # through node2, which alone knows until Redis is back (near the end, so that little
                # mail waits for the switch to be turned back).
                time.sleep(max(0.0, restart_at - 1.0 - time.monotonic()))
                with cluster.nodes[2].api() as api:
                    assert api.post("/api/v1/delivery/suspend").json()["data"]["suspended"]
                time.sleep(max(0.0, restart_at - time.monotonic()))
                sent_during_outage = len(codes) - sent_before
            finally:
                cluster.redis.start()  # on the same port, empty
            assert wait_until(lambda: _degraded_everywhere(cluster, False))
            assert wait_until(lambda: _suspended_everywhere(cluster), timeout=5)
        finally:
            stop.set()
            loading.result()
    assert sent_during_outage >= OUTAGE_SECONDS  # the load went on throughout
    refused = {number: code for number, code in codes.items() if code != 250}
    assert refused == {}
    # What a node counted alone is in Redis again: the limit goes on from there.
    after = [cluster.send("127.0.0.4", f"after {number}") for number in range(LIMIT)]
    assert after.count(250) == LIMIT - 1

    with cluster.nodes[0].api() as api:
        assert not api.post("/api/v1/delivery/activate").json()["data"]["suspended"]

    def missing() -> list[int]:
        arrived = b"".join(arrival.content for arrival in cluster.next_hop.recorder.arrivals)
        return [number for number in codes if f"Subject: outage {number}\r\n".encode() not in arrived]

    assert wait_until(lambda: not missing(), timeout=30), missing()


def test_a_node_killed_under_load_loses_no_acknowledged_message(cluster: Cluster) -> None:
    """SIGKILL to a whole node (supervisor and children) while mail arrives: HAProxy sends new sessions to
    the others, and once restarted the killed node delivers everything it had acknowledged, and the
    shared history has every acknowledged message as sent, under an id naming the node that took it.
    Delivery is suspended meanwhile, so the killed node dies holding all the mail it took."""
    survivor, victim = cluster.nodes[0], cluster.nodes[1].server
    with survivor.api() as api:
        assert api.post("/api/v1/delivery/suspend").json()["data"]["suspended"]
    acknowledged: list[int] = []
    # Many client addresses, so that the per-IP limit refuses none of this mail.
    sources = [f"127.0.1.{number}" for number in range(1, 41)]
    kill_at = 20

    def load(sender: int) -> None:
        for number in range(sender, len(sources) * 2, 4):
            if cluster.send(sources[number % len(sources)], f"load {number}") == 250:
                acknowledged.append(number)
            if number == kill_at:
                victim.kill()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(load, range(4)))
    # Sessions went on through the surviving node after the kill, the killed node's share included.
    assert len([number for number in acknowledged if number > kill_at + 4]) >= 40
    victim.start()
    with survivor.api() as api:
        assert not api.post("/api/v1/delivery/activate").json()["data"]["suspended"]

    def missing() -> list[int]:
        arrived = b"".join(arrival.content for arrival in cluster.next_hop.recorder.arrivals)
        return [number for number in acknowledged if f"Subject: load {number}\r\n".encode() not in arrived]

    wait_until(lambda: not missing(), timeout=30)
    assert missing() == []

    def history() -> dict[str, sa.Row]:  # type: ignore[type-arg]
        with cluster.history.connect() as connection:
            rows = connection.execute(sa.text("SELECT id, node, status, subject FROM messages WHERE subject LIKE 'load %'"))
            return {row.subject: row for row in rows}

    def unsent() -> list[int]:
        recorded = history()
        return [n for n in acknowledged if f"load {n}" not in recorded or recorded[f"load {n}"].status != "sent"]

    wait_until(lambda: not unsent(), timeout=30)
    assert unsent() == []
    recorded = history().values()
    assert {row.node for row in recorded} == {"node0", "node1", "node2"}
    assert all(row.id[9:14] == node_tag(row.node) for row in recorded)
