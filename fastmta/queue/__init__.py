"""The durable queue in queue.lmdb: records, store, group commit and schedule."""
