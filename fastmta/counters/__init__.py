"""Counters shared by a node's processes (state.lmdb) or by the nodes of a cluster (Redis, [cluster] redis_url).

interface: what every store offers · redis_counters: the Redis store · failover: Redis with
state.lmdb while Redis is unreachable · configured: the one a process opens. fastmta.ratelimit is
the state.lmdb store.
"""

