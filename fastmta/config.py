"""The configuration: msgspec Structs for the TOML file, environment overrides, validated once at start."""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import ipaddress
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from fastmta.events.names import EVENT_TYPES, REPORTED_TYPES, WEBHOOK_EVENTS, webhook_types


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(text: str) -> float:
    """'90s', '5m', '4h', '5d' -> seconds."""
    found = _DURATION.match(text)
    if not found:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 4h, 5d)")
    return float(found.group(1)) * _DURATION_UNITS[found.group(2)]


def format_duration(seconds: float) -> str:
    """The largest unit that writes `seconds` exactly: 300 -> '5m', 90 -> '90s', 0.25 -> '250ms'."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms" if seconds else "0s"


def parse_rate(text: str) -> float:
    """'100/s', '600/m', '1000/h' -> events per second; '' means unlimited (0)."""
    if not text:
        return 0.0
    count, _, unit = text.partition("/")
    per = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}.get(unit.strip())
    try:
        value = float(count)
    except ValueError:
        value = -1.0
    if per is None or value <= 0:
        raise ValueError(f"not a rate: {text!r} (use e.g. 100/s, 600/m, 1000/h)")
    return value / per


def parse_hostport(text: str, default_port: int = 25) -> tuple[str, int]:
    """'127.0.0.1:2525', '[::1]:25', 'mx.example.com' -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, number


class Duration(float):
    """Seconds, written as '90s', '5m', '4h', '5d' (or a number of seconds); parsed once, when the config is read."""


class Rate(float):
    """Events per second, written as '100/s', '600/m', '1000/h'; '' means unlimited (0)."""


def _decode(kind: type, value: Any) -> Any:
    """msgspec's hook for the types above: a ValueError becomes an error naming the key."""
    if kind is Duration:
        return Duration(value if isinstance(value, (int, float)) else parse_duration(str(value)))
    if kind is Rate:
        return Rate(parse_rate(str(value)))
    raise NotImplementedError(kind)


def _encode(value: Any) -> Any:
    if isinstance(value, Duration):
        return format_duration(value)
    if isinstance(value, Rate):
        return f"{value:g}/s" if value else ""
    raise NotImplementedError(type(value))


def _seconds(text: str) -> Duration:
    return Duration(parse_duration(text))


