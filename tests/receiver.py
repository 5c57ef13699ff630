"""A real HTTP receiver for webhooks and the delivery report: the stdlib's server in a thread on an ephemeral port.

Each POST is recorded, then answered as the next scripted answer says (or `answer` once the
script is used up): "ok" (200, the report's {"ok": true, "rejected": [...]} body), "fail" (500),
"refuse" (400), "hang" (no answer until the receiver stops), "garbage" (bytes that are not HTTP),
"not-json" (200 with a body that is no JSON), "not-ok" (200 with {"ok": false}).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Received:
    def __init__(self, path: str, headers: dict[str, str], body: bytes, answer: str = "ok") -> None:
        self.path = path
        self.headers = headers  # names in lower case
        self.body = body
        self.answer = answer  # what the receiver answered: only "ok" tells the sender it has the events

    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    # A real receiver's backlog, not socketserver's 5: a sender opening eight connections at once
    # would otherwise see SYNs dropped and wait a second to retransmit them.
    request_queue_size = 128


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[str] = []
        self.answer = "ok"
        self.rejected: list[str] = []  # the report's rejected queue ids, in every "ok" answer
        self.delay = 0.0  # seconds each answer takes, as a slow receiver's would
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def bodies(self) -> list[Any]:
        with self._lock:
            return [request.json() for request in self.requests]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    def _next_answer(self) -> str:
        with self._lock:
            return self.script.pop(0) if self.script else self.answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # connections kept open between requests, as real receivers do

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender went away mid-request (killed): nothing was sent
                    self.close_connection = True
                    return
                answer = receiver._next_answer()
                with receiver._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.requests.append(Received(self.path, headers, body, answer))
                if answer == "hang":
                    receiver._released.wait(30)
                    self.close_connection = True
                    return
                if receiver.delay:
                    time.sleep(receiver.delay)
                if answer == "garbage":
                    self.wfile.write(b"\x00\x01 this is no HTTP\r\n\r\n")
                    self.close_connection = True
                    return
                status, text = {
                    "ok": (200, json.dumps({"ok": True, "rejected": receiver.rejected})),
                    "fail": (500, "broken"),
                    "refuse": (400, "no such customer"),
                    "not-json": (200, "<html>fine</html>"),
                    "not-ok": (200, json.dumps({"ok": False})),
                }[answer]
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the sender was killed waiting for the answer
                    self.close_connection = True

        return Handler


def verified(request: Received, secret: str, now: float, tolerance: float = 300) -> bool:
    """What a receiver does with X-Fastmta-Signature: HMAC-SHA256 of "<t>.<body>", and t within the replay window."""
    fields = dict(item.split("=", 1) for item in request.headers["x-fastmta-signature"].split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(now - int(fields["t"])) <= tolerance
