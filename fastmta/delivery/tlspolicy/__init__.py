"""Outbound TLS policy: which certificate a next hop must show, by MTA-STS (RFC 8461) or DANE (RFC 7672)."""
