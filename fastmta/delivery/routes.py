"""Which route a recipient domain takes: the first [[routes]] entry whose match list covers it."""

from __future__ import annotations

from fastmta.config import RouteConfig


def matches(pattern: str, domain: str) -> bool:
    """'*' matches everything, '*.example.org' (or '.example.org') its subdomains, anything else itself."""
    pattern = pattern.lower()
    if pattern == "*":
        return True
    if pattern.startswith(("*.", ".")):
        return domain.endswith("." + pattern.lstrip("*."))
    return domain == pattern


class Router:
    def __init__(self, routes: list[RouteConfig]) -> None:
        self.routes = routes

    def route_for(self, domain: str) -> tuple[int, RouteConfig] | None:
        domain = domain.lower().rstrip(".")
        for index, route in enumerate(self.routes):
            if any(matches(pattern, domain) for pattern in route.match):
                return index, route
        return None
