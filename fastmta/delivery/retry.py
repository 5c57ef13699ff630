"""When to try again, and when to give up: pure functions of the attempt count and the clock."""

from __future__ import annotations

import random


def next_attempt(attempts: int, schedule: list[float], now: float, jitter: random.Random | None = None) -> float:
    """After the n-th failed attempt wait schedule[n-1] (the last step repeats), give or take 10%.

    The jitter keeps the mail deferred by one outage from all coming back in the same second.
    """
    step = schedule[min(max(attempts, 1), len(schedule)) - 1]
    spread = (jitter or random).uniform(0.9, 1.1)
    return now + step * spread


def expired(received_at: float, max_age: float, now: float) -> bool:
    return now - received_at >= max_age
