"""Who may relay where: mynetworks and authenticated clients anywhere, anyone to relay_domains."""

from __future__ import annotations

from collections.abc import Iterable

from fastmta.networks import Networks


class RelayPolicy:
    def __init__(self, mynetworks: Iterable[str], relay_domains: Iterable[str]) -> None:
        self._networks = Networks(mynetworks)
        exact = {d.lower().lstrip("*.") for d in relay_domains if not d.startswith(("*.", "."))}
        wildcard = {d.lower().lstrip("*.") for d in relay_domains if d.startswith(("*.", "."))}
        self._exact = frozenset(exact)
        self._suffixes = tuple("." + d for d in wildcard)

    def trusted(self, ip: str) -> bool:
        return ip in self._networks

    def accepts_domain(self, domain: str) -> bool:
        domain = domain.lower()
        return domain in self._exact or (bool(self._suffixes) and domain.endswith(self._suffixes))
