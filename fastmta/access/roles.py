"""Who may do what: viewer reads, operator also manages the queue and delivery, admin also users and tokens."""

from __future__ import annotations

import enum
from typing import Literal

RoleName = Literal["viewer", "operator", "admin"]


class Role(enum.IntEnum):
    viewer = 1
    operator = 2
    admin = 3

    @classmethod
    def named(cls, name: str) -> Role:
        return cls[name]
