"""`fastmta status` for a terminal: a node's Overview and its listeners as a few aligned lines."""

from __future__ import annotations

import time

from fastmta.config import Config
from fastmta.overview import Overview


def duration(seconds: float) -> str:
    """The two largest units, as people read an age: 3d 4h, 2h 5m, 4m 10s, 12s."""
    whole = int(seconds)
    parts = [(whole // 86400, "d"), (whole % 86400 // 3600, "h"), (whole % 3600 // 60, "m"), (whole % 60, "s")]
    shown = [f"{amount}{unit}" for amount, unit in parts if amount]
    return " ".join(shown[:2]) or "0s"


def size(amount: float) -> str:
    """Bytes as people read them: 512 B, 3.2 MiB, 1.0 GiB."""
    for unit in ("B", "KiB", "MiB"):
        if amount < 1024:
            return f"{amount:.0f} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def store_use(overview: Overview) -> str:
    if overview.store_used_bytes is None or not overview.store_size_bytes:
        return "unreadable"
    share = overview.store_used_bytes / overview.store_size_bytes
    return f"{size(overview.store_used_bytes)} of {size(overview.store_size_bytes)} used ({share:.1%}, queue_max_bytes)"


def listeners(config: Config) -> list[str]:
    smtp = config.smtp
    found = [f"smtp {a}" for a in smtp.listen] + [f"submission {a}" for a in smtp.submission_listen]
    found += [f"smtps {a}" for a in smtp.smtps_listen]
    if config.admin.enabled:
        found.append(f"admin http://{config.admin.listen}")
    return found


def render(config: Config, overview: Overview, now: float | None = None) -> str:
    now = time.time() if now is None else now
    health = "healthy" if overview.healthy else "UNHEALTHY: " + "; ".join(overview.reasons)
    workers = [
        f"{child.name} (pid {child.pid}, up {duration(now - child.started_at)})" if child.alive else f"{child.name} DEAD"
        for child in overview.children
    ]
    if overview.queue_depth is None:
        queue = "unreadable"
    elif overview.oldest_message_age_seconds is None:
        queue = "empty"
    else:
        queue = f"{overview.queue_depth} messages, oldest waiting {duration(overview.oldest_message_age_seconds)}"
    lags = ", ".join(f"{sink} {lag:.1f}s" for sink, lag in sorted(overview.events_lag_seconds.items()))
    rows = [
        ("node", f"{config.server.hostname}: {health}"),
        ("listeners", ", ".join(listeners(config)) or "none"),
        ("workers", f"{overview.smtp_workers_alive} SMTP alive; " + (", ".join(workers) or "none running")),
        ("queue", queue),
        ("delivery", "SUSPENDED" if overview.delivery_suspended else "active"),
        ("smtp", "MAINTENANCE: new connections refused" if overview.maintenance else "accepting"),
        ("events lag", lags or "no sinks"),
        ("disk", f"{overview.disk_free_percent:.1f}% free in {config.data_dir}"),
        ("store", store_use(overview)),
    ]
    return "".join(f"{label:<11} {value}\n" for label, value in rows)
