"""What every admin request may not exceed and every response carries: the body size limit and the security headers.

One ASGI middleware around every route, so no endpoint can forget either. A body is refused on its
Content-Length before a byte of it is read, and counted as it arrives when it comes chunked, so a
request never holds more than [admin] max_body_bytes and one chunk.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastmta.admin.endpoint import error_response
from fastmta.admin.errors import PayloadTooLarge

# Added to every response that did not set its own. The answers are data, never a page to render,
# frame or leak a Referer from; /docs, the one page, sets a Content-Security-Policy of its own.
# No Access-Control-* header is ever sent: browsers keep other origins' scripts out of the API.
_DEFAULT_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cache-control", b"no-store"),
]


class Guard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message["headers"] = headers + [(n, v) for n, v in _DEFAULT_HEADERS if n not in present]
            await send(message)

        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(scope, receive, send_with_headers)
            return
        received = 0

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
            return message

        try:
            await self.app(scope, receive_counted, send_with_headers)
        except PayloadTooLarge:
            # Endpoints answer this themselves (endpoint.route); what reaches here was raised by a
            # reader outside them, such as an event stream listening for the client to leave.
            if not started:
                await self._refuse(scope, receive, send_with_headers)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is larger than {self.max_body_bytes} bytes, [admin] max_body_bytes")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(self._too_large(), Request(scope))(scope, receive, send)
