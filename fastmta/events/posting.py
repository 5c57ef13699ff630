"""Posting JSON to receivers (webhooks, the delivery report): kept-open connections with bounded waits, and signatures.

A request made with a secret carries `X-Fastmta-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>">`, as Stripe signs its webhooks: the receiver checks who sent the body, and from t,
that it is recent (a captured request replayed later fails that check).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ssl
import threading
import time
from typing import NamedTuple
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

SIGNATURE_HEADER = "X-Fastmta-Signature"
EVENT_ID_HEADER = "X-Fastmta-Event-Id"
# Of an answer only its status and a short body are used (the report's list of rejected ids at most).
_MAX_ANSWER_BYTES = 1 << 20
_SUMMARY_CHARACTERS = 200


class Unreachable(Exception):
    """No answer: the connection failed or the receiver took longer than the timeout."""


class Answer(NamedTuple):
    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def transient(self) -> bool:
        """A failure worth retrying: the receiver is busy or broken, not refusing this request."""
        return self.status in (408, 429) or self.status >= 500

    def summary(self) -> str:
        text = self.body[:_SUMMARY_CHARACTERS].decode("utf-8", "replace")
        printable = "".join(character if character.isprintable() else " " for character in text).strip()
        return f"HTTP {self.status}" + (f": {printable}" if printable else "")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode(), hashlib.sha256)
    mac.update(body)  # the body itself, not a copy of it behind the prefix (300 KB for a batch of 500)
    return f"t={timestamp},v1={mac.hexdigest()}"


_Receiver = tuple[str, str, int | None]  # scheme, host, port


class _Proxy(NamedTuple):
    host: str
    port: int
    authorization: dict[str, str]  # Proxy-Authorization, when the proxy's address carries credentials


class Poster:
    """Sync, for the events runner's worker threads; each thread keeps its connection to each receiver open.

    The standard library's client, not a richer one: a request costs a fifth of httpx's CPU (175 µs
    against 960 for a 50 KB batch here), and the events process's CPU is taken from ingress. Redirects
    are answers (the configured url is the receiver). A proxy named in the environment (http_proxy,
    https_proxy, no_proxy, as curl reads them) is used: https through a CONNECT tunnel, so the
    receiver's certificate is still checked for its name.
    """

    def __init__(self, connect_timeout: float, timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._tls = ssl.create_default_context()
        self._local = threading.local()
        self._opened: list[http.client.HTTPConnection] = []  # every thread's, for close()
        self._opened_lock = threading.Lock()
        self._proxies = getproxies()

    def post(self, url: str, body: bytes, secret: str = "", headers: dict[str, str] | None = None) -> Answer:
        parts = urlsplit(url)
        host = parts.hostname or ""
        proxy = self._proxy(parts.scheme, host)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {"Content-Type": "application/json", "User-Agent": "fastmta", **(headers or {})}
        if proxy is not None and parts.scheme == "http":  # a plain proxy is asked for the whole URL
            target = parts._replace(fragment="").geturl()
            sent.update(proxy.authorization)
        if secret:
            sent[SIGNATURE_HEADER] = signature(secret, int(time.time()), body)
        deadline = time.monotonic() + self.timeout
        connection = self._connection(parts.scheme, host, parts.port, proxy)
        try:
            reused = connection.sock is not None
            if not reused:
                self._connect(connection)
            try:
                return self._exchange(connection, target, body, sent, deadline)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # The receiver closed the kept-open connection while it was idle: once more on a new one.
                connection.close()
                self._connect(connection)
                return self._exchange(connection, target, body, sent, deadline)
        except TimeoutError:
            connection.close()
            raise Unreachable(f"Timeout: no whole answer within {self.timeout:g} s") from None
        except http.client.HTTPException as exc:
            connection.close()
            raise Unreachable(f"Protocol error: {type(exc).__name__}: {exc}".rstrip(": ")) from None
        except OSError as exc:
            connection.close()
            raise Unreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None

    def close(self) -> None:
        with self._opened_lock:
            for connection in self._opened:
                connection.close()
            self._opened.clear()

    def _proxy(self, scheme: str, host: str) -> _Proxy | None:
        address = self._proxies.get(scheme)
        if not address or proxy_bypass(host):
            return None
        parts = urlsplit(address if "://" in address else f"http://{address}")
        authorization = {}
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            authorization["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        return _Proxy(parts.hostname or "", parts.port or 80, authorization)

    def _connection(self, scheme: str, host: str, port: int | None, proxy: _Proxy | None) -> http.client.HTTPConnection:
        """This thread's connection to the receiver: open from an earlier request, or to be connected."""
        connections: dict[_Receiver, http.client.HTTPConnection] = self._local.__dict__.setdefault("by_receiver", {})
        connection = connections.get((scheme, host, port))
        if connection is None:
            to_host, to_port = (proxy.host, proxy.port) if proxy is not None else (host, port)
            if scheme == "https":
                connection = http.client.HTTPSConnection(to_host, to_port, timeout=self.connect_timeout, context=self._tls)
                if proxy is not None:
                    connection.set_tunnel(host, port, proxy.authorization)
            else:
                connection = http.client.HTTPConnection(to_host, to_port, timeout=self.connect_timeout)
            connections[(scheme, host, port)] = connection
            with self._opened_lock:
                self._opened.append(connection)
        return connection

    def _connect(self, connection: http.client.HTTPConnection) -> None:
        connection.connect()  # within connect_timeout, TLS handshake included
        connection.sock.settimeout(self.timeout)  # then each wait for the receiver

    def _exchange(
        self, connection: http.client.HTTPConnection, target: str, body: bytes, headers: dict[str, str], deadline: float
    ) -> Answer:
        connection.request("POST", target, body, headers)
        response = connection.getresponse()
        kept = bytearray()
        while chunk := response.read1(_MAX_ANSWER_BYTES - len(kept)):
            kept += chunk
            if time.monotonic() > deadline:
                raise TimeoutError
            if len(kept) >= _MAX_ANSWER_BYTES:
                connection.close()  # the rest is not read, so the connection cannot carry another request
                break
        response.close()  # read whole (or its connection closed): the connection can carry the next request
        if response.will_close:
            connection.close()
        return Answer(response.status, bytes(kept))
