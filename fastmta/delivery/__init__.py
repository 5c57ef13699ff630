"""Delivery: runners that lease due messages, route them, send them, and settle what happened."""