Positive = Annotated[int, msgspec.Meta(gt=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


# Checks of string values, for __post_init__: msgspec reports what they raise at the section, and
# _readable puts the key in front. Strings stay plain str, so they encode anywhere they go.
def _check_addresses(key: str, values: list[str]) -> None:
    for index, value in enumerate(values):
        _check_address(f"{key}[{index}]", value)


def _check_address(key: str, value: str) -> None:
    try:
        parse_hostport(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _check_networks(key: str, values: list[str]) -> None:
    for index, value in enumerate(values):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{key}[{index}]: not a network: {value!r}") from None


def _check_http_url(key: str, value: str) -> None:
    scheme, _, rest = value.partition("://")
    if scheme not in ("http", "https") or not rest.split("/", 1)[0]:
        raise ValueError(f"{key}: not an http:// or https:// URL: {value!r}")


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section):
    hostname: str = ""
    # Names this node in events, in its queue ids (queue.records.node_tag), in the fastmta_node_info metric
    # and in the cluster's heartbeats; the hostname by default.
    node_id: str = ""
    data_dir: str = "./var"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    shutdown_grace_seconds: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    # LMDB reserves address space, not disk: the store can grow to this many bytes.
    queue_max_bytes: int = 8 << 30
    # Workers and runners write Prometheus metrics for /metrics and /stats; false stops that
    # (to measure what it costs, or where nobody reads them).
    metrics: bool = True


class SmtpConfig(_Section):
    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:2525"])
    submission_listen: list[str] = msgspec.field(default_factory=list)
    smtps_listen: list[str] = msgspec.field(default_factory=list)
    workers: NonNegative = 0
    max_message_size: Positive = 25 << 20
    max_recipients: Positive = 1000
    max_connections: Positive = 1000
    max_connections_per_ip: Positive = 50
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    # RFC 5321 §4.5.3.1.4: a command line of 512 octets must be accepted.
    max_line_length: Annotated[int, msgspec.Meta(ge=512)] = 2048
    max_errors: Positive = 20
    mynetworks: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    relay_domains: list[str] = msgspec.field(default_factory=list)
    require_auth: bool = False
    require_tls_for_auth: bool = True
    tls_cert: str = ""
    tls_key: str = ""
    proxy_protocol: bool = False
    # Peers allowed to send a PROXY header on a proxy_protocol listener; any other peer is refused.
    proxy_trusted: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    bare_line_endings: Literal["reject", "accept"] = "reject"
    # As Postfix's header_size_limit; one header line may hold at most 998 octets (RFC 5322).
    max_header_size: Annotated[int, msgspec.Meta(ge=1024)] = 102400
    # timeout_seconds bounds each command line however slowly it trickles in; DATA also gets one
    # second per min_data_rate bytes (as Postfix's smtpd_min_data_rate); a session ends after
    # max_session_seconds whatever it does.
    min_data_rate: Annotated[int, msgspec.Meta(ge=0)] = 500
    max_session_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0

    def __post_init__(self) -> None:
        for key in ("listen", "submission_listen", "smtps_listen"):
            _check_addresses(key, getattr(self, key))
        for key in ("mynetworks", "proxy_trusted"):
            _check_networks(key, getattr(self, key))


class LimitsConfig(_Section):
    """Per client IP, shared by all workers; 0 means no limit."""

    connections_per_minute: NonNegative = 0
    messages_per_hour: NonNegative = 0
    recipients_per_hour: NonNegative = 0
    auth_failures_per_hour: NonNegative = 0
    # As Postfix's smtpd_client_event_limit_exceptions = $mynetworks: the per-IP limits (these and
    # smtp.max_connections_per_ip) are for strangers, not for the hosts we relay for.
    exempt_mynetworks: bool = True


class DeliveryConfig(_Section):
    # Runner processes; 0 = ingress only, mail stays queued.
    workers: NonNegative = 1
    retry_schedule: Annotated[list[Duration], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [_seconds(step) for step in ("1m", "5m", "15m", "1h", "4h")]
    )
    max_age: Duration = _seconds("5d")
    # As Postfix's delay_warning_time: a sender who asked for NOTIFY=DELAY hears of mail still
    # deferred this long after it arrived ("0s": never).
    delay_warning: Duration = _seconds("4h")
    bounce_from: str = ""
    # As Postfix's bounce_size_limit: a bounce returns the original (RET=FULL) up to this many bytes,
    # past it only the original's headers, as many whole lines as fit.
    bounce_size_limit: Annotated[int, msgspec.Meta(gt=0)] = 50000
    # How many messages a runner claims at once, and for how long before another runner may retry them.
    batch_size: Positive = 100
    lease_time: Duration = _seconds("10m")
    # Messages one runner sends at the same time, across all destinations.
    concurrency: Positive = 200
    connect_timeout: Duration = _seconds("30s")
    command_timeout: Duration = _seconds("5m")
    # "host" or "host:port"; empty means the system resolver (/etc/resolv.conf).
    dns_servers: list[str] = msgspec.field(default_factory=list)
    # data_dir/delivery.log starts again as delivery.log.1 (… .<log_keep>, the oldest dropped) once it
    # reaches log_max_bytes (0: no limit), and at local midnight when log_daily is on.
    log_max_bytes: NonNegative = 100 << 20
    log_daily: bool = False
    log_keep: NonNegative = 7

    def __post_init__(self) -> None:
        _check_addresses("dns_servers", self.dns_servers)


# Route kinds that store each copy here or in S3 instead of sending it on (fastmta/stores/).
STORE_KINDS = ("maildir", "mbox", "eml-tree", "sqlite", "s3")
# Of those, the ones that keep each message in a file or object of its own, which [store] keys can seal.
SEALABLE_KINDS = ("maildir", "eml-tree", "s3")


class RouteConfig(_Section):
    match: Annotated[list[str], msgspec.Meta(min_length=1)]
    kind: Literal["mx", "smarthost", "discard", "maildir", "mbox", "eml-tree", "sqlite", "s3"]
    host: str = ""
    port: Port = 25
    # "dane" and "mta-sts" require that policy for every host the route uses (README, "Outbound TLS policy").
    tls: Literal["none", "opportunistic", "required", "dane", "mta-sts"] = "opportunistic"
    username: str = ""
    password: str = ""
    max_connections: Positive = 10
    max_messages_per_connection: Positive = 100
    rate: Rate = Rate(0)
    source_ips: list[str] = msgspec.field(default_factory=list)
    # maildir, mbox, eml-tree: a directory; sqlite: the database file.
    path: str = ""
    # s3 (SMTP_S3_*): the bucket, its region and, for an S3-compatible store, its URL; without keys,
    # boto3's own sources of credentials (AWS_* variables, ~/.aws, an instance role).
    bucket: str = ""
    region: str = ""
    endpoint_url: str = ""
    access_key: str = ""
    secret_key: str = ""
    # maildir, eml-tree, s3: each copy sealed with [store] active_key (AES-256-GCM).
    encrypt: bool = False

    def __post_init__(self) -> None:
        for index, value in enumerate(self.source_ips):
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"source_ips[{index}]: not an IP address: {value!r}") from None
        if self.endpoint_url:
            _check_http_url("endpoint_url", self.endpoint_url)


class AdminConfig(_Section):
    # The HTTP API and /metrics; without it the workers still record metrics, nobody serves them.
    enabled: bool = True
    listen: str = "127.0.0.1:8080"
    basic_auth: bool = True
    # Clients of the event streams (/api/v1/stats/realtime, /api/v1/events/stream) at once; the next one gets 503.
    max_stream_clients: Positive = 64
    # A request body larger than this gets 413 before it is read (Content-Length) or while it is (chunked).
    max_body_bytes: Positive = 1 << 20

    def __post_init__(self) -> None:
        _check_address("listen", self.listen)


class HistoryConfig(_Section):
    # On, every queue change writes its events to the outbox and the events process feeds history.
    # Off by default: on this project's 2-CPU reference machine history costs 15% of 1 KiB ingress
    # and about 22% of relaying (README, "Events and history"), past the 5% a feature may cost unasked.
    enabled: bool = False
    # Empty: SQLite at data_dir/history.db; otherwise an SQLAlchemy URL such as "postgresql://user@host/db",
    # which nodes of a cluster share.
    url: str = ""
    # Settled messages and their events are kept this long; the bodies of settled mail (in
    # data_dir/kept.db, for GET /api/v1/messages/{id}) for keep_bodies ("0s": none).
    keep: Duration = _seconds("30d")
    keep_bodies: Duration = _seconds("7d")

    def __post_init__(self) -> None:
        # The history sink writes with the SQLite and PostgreSQL dialects of SQLAlchemy, no other.
        scheme = self.url.partition("://")[0].partition("+")[0]
        if self.url and scheme not in ("sqlite", "postgresql"):
            raise ValueError(f"url: not an sqlite:// or postgresql:// URL: {self.url!r}")


class ClusterConfig(_Section):
    # Empty: every limit and switch is this node's own (state.lmdb, queue.lmdb). "redis://host:port/db"
    # (or rediss://, unix://): per-IP limits, daily quotas, per-destination limits, the delivery switch
    # and the node heartbeats are shared by every node pointed at it.
    redis_url: str = ""
    # A command that takes longer counts as Redis unreachable: the node falls back to its local limits.
    redis_timeout: Duration = _seconds("250ms")
    # Every key this cluster writes starts with it, so several clusters can share one Redis.
    key_prefix: str = "fastmta:"
    # A node whose heartbeat is older than this is no longer listed (its key expires).
    heartbeat_ttl: Duration = _seconds("30s")

    def __post_init__(self) -> None:
        scheme = self.redis_url.partition("://")[0]
        if self.redis_url and scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"redis_url: not a redis://, rediss:// or unix:// URL: {self.redis_url!r}")
        if self.redis_timeout <= 0:
            raise ValueError("redis_timeout: must be more than 0s")


