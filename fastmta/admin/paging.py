"""Paged lists: a page's X-Total-Count and RFC 8288 Link headers, each link keeping the request's other parameters."""

from __future__ import annotations

from starlette.requests import Request


def headers(request: Request, total: int, limit: int, offset: int) -> dict[str, str]:
    offsets = {"first": 0}
    if offset + limit < total:
        offsets["next"] = offset + limit
    if offset > 0:
        offsets["prev"] = max(0, offset - limit)
    links = (f'<{request.url.include_query_params(limit=limit, offset=at)}>; rel="{rel}"' for rel, at in offsets.items())
    return {"X-Total-Count": str(total), "Link": ", ".join(links)}
