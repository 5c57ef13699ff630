"""Config loading: defaults, TOML, environment overrides, and errors that name the key."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from fastmta.config import ConfigError, load, parse_duration, parse_hostport, to_toml


def test_embedded_default() -> None:
    config = load(environ={})
    assert config.smtp.listen == ["127.0.0.1:2525"]
    assert config.admin.listen == "127.0.0.1:8080"
    assert config.server.data_dir == "./var"
    assert "127.0.0.0/8" in config.smtp.mynetworks
    assert config.routes[0].kind == "mx" and config.routes[0].match == ["*"]
    assert config.delivery.bounce_from == f"MAILER-DAEMON@{config.server.hostname}"
    assert config.smtp_workers >= 1


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[smtp]\nlisten = ["127.0.0.1:1"]\nmax_recipients = 7\n')
    config = load(
        path,
        environ={
            "SMTP_HOST": "::1",
            "SMTP_PORT": "2600",
            "SMTP_HOSTNAME": "mx.example",
            "SMTP_ENABLE_AUTH": "yes",
            "SMTP_HEALTH_PORT": "9100",
            "SMTP_DATA_DIR": "/srv/q",
            "FASTMTA_SMTP_MYNETWORKS": "10.0.0.0/8, 192.0.2.0/24",
            "FASTMTA_LIMITS_MESSAGES_PER_HOUR": "50",
            "FASTMTA_DELIVERY_MAX_AGE": "2d",
        },
    )
    assert config.smtp.listen == ["[::1]:2600"]
    assert config.server.hostname == "mx.example" and config.server.data_dir == "/srv/q"
    assert config.smtp.require_auth is True and config.smtp.max_recipients == 7
    assert config.admin.listen == "127.0.0.1:9100"
    assert config.smtp.mynetworks == ["10.0.0.0/8", "192.0.2.0/24"]
    assert config.limits.messages_per_hour == 50 and config.delivery.max_age == 2 * 86400


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[smtp]\nlisten = 5\n", "smtp.listen"),
        ("[nope]\n", "nope"),
        ("[smtp]\nlisten = ['127.0.0.1:99999']\n", "smtp.listen"),
        ("[smtp]\ntls_cert = '/nonexistent'\ntls_key = '/nonexistent'\n", "smtp.tls_cert"),
        ("[smtp]\ntls_cert = 'x'\n", "tls_key"),
        ("[delivery]\nretry_schedule = ['soon']\n", "delivery.retry_schedule"),
        ("[delivery]\nbounce_size_limit = 0\n", "delivery.bounce_size_limit"),
        ("[[routes]]\nmatch = ['*']\nkind = 'maildir'\n", "routes[0].path"),
        ("[[routes]]\nmatch = ['*']\nkind = 'pigeon'\n", "routes[0].kind: Invalid enum value 'pigeon'"),
        ("[[routes]]\nmatch = ['*']\nkind = 'mbox'\n", "routes[0].path: a mbox route needs a path"),
        ("[[routes]]\nmatch = ['*']\nkind = 's3'\n", "routes[0].bucket: an s3 route needs a bucket"),
        ("[[routes]]\nmatch = ['*']\nkind = 's3'\nbucket = 'b'\nendpoint_url = 'minio:9000'\n", "routes[0].endpoint_url"),
        ("[[routes]]\nmatch = ['*']\nkind = 'mbox'\npath = 'm'\nencrypt = true\n", "routes[0].encrypt: only copies kept one"),
        ("[[routes]]\nmatch = ['*']\nkind = 'maildir'\npath = 'm'\nencrypt = true\n", "routes[0].encrypt: no key to seal with"),
        ("[store]\nkeys = { k1 = 'c2hvcnQ=' }\n", "store.keys[k1]: not 32 bytes in base64"),
        ("[store]\nactive_key = 'k9'\n", "store.active_key: no key 'k9'"),
        ("[admin]\nmax_stream_clients = 0\n", "admin.max_stream_clients"),
        ("[admin]\nmax_body_bytes = -1\n", "admin.max_body_bytes"),
        ("[[routes]]\nmatch = ['*']\nkind = 'mx'\ntls = 'dane'\n", "routes[0].tls"),
        ("[[routes]]\nmatch = ['*']\nkind = 'smarthost'\nhost = 'relay.example'\ntls = 'mta-sts'\n", "routes[0].tls"),
        ("[tls_policy]\ndnssec_resolver = '127.0.0.1:99999'\n", "tls_policy.dnssec_resolver"),
        ("[tls_policy]\nca_file = '/nonexistent/ca.pem'\n", "tls_policy.ca_file"),
        ("[tls_policy]\nfetch_timeout = '0s'\n", "tls_policy.fetch_timeout"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load(path, environ={})


def test_env_type_error_names_the_key() -> None:
    with pytest.raises(ConfigError, match="smtp.workers"):
        load(environ={"FASTMTA_SMTP_WORKERS": "lots"})


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"FASTMTA_SMTP_WORKRS": "2"}, "FASTMTA_SMTP_WORKRS: no such setting"),
        ({"FASTMTA_ROUTES_KIND": "mx"}, "FASTMTA_ROUTES_KIND: no such setting"),
        ({"SMTP_ENABLE_AUTH": "perhaps"}, "SMTP_ENABLE_AUTH: not a yes/no value"),
        ({"FASTMTA_SERVER_METRICS": "nein"}, "FASTMTA_SERVER_METRICS: not a yes/no value"),
        ({"SMTP_ENABLE_TLS": "true"}, "SMTP_ENABLE_TLS: TLS needs a certificate"),
    ],
)
def test_bad_environment_is_an_error_naming_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load(environ=environ)


def test_storage_variables_make_the_catch_all_route_a_store(tmp_path: Path) -> None:
    routes = load(environ={"SMTP_STORAGE_TYPE": "sqlite", "SMTP_DATA_DIR": "/srv/q"}).routes
    assert [(r.match, r.kind, r.path) for r in routes] == [(["*"], "sqlite", "/srv/q/stored.db")]
    path = tmp_path / "c.toml"
    path.write_text("[[routes]]\nmatch = ['example.org']\nkind = 'discard'\n")
    routes = load(path, environ={"SMTP_STORAGE_TYPE": "mbox", "SMTP_STORAGE_PATH": "/var/mail"}).routes
    assert [(r.kind, r.path) for r in routes] == [("discard", ""), ("mbox", "/var/mail")]
    s3 = {"SMTP_S3_BUCKET": "mail", "SMTP_S3_REGION": "eu-west-1", "SMTP_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
          "SMTP_S3_ACCESS_KEY": "id", "SMTP_S3_SECRET_KEY": "secret"}  # fmt: skip
    [route] = load(environ={"SMTP_STORAGE_TYPE": "s3", **s3}).routes
    assert (route.kind, route.bucket, route.region, route.endpoint_url, route.access_key, route.secret_key) == (
        "s3", "mail", "eu-west-1", "http://127.0.0.1:9000", "id", "secret"
    )
    key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
    store = load(environ={"FASTMTA_STORE_KEY_K1": key, "FASTMTA_STORE_ACTIVE_KEY": "k1"}).store
    assert store.keys == {"k1": key} and store.active_key == "k1"
    for environ, named in (
        ({"SMTP_STORAGE_TYPE": "pigeon"}, "SMTP_STORAGE_TYPE: not a kind of store: 'pigeon'"),
        ({"SMTP_STORAGE_PATH": "/var/mail"}, "SMTP_STORAGE_PATH: the catch-all route is of kind 'mx'"),
        ({"SMTP_S3_BUCKET": "mail"}, "SMTP_S3_BUCKET: no route of kind s3"),
        ({"SMTP_STORAGE_TYPE": "s3"}, r"routes\[0\].bucket: an s3 route needs a bucket \(or SMTP_S3_BUCKET\)"),
    ):
        with pytest.raises(ConfigError, match=named):
            load(environ=environ)


def test_smtp_port_alone_keeps_the_configured_host(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[smtp]\nlisten = ["0.0.0.0:25"]\n')
    assert load(path, environ={"SMTP_PORT": "2600"}).smtp.listen == ["0.0.0.0:2600"]
    assert load(path, environ={"SMTP_HOST": "127.0.0.2"}).smtp.listen == ["127.0.0.2:25"]
    assert load(environ={"SMTP_PORT": "2600"}).smtp.listen == ["127.0.0.1:2600"]
    assert load(environ={"SMTP_ENABLE_TLS": "no", "FASTMTA_SERVER_METRICS": "off"}).server.metrics is False


def test_tls_enabled_with_the_certificate_from_any_variable(tls_files: tuple[Path, Path]) -> None:
    cert, key = (str(path) for path in tls_files)
    config = load(environ={"SMTP_ENABLE_TLS": "true", "FASTMTA_SMTP_TLS_CERT": cert, "FASTMTA_SMTP_TLS_KEY": key})
    assert config.smtp.tls_cert == cert


def test_parsers() -> None:
    assert parse_duration("90s") == 90 and parse_duration("5m") == 300 and parse_duration("5d") == 432000
    assert parse_duration("250ms") == 0.25 and parse_duration("12") == 12
    with pytest.raises(ValueError):
        parse_duration("5 fortnights")
    assert parse_hostport("[::1]:25") == ("::1", 25)
    assert parse_hostport("mx.example.com") == ("mx.example.com", 25)
    assert parse_hostport("127.0.0.1:2525") == ("127.0.0.1", 2525)


def test_the_example_config_is_valid(tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    """deploy/fastmta.toml as shipped, and with its commented-out settings switched on; only its
    certificate paths point at the test certificate."""
    example = Path(__file__).parents[2] / "deploy" / "fastmta.toml"
    cert, key = tls_files
    environ = {"SMTP_TLS_CERT": str(cert), "SMTP_TLS_KEY": str(key)}
    config = load(example, environ=environ)
    assert config.smtp.listen == ["0.0.0.0:25"] and [r.kind for r in config.routes] == ["mx"]
    assert config.delivery.delay_warning == 4 * 3600 and config.server.metrics is True
    everything = tmp_path / "everything.toml"
    everything.write_text(re.sub(r"(?m)^# (?=\[\[|[a-z_]+ = )", "", example.read_text()))
    # Its sealing key comes from the environment, as the file advises; the DKIM key it names is not
    # shipped, of course: only its entry is checked.
    environ["FASTMTA_STORE_KEY_K2025"] = "a2V5LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzLWxvbmc="
    switched_on = load(everything, environ=environ, dkim_keys=False)
    assert [r.kind for r in switched_on.routes] == ["smarthost", "eml-tree", "sqlite", "s3", "mx"]
    assert switched_on.dkim.keys[0].selector == "s2026"


def test_typed_values_are_parsed_once_and_errors_name_the_key(tmp_path: Path) -> None:
    config = load(None, environ={"FASTMTA_DELIVERY_RETRY_SCHEDULE": "30s,2m", "FASTMTA_DELIVERY_LEASE_TIME": "90"})
    assert config.delivery.retry_schedule == [30, 120] and config.delivery.lease_time == 90
    for environ, message in (
        ({"FASTMTA_DELIVERY_MAX_AGE": "5 fortnights"}, "delivery.max_age: not a duration: '5 fortnights'"),
        ({"FASTMTA_SMTP_PROXY_TRUSTED": "10.0.0.0/8,bad"}, "smtp.proxy_trusted[1]: not a network: 'bad'"),
        ({"FASTMTA_SMTP_MAX_LINE_LENGTH": "100"}, "smtp.max_line_length: Expected `int` >= 512"),
        ({"SMTP_PORT": "99999"}, "smtp.listen[0]: port out of range"),
        ({"FASTMTA_SMTP_MIN_DATA_RATE": "-1"}, "smtp.min_data_rate: Expected `int` >= 0"),
        ({"FASTMTA_DELIVERY_RETRY_SCHEDULE": ""}, "delivery.retry_schedule: Expected `array` of length >= 1"),
    ):
        with pytest.raises(ConfigError) as raised:
            load(None, environ=environ)
        assert str(raised.value).startswith(message), raised.value
    route = tmp_path / "route.toml"
    route.write_text('[[routes]]\nmatch = ["*"]\nkind = "smarthost"\nhost = "h"\nrate = "10/m"\nsource_ips = ["127.0.0.2"]\n')
    assert load(route, environ={}).routes[0].rate == pytest.approx(10 / 60)
    route.write_text('[[routes]]\nmatch = ["*"]\nkind = "smarthost"\nhost = "h"\nsource_ips = ["not-an-ip"]\n')
    with pytest.raises(ConfigError, match=r"routes\[0\].source_ips\[0\]: not an IP address"):
        load(route, environ={})


def test_check_config_redacts_secrets_unless_asked(tmp_path: Path) -> None:
    secrets = {
        "FASTMTA_STORE_KEY_K1": base64.b64encode(b"k" * 32).decode(), "SMTP_WEBHOOK_URL": "https://hooks.example/in",
        "SMTP_WEBHOOK_SECRET": "webhook-secret", "FASTMTA_HISTORY_URL": "postgresql://fastmta:db-password@db.example/history",
    }  # fmt: skip
    config = load(None, environ=secrets)
    shown = to_toml(config, redact=True)
    assert not {"webhook-secret", "db-password", secrets["FASTMTA_STORE_KEY_K1"]} & set(re.findall(r'"([^"]*)"', shown))
    assert 'k1 = "<redacted>"' in shown and "postgresql://fastmta:<redacted>@db.example/history" in shown
    assert "webhook-secret" in to_toml(config)


def test_check_config_output_loads_back_to_the_same_config(tmp_path: Path) -> None:
    original = load(None, environ={"FASTMTA_DELIVERY_RETRY_SCHEDULE": "30s,250ms,2h"})
    written = tmp_path / "effective.toml"
    written.write_text(to_toml(original))
    assert load(written, environ={}) == original
