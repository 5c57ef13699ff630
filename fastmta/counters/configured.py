"""The counters a process opens: state.lmdb alone, or Redis before it when [cluster] redis_url is set."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastmta import metrics
from fastmta.config import Config, ConfigError
from fastmta.ratelimit import RateLimiter

if TYPE_CHECKING:
    from fastmta.counters.failover import FailoverCounters


def opened(config: Config, name: str) -> RateLimiter | FailoverCounters:
    """This process's counters; `name` is the process's (smtp-0, delivery-1, admin) in logs and in fastmta_cluster_degraded."""
    return shared(config, name) or RateLimiter(config.data_dir / "state.lmdb")


def shared(config: Config, name: str) -> FailoverCounters | None:
    """The cluster's counters, switches and heartbeats, state.lmdb behind them; None without [cluster] redis_url.

    The Redis client is imported only for a cluster: it is an optional dependency (fastmta[cluster]).
    """
    cluster = config.cluster
    if not cluster.redis_url:
        return None
    local = RateLimiter(config.data_dir / "state.lmdb")
    try:
        from fastmta.counters.failover import FailoverCounters
        from fastmta.counters.redis_counters import RedisCounters, client
    except ImportError:
        local.close()
        raise ConfigError("cluster.redis_url: needs the Redis client: pip install 'fastmta[cluster]'") from None
    shared = RedisCounters(client(cluster.redis_url, cluster.redis_timeout), cluster.key_prefix, config.server.node_id)

    def changed(degraded: bool) -> None:
        if config.server.metrics:
            metrics.cluster_degraded(name, degraded)

    changed(False)
    return FailoverCounters(shared, local, name, changed)