class WebhookConfig(_Section):
    url: str
    # The events it is sent (message.received, message.sent, ...); empty or ["*"]: every event.
    events: list[str] = msgspec.field(default_factory=list)
    # Signs every request (X-Fastmta-Signature, HMAC-SHA256); empty: requests go unsigned.
    secret: str = ""
    # Events per request: 1 posts each event as a JSON object, more post a JSON array of up to this many.
    batch: Annotated[int, msgspec.Meta(ge=1, le=500)] = 1
    # Requests under way at once: one at a time, a receiver's round trip bounds the events per second.
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    # Names its outbox cursor and its dead letters (webhook:<name>), so it may change url and keep
    # its place; by default a digest of url names it.
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{0,64}$")] = ""

    def __post_init__(self) -> None:
        _check_http_url("url", self.url)
        for index, event in enumerate(self.events):
            if event != "*" and event not in WEBHOOK_EVENTS:
                raise ValueError(f"events[{index}]: no such event: {event!r} (one of {', '.join(WEBHOOK_EVENTS)}, or *)")

    @property
    def sink_name(self) -> str:
        """Its cursor's name: stable across restarts and reorderings of the list."""
        return f"webhook:{self.name or hashlib.sha256(self.url.encode()).hexdigest()[:12]}"

    def wants(self, event: str) -> bool:
        return not self.events or "*" in self.events or event in self.events


