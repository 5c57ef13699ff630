"""GET /openapi.json and GET /docs: the API described, readable without any network access."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from functools import cache
from importlib import metadata
from typing import Any

from starlette.responses import HTMLResponse, Response

from fastmta.admin import openapi
from fastmta.admin.endpoint import Call, Endpoint, json_response


def endpoints(described: list[Endpoint]) -> list[Endpoint]:
    """The two documentation endpoints, describing `described` and themselves."""

    @cache
    def spec() -> dict[str, Any]:
        return openapi.document(described + own, metadata.version("fastmta"))

    @cache
    def page() -> str:
        return render(spec())

    async def spec_handler(call: Call) -> Response:
        return json_response(spec())

    async def page_handler(call: Call) -> Response:
        return HTMLResponse(page(), headers={"Content-Security-Policy": _PAGE_POLICY})

    own = [
        Endpoint("GET", "/openapi.json", "This API as OpenAPI 3.1", spec_handler, "docs", role=None, media_type="application/json"),
        Endpoint("GET", "/docs", "This API as a web page", page_handler, "docs", role=None, media_type="text/html"),
    ]
    return own


_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2.5rem} .op{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}
.m{font-weight:bold;display:inline-block;min-width:4.5rem} code,pre{background:#f5f5f5;border-radius:4px}
pre{padding:.6rem;overflow:auto;font-size:13px} table{border-collapse:collapse} td,th{padding:.2rem .8rem;text-align:left;border-bottom:1px solid #eee}
"""
# The page's one inline style, allowed by its hash; nothing else may load, run, frame it or be posted from it.
_PAGE_POLICY = (
    f"default-src 'none'; style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def render(spec: dict[str, Any]) -> str:
    """The whole document as one static page: no script, no stylesheet or font from elsewhere."""
    parts = [f"<!doctype html><meta charset=utf-8><title>{html.escape(spec['info']['title'])}</title><style>{_STYLE}</style>"]
    parts.append(f"<h1>{html.escape(spec['info']['title'])} {html.escape(spec['info']['version'])}</h1>")
    parts.append(f"<p>{html.escape(spec['info']['description'])}</p><p>Machine-readable: <a href=/openapi.json>/openapi.json</a></p>")
    by_tag: dict[str, list[str]] = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            by_tag.setdefault(operation["tags"][0], []).append(_operation(method, path, operation))
    for tag, rendered in by_tag.items():
        parts.append(f"<h2>{html.escape(tag)}</h2>" + "".join(rendered))
    parts.append("<h2>Schemas</h2>")
    for name, schema in spec["components"]["schemas"].items():
        parts.append(f"<h3 id='{html.escape(name)}'>{html.escape(name)}</h3><pre>{html.escape(json.dumps(schema, indent=2))}</pre>")
    return "".join(parts)


def _operation(method: str, path: str, operation: dict[str, Any]) -> str:
    out = [f"<div class=op><p><span class=m>{method.upper()}</span><code>{html.escape(path)}</code> — {html.escape(operation['summary'])}</p>"]
    out.append(f"<p>{html.escape(operation['description'])}</p>")
    if operation.get("parameters"):
        rows = "".join(
            f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p['in']}</td><td>{'required' if p['required'] else ''}</td>"
            f"<td><code>{html.escape(json.dumps(p['schema']))}</code></td></tr>"
            for p in operation["parameters"]
        )
        out.append(f"<table><tr><th>parameter</th><th>in</th><th></th><th>schema</th></tr>{rows}</table>")
    if "requestBody" in operation:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        out.append(f"<p>Body: <code>{html.escape(json.dumps(schema))}</code></p>")
    statuses = ", ".join(f"{status} {html.escape(r['description'])}" for status, r in operation["responses"].items())
    out.append(f"<p>Responses: {statuses}</p></div>")
    return "".join(out)
