"""The console's overview lists the cluster's nodes, from the heartbeats in a real redis-server."""

from __future__ import annotations

from pathlib import Path

from fastmta.counters.redis_counters import RedisCounters, client
from tests.admin.conftest import wait_until
from tests.console.conftest import Console
from tests.redis_server import RedisServer


def test_the_overview_lists_the_nodes_heard_from(tmp_path: Path, redis_server: RedisServer, key_prefix: str) -> None:
    other = RedisCounters(client(redis_server.url, 1.0), key_prefix, "mx2.test")
    other.beat(
        b'{"node":"mx2.test","status":"degraded","reasons":[],"queue_depth":7,"smtp_workers_alive":2,'
        b'"delivery_suspended":false,"admin":"127.0.0.1:8080","at":0}',
        ttl=60,
    )
    other.close()
    console = Console(tmp_path, {"cluster": {"redis_url": redis_server.url, "key_prefix": key_prefix}})
    try:
        with console.client() as browser:  # entering runs the app's lifespan: this node's first heartbeat
            console.log_in(browser, "viewer")

            def overview() -> str | None:
                """The page once it shows this node: its first heartbeat is written by a task of the app's."""
                text = browser.get("/ui").text
                return text if "(this node)" in text else None

            page = wait_until(overview) or ""
    finally:
        console.close()
    assert "<h2>Cluster</h2>" in page
    assert "mx.test (this node)" in page and "mx2.test" in page
    assert '<td class="num">7</td>' in page and "degraded" in page