class EventsConfig(_Section):
    """What the events process sends out besides history: webhooks and the delivery report."""

    webhooks: list[WebhookConfig] = msgspec.field(default_factory=list)
    # A receiver that keeps failing (network, timeout, 408, 429, 5xx) is retried this long; then the
    # events it did not take go to the dead letters and the next ones are tried.
    retry_for: Duration = _seconds("8h")
    # The pause between retries doubles from 1 s up to this.
    max_pause: Duration = _seconds("10m")
    connect_timeout: Duration = _seconds("5s")
    # How long a receiver may take to answer a request.
    timeout: Duration = _seconds("10s")
    # The delivery report: outcomes of delivery attempts, posted in batches of report_batch.
    report_url: str = ""
    report_secret: str = ""
    report_batch: Positive = 500
    # Entries the receiver keeps rejecting go to the dead letters after this many attempts.
    report_max_attempts: Positive = 10

    def __post_init__(self) -> None:
        for key in ("max_pause", "connect_timeout", "timeout"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be more than 0s")
        if self.report_url:
            _check_http_url("report_url", self.report_url)
        seen: dict[str, int] = {}
        for index, hook in enumerate(self.webhooks):
            if hook.sink_name in seen:
                first = seen[hook.sink_name]
                raise ValueError(f"webhooks[{index}]: the same name as webhooks[{first}] ({hook.sink_name}); name them apart")
            seen[hook.sink_name] = index


# A domain or a DKIM selector: dot-separated LDH labels (RFC 6376 3.1), in A-labels.
_DNS_NAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")
# RFC 5322 field names: printable ASCII but the colon.
_FIELD_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")


class DkimKeyConfig(_Section):
    domain: str
    selector: str
    # Empty: data_dir/dkim/<domain>/<selector>.key, where `fastmta dkim keygen` writes it.
    key_file: str = ""
    # Set: this key signs the domain's mail whose X-Workspace-ID is this, instead of the domain's key.
    workspace: str = ""
    # false: kept listed (and published in DNS) while a rotation retires it, no longer signing. One key of
    # each algorithm (RSA, Ed25519) signs a domain's mail, or a workspace's.
    signing: bool = True

    def __post_init__(self) -> None:
        self.domain = self.domain.lower().rstrip(".")
        for key in ("domain", "selector"):
            if not _DNS_NAME.match(getattr(self, key)):
                raise ValueError(f"{key}: not a DNS name in A-labels: {getattr(self, key)!r}")


def _default_signed_headers() -> list[str]:
    # RFC 6376 5.4.1's list as Gmail's and Microsoft's sender guidelines read it, with what RFC 8058
    # one-click unsubscribe requires signed (List-Unsubscribe, List-Unsubscribe-Post).
    return [
        "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references",
        "mime-version", "content-type", "content-transfer-encoding", "list-id", "list-unsubscribe",
        "list-unsubscribe-post", "feedback-id",
    ]


class DkimConfig(_Section):
    """Outbound DKIM signing: the keys, and which header fields a signature covers."""

    keys: list[DkimKeyConfig] = msgspec.field(default_factory=list)
    # Each present instance is signed; From once more than present (oversigned), so none can be added.
    headers: list[str] = msgspec.field(default_factory=_default_signed_headers)

    def __post_init__(self) -> None:
        self.headers = [name.lower() for name in self.headers]
        for index, name in enumerate(self.headers):
            if not _FIELD_NAME.match(name):
                raise ValueError(f"headers[{index}]: not a header field name: {name!r}")
        if "from" not in self.headers:
            raise ValueError("headers: must include from (RFC 6376 5.4)")
        if "dkim-signature" in self.headers:
            # Each of a message's signatures is made over the message without the others.
            raise ValueError("headers: dkim-signature cannot be signed")
        # Two signing keys of one algorithm for the same mail are found when the key files are read (dkim/keys.py).
        seen: dict[tuple[str, str, str], int] = {}
        for index, key in enumerate(self.keys):
            where = (key.domain, key.selector, key.workspace)
            if where in seen:
                raise ValueError(f"keys[{index}]: the same domain, selector and workspace as keys[{seen[where]}]")
            seen[where] = index


class StoreConfig(_Section):
    """Keys that seal what routes with encrypt = true store: AES-256, 32 bytes each, base64."""

    # By key id (also FASTMTA_STORE_KEY_<ID>); every key listed opens the copies it sealed.
    keys: dict[Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]{1,64}$")], str] = msgspec.field(default_factory=dict)
    # The key new copies are sealed with; rotating: add a key, make it active, keep the old one.
    active_key: str = ""

    def __post_init__(self) -> None:
        for key_id, value in self.keys.items():
            try:
                key = base64.b64decode(value, validate=True)
            except binascii.Error:
                key = b""
            if len(key) != 32:
                raise ValueError(f"keys[{key_id}]: not 32 bytes in base64 (make one with: head -c 32 /dev/urandom | base64)")
        if self.active_key and self.active_key not in self.keys:
            variable = f"FASTMTA_STORE_KEY_{self.active_key.upper()}"
            raise ValueError(f"active_key: no key {self.active_key!r} in store.keys (or {variable})")


class TlsPolicyConfig(_Section):
    """Recipient domains' own TLS policies for outbound mail: MTA-STS (RFC 8461) and DANE (RFC 7672)."""

    # Opportunistic MX routes fetch, cache and honour the MTA-STS policy a recipient domain publishes.
    mta_sts: bool = True
    # The DNSSEC-validating resolver ("host" or "host:port") whose AD bit DANE trusts, and nothing
    # else's; empty: no DANE. It should run on this host: the AD bit is only as safe as the path to it.
    dnssec_resolver: str = ""
    # CA certificates (PEM) for MTA-STS: the policy's HTTPS host and the MX hosts are verified
    # against them; empty: the system's bundle.
    ca_file: str = ""
    # The policy fetch gives up after this long (RFC 8461 §3.3 asks for a short timeout).
    fetch_timeout: Duration = _seconds("10s")

    def __post_init__(self) -> None:
        if self.dnssec_resolver:
            _check_address("dnssec_resolver", self.dnssec_resolver)
        if self.fetch_timeout <= 0:
            raise ValueError("fetch_timeout: must be more than 0s")


class ScanConfig(_Section):
    """Content scanning after DATA, before the 250: SpamAssassin (spamd) and ClamAV (clamd)."""

    spamassassin: bool = False
    spamassassin_host: str = "127.0.0.1"
    spamassassin_port: Port = 783
    # What spam becomes: refused with 550 5.7.1, queued with X-Spam-* headers, or queued held
    # (quarantined: `fastmta queue release` sends it). Every message spamd scanned gets the headers.
    spam_action: Literal["reject", "tag", "hold"] = "tag"
    # As spamc's --max-size: larger messages are not given to spamd (its time grows with size).
    spam_max_size: Positive = 512000
    clamav: bool = False
    clamav_host: str = "127.0.0.1"
    clamav_port: Port = 3310
    # A virus is never queued to be sent: refused with 550 5.7.1, or queued held.
    virus_action: Literal["reject", "hold"] = "reject"
    # A scanner that is down, too slow or at max_concurrent: the client hears 451 4.7.1 and tries
    # again later ("tempfail"), or the message is queued unscanned by it ("accept").
    unavailable: Literal["tempfail", "accept"] = "tempfail"
    connect_timeout: Duration = _seconds("2s")
    # The whole exchange with a scanner, connect to verdict.
    timeout: Duration = _seconds("30s")
    # Messages one SMTP worker has under scan at once; the next is treated as `unavailable` rather
    # than queued behind them, so a slow scanner cannot hold every connection of a worker.
    max_concurrent: Positive = 16

    def __post_init__(self) -> None:
        for key in ("connect_timeout", "timeout"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be more than 0s")
        for key in ("spamassassin_host", "clamav_host"):
            if not getattr(self, key):
                raise ValueError(f"{key}: a host is needed")

    @property
    def enabled(self) -> bool:
        return self.spamassassin or self.clamav


def _default_routes() -> list[RouteConfig]:
    return [RouteConfig(match=["*"], kind="mx")]


class Config(_Section):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    smtp: SmtpConfig = msgspec.field(default_factory=SmtpConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    delivery: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)
    routes: list[RouteConfig] = msgspec.field(default_factory=_default_routes)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    history: HistoryConfig = msgspec.field(default_factory=HistoryConfig)
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    tls_policy: TlsPolicyConfig = msgspec.field(default_factory=TlsPolicyConfig)
    scan: ScanConfig = msgspec.field(default_factory=ScanConfig)
    dkim: DkimConfig = msgspec.field(default_factory=DkimConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)

    @property
    def events_wanted(self) -> bool:
        """Whether anything reads the outbox: then queue changes write their events and the events process runs."""
        return bool(self.events_read)

    @property
    def events_read(self) -> frozenset[str]:
        """The types of event some sink reads: only those are written. A webhook sent only outcomes of
        delivery, say, costs ingress nothing: no received event is made for each message."""
        if self.history.enabled:
            return EVENT_TYPES
        read = frozenset(REPORTED_TYPES if self.events.report_url else ())
        for hook in self.events.webhooks:
            read |= webhook_types(hook.wants)
        return read

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def smtp_workers(self) -> int:
        return self.smtp.workers or os.cpu_count() or 1


# The container-style variables operators know from other relays; each maps onto one key.
_SHORT_ENV: dict[str, tuple[str, str]] = {
    "SMTP_HOSTNAME": ("server", "hostname"),
    "SMTP_MAX_CONNECTIONS": ("smtp", "max_connections"),
    "SMTP_MAX_MESSAGE_SIZE": ("smtp", "max_message_size"),
    "SMTP_TIMEOUT_SECONDS": ("smtp", "timeout_seconds"),
    "SMTP_TLS_CERT": ("smtp", "tls_cert"),
    "SMTP_TLS_KEY": ("smtp", "tls_key"),
    "SMTP_ENABLE_AUTH": ("smtp", "require_auth"),
    "SMTP_LOG_LEVEL": ("server", "log_level"),
    "SMTP_DATA_DIR": ("server", "data_dir"),
    "SMTP_ENABLE_SPAMASSASSIN": ("scan", "spamassassin"),
    "SMTP_SPAMASSASSIN_HOST": ("scan", "spamassassin_host"),
    "SMTP_SPAMASSASSIN_PORT": ("scan", "spamassassin_port"),
    "SMTP_ENABLE_CLAMAV": ("scan", "clamav"),
    "SMTP_CLAMAV_HOST": ("scan", "clamav_host"),
    "SMTP_CLAMAV_PORT": ("scan", "clamav_port"),
}

# Switches of the build and of the test suite that share the prefix but are not settings.
_NOT_SETTINGS = {"FASTMTA_NO_EXTENSIONS", "FASTMTA_CYTHON_ANNOTATE"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _env_value(name: str, raw: str, current: Any) -> Any:
    if isinstance(current, list):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(current, bool):
        word = raw.strip().lower()
        if word not in _TRUE + _FALSE:
            raise ConfigError(f"{name}: not a yes/no value: {raw!r} (use true or false)")
        return word in _TRUE
    return raw


def _table(data: dict[str, Any], section: str) -> dict[str, Any]:
    """The file's [section], created if absent, for a variable to override a key in."""
    table = data.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{section}: Expected a table, got `{type(table).__name__}`")
    return table


def _first_listener(value: Any) -> str:
    """The (first) address of a listen setting as the file has it, for a variable to change half of."""
    first = value[0] if isinstance(value, list) else value
    if not isinstance(first, str):
        raise ValueError(f"Expected `str`, got `{type(first).__name__}`")
    return first


def _add_webhook(data: dict[str, Any], environ: dict[str, str]) -> None:
    """SMTP_WEBHOOK_URL (with SMTP_WEBHOOK_EVENTS, comma-separated, and SMTP_WEBHOOK_SECRET): one more webhook."""
    hook: dict[str, Any] = {"url": environ["SMTP_WEBHOOK_URL"]}
    if "SMTP_WEBHOOK_EVENTS" in environ:
        hook["events"] = _env_value("SMTP_WEBHOOK_EVENTS", environ["SMTP_WEBHOOK_EVENTS"], [])
    if "SMTP_WEBHOOK_SECRET" in environ:
        hook["secret"] = environ["SMTP_WEBHOOK_SECRET"]
    hooks = _table(data, "events").setdefault("webhooks", [])
    if not isinstance(hooks, list):
        raise ConfigError(f"events.webhooks: Expected an array, got `{type(hooks).__name__}`")
    hooks.append(hook)


_STORE_KEY_ENV = "FASTMTA_STORE_KEY_"
_S3_ENV = {
    "SMTP_S3_BUCKET": "bucket", "SMTP_S3_REGION": "region", "SMTP_S3_ENDPOINT_URL": "endpoint_url",
    "SMTP_S3_ACCESS_KEY": "access_key", "SMTP_S3_SECRET_KEY": "secret_key",
}  # fmt: skip
# Where SMTP_STORAGE_TYPE stores without SMTP_STORAGE_PATH: in data_dir.
_STORAGE_PATHS = {"maildir": "maildir", "mbox": "mbox", "eml-tree": "eml", "sqlite": "stored.db", "s3": ""}


def _apply_storage_env(data: dict[str, Any], environ: dict[str, str]) -> None:
    """SMTP_STORAGE_TYPE and SMTP_STORAGE_PATH make the catch-all route (the last match = ["*"], added
    when there is none) a store of that kind at that path; SMTP_S3_* set the keys of every s3 route."""
    kind, path = environ.get("SMTP_STORAGE_TYPE"), environ.get("SMTP_STORAGE_PATH")
    s3_names = [name for name in _S3_ENV if name in environ]
    if not (kind or path or s3_names):
        return
    routes = data.setdefault("routes", [msgspec.to_builtins(route, enc_hook=_encode) for route in _default_routes()])
    if not isinstance(routes, list) or not all(isinstance(route, dict) for route in routes):
        raise ConfigError("routes: Expected an array of tables ([[routes]])")
    if kind or path:
        if kind and kind not in _STORAGE_PATHS:
            raise ConfigError(f"SMTP_STORAGE_TYPE: not a kind of store: {kind!r} (one of {', '.join(_STORAGE_PATHS)})")
        catch_all = next((route for route in reversed(routes) if route.get("match") == ["*"]), None)
        if catch_all is None:
            catch_all = {"match": ["*"]}
            routes.append(catch_all)
        catch_all["kind"] = kind or catch_all.get("kind")
        if catch_all["kind"] not in _STORAGE_PATHS:
            kept = catch_all["kind"]
            raise ConfigError(f"SMTP_STORAGE_PATH: the catch-all route is of kind {kept!r}: set SMTP_STORAGE_TYPE too")
        if path:
            catch_all["path"] = path
        elif not catch_all.get("path") and _STORAGE_PATHS[catch_all["kind"]]:
            data_dir = _table(data, "server").get("data_dir", ServerConfig().data_dir)
            catch_all["path"] = str(Path(data_dir) / _STORAGE_PATHS[catch_all["kind"]])
    buckets = [route for route in routes if route.get("kind") == "s3"]
    if s3_names and not buckets:
        raise ConfigError(f"{s3_names[0]}: no route of kind s3 to apply it to (add one, or set SMTP_STORAGE_TYPE=s3)")
    for route in buckets:
        route.update({_S3_ENV[name]: environ[name] for name in s3_names})


def _apply_env(data: dict[str, Any], environ: dict[str, str]) -> None:
    defaults = msgspec.to_builtins(Config(), enc_hook=_encode)

    def put(name: str, section: str, key: str) -> None:
        current = defaults.get(section, {}).get(key) if isinstance(defaults.get(section), dict) else None
        _table(data, section)[key] = _env_value(name, environ[name], current)

    for name, (section, key) in _SHORT_ENV.items():
        if name in environ:
            put(name, section, key)
    if "SMTP_HOST" in environ or "SMTP_PORT" in environ:
        # Either alone changes only its half of the first listener, as configured or by default.
        smtp = _table(data, "smtp")
        try:
            first = _first_listener(smtp.get("listen") or SmtpConfig().listen)
            configured_host, configured_port = parse_hostport(first, 2525)
        except ValueError as exc:
            raise ConfigError(f"smtp.listen: {exc}") from None
        host = environ.get("SMTP_HOST", configured_host)
        port = environ.get("SMTP_PORT", str(configured_port))
        smtp["listen"] = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if environ.get("SMTP_WEBHOOK_URL"):
        _add_webhook(data, environ)
    elif "SMTP_WEBHOOK_EVENTS" in environ or "SMTP_WEBHOOK_SECRET" in environ:
        raise ConfigError("SMTP_WEBHOOK_EVENTS and SMTP_WEBHOOK_SECRET describe the webhook of SMTP_WEBHOOK_URL: set it too")
    if environ.get("SMTP_HEALTH_PORT"):
        admin = _table(data, "admin")
        try:
            admin_host = parse_hostport(_first_listener(admin.get("listen", AdminConfig().listen)))[0]
        except ValueError as exc:
            raise ConfigError(f"admin.listen: {exc}") from None
        port = environ["SMTP_HEALTH_PORT"]
        admin["listen"] = f"[{admin_host}]:{port}" if ":" in admin_host else f"{admin_host}:{port}"
    for name in environ:
        if not name.startswith("FASTMTA_") or name in _NOT_SETTINGS:
            continue
        if name.startswith(_STORE_KEY_ENV):
            _table(data, "store").setdefault("keys", {})[name[len(_STORE_KEY_ENV):].lower()] = environ[name]
            continue
        section, _, key = name[len("FASTMTA_"):].lower().partition("_")
        if not (isinstance(defaults.get(section), dict) and key in defaults[section]):
            raise ConfigError(f"{name}: no such setting (FASTMTA_<SECTION>_<KEY>, e.g. FASTMTA_SMTP_WORKERS)")
        put(name, section, key)
    _apply_storage_env(data, environ)
    # Last, so that a certificate given by any variable counts.
    if "SMTP_ENABLE_TLS" in environ:
        if not _env_value("SMTP_ENABLE_TLS", environ["SMTP_ENABLE_TLS"], False):
            _table(data, "smtp").update(tls_cert="", tls_key="")
        elif not _table(data, "smtp").get("tls_cert"):
            raise ConfigError("SMTP_ENABLE_TLS: TLS needs a certificate: set SMTP_TLS_CERT and SMTP_TLS_KEY")


def _validate(config: Config) -> None:
    """What one key's type cannot say: keys that go together."""
    smtp = config.smtp
    if not (smtp.listen or smtp.submission_listen or smtp.smtps_listen):
        raise ConfigError("smtp.listen: at least one listener is needed")
    if bool(smtp.tls_cert) != bool(smtp.tls_key):
        raise ConfigError("smtp.tls_cert and smtp.tls_key go together")
    if smtp.smtps_listen and not smtp.tls_cert:
        raise ConfigError("smtp.smtps_listen needs smtp.tls_cert and smtp.tls_key")
    files = {"smtp.tls_cert": smtp.tls_cert, "smtp.tls_key": smtp.tls_key, "tls_policy.ca_file": config.tls_policy.ca_file}
    for key, path in files.items():
        # is_file() is False for what is not there; a name too long or a directory it may not search raise.
        try:
            found = not path or Path(path).is_file()
        except OSError as exc:
            raise ConfigError(f"{key}: {exc.strerror}: {path}") from None
        if not found:
            raise ConfigError(f"{key}: no such file: {path}")
    for index, route in enumerate(config.routes):
        if route.kind == "smarthost" and not route.host:
            raise ConfigError(f"routes[{index}].host: a smarthost route needs a host")
        _check_store_route(f"routes[{index}]", route, config.store)
        if route.tls == "dane" and not config.tls_policy.dnssec_resolver:
            raise ConfigError(f"routes[{index}].tls: \"dane\" needs tls_policy.dnssec_resolver, whose answers it trusts")
        if route.tls == "mta-sts" and route.kind != "mx":
            raise ConfigError(f"routes[{index}].tls: \"mta-sts\" is a domain's policy for its MX hosts: only for kind = \"mx\"")


def _check_store_route(name: str, route: RouteConfig, store: StoreConfig) -> None:
    if route.kind in STORE_KINDS and route.kind != "s3" and not route.path:
        raise ConfigError(f"{name}.path: a {route.kind} route needs a path")
    if route.kind == "s3":
        if not route.bucket:
            raise ConfigError(f"{name}.bucket: an s3 route needs a bucket (or SMTP_S3_BUCKET)")
        if importlib.util.find_spec("boto3") is None:
            raise ConfigError(f"{name}.kind: an s3 route needs boto3: pip install 'fastmta[s3]'")
    if route.encrypt and route.kind not in SEALABLE_KINDS:
        raise ConfigError(
            f"{name}.encrypt: only copies kept one message per file are sealed ({', '.join(SEALABLE_KINDS)}), "
            f"not {route.kind}"
        )
    if route.encrypt and not store.active_key:
        raise ConfigError(
            f"{name}.encrypt: no key to seal with: set store.active_key and its key in store.keys (or FASTMTA_STORE_KEY_<ID>)"
        )


def _finish(config: Config) -> Config:
    server = config.server
    if not server.hostname:
        server.hostname = socket.getfqdn() or "localhost"
    if not server.node_id:
        server.node_id = server.hostname
    if not config.delivery.bounce_from:
        config.delivery.bounce_from = f"MAILER-DAEMON@{server.hostname}"
    return config


def _check_dkim_keys(config: Config) -> None:
    """Here, not at the first message: a missing key, or one others may read, stops the start (or the reload)."""
    from fastmta.dkim.keys import UnusableKey, load_all

    try:
        load_all(config)
    except UnusableKey as exc:
        raise ConfigError(str(exc)) from None


def load(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None, dkim_keys: bool = True) -> Config:
    """Reads the TOML file (or the embedded default when path is None), applies the environment, validates.

    dkim_keys=False leaves the key files unread: for `fastmta dkim keygen`, which may be making one the config names.
    """
    environ = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as exc:
            raise ConfigError(f"config file cannot be read: {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: not UTF-8 at byte {exc.start}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except RecursionError:
            # tomllib parses nested arrays and inline tables recursively, without a depth limit of its own.
            raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    _apply_env(data, environ)
    try:
        config = msgspec.convert(data, Config, strict=False, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        raise ConfigError(_readable(str(exc))) from None
    _validate(config)
    if dkim_keys and config.dkim.keys:
        _check_dkim_keys(config)
    return _finish(config)


def _readable(message: str) -> str:
    """msgspec says '... - at `$.smtp.workers`'; operators want 'smtp.workers: ...'."""
    found = re.match(r"^(.*?)(?: - at `\$\.?(.*)`)?$", message)
    if not found:
        return message
    problem, where = found.group(1), found.group(2) or ""
    keyed = re.match(r"^([A-Za-z_][\w\[\]]*): (.*)$", problem)
    if keyed and where:  # raised by a section's __post_init__, which names the key
        return f"{where}.{keyed.group(1)}: {keyed.group(2)}"
    unknown = re.match(r"Object contains unknown field `(.*)`$", problem)
    if unknown:
        key = f"{where}.{unknown.group(1)}" if where else unknown.group(1)
        return f"{key}: unknown setting"
    return f"{where}: {problem}" if where else problem


# Settings whose values are secrets: check-config shows that they are set, not what they are.
SECRET_SETTINGS = frozenset({"password", "secret", "secret_key", "report_secret"})
REDACTED = "<redacted>"


def to_toml(config: Config, redact: bool = False) -> str:
    """The config as TOML that loads back to it; with `redact`, secrets (and passwords in URLs) replaced by REDACTED."""
    if not redact:
        return msgspec.toml.encode(config, enc_hook=_encode).decode()
    return msgspec.toml.encode(_redacted(msgspec.to_builtins(config, enc_hook=_encode))).decode()


def _redacted(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        if key == "keys":  # [store] keys: every value is a key
            return {name: REDACTED for name in value}
        return {name: _redacted(item, name) for name, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item, key) for item in value]
    if isinstance(value, str) and value:
        if key in SECRET_SETTINGS:
            return REDACTED
        # A database or Redis URL may carry its password: scheme://user:password@host
        return re.sub(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)[^@/]+@", rf"\g<1>{REDACTED}@", value)
    return value
