"""fastmta: a high-throughput multiprocess mail transfer agent with a durable LMDB queue."""

__version__ = "0.1.0"
