"""Fuzz target: the config loader, given a TOML file and environment overrides.

Input: byte 0 is the number of variables (mod 5); each is a name byte (an index into NAMES) and
a length-prefixed value, decoded as UTF-8 without NUL (no environment holds one); the rest is
the file. Whatever the file and the variables say, load() returns a Config or raises ConfigError.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec

from tests.fuzz import harness

with harness.instrumented("tomllib._parser", "ipaddress"):
    from fastmta.config import Config, ConfigError, load

# The short names of DESIGN.md's interface, and FASTMTA_<SECTION>_<KEY> for every key, plus two
# that name no setting.
NAMES = [
    "SMTP_PORT", "SMTP_HOST", "SMTP_HOSTNAME", "SMTP_MAX_CONNECTIONS", "SMTP_MAX_MESSAGE_SIZE",
    "SMTP_TIMEOUT_SECONDS", "SMTP_ENABLE_TLS", "SMTP_TLS_CERT", "SMTP_TLS_KEY", "SMTP_ENABLE_AUTH",
    "SMTP_HEALTH_PORT", "SMTP_LOG_LEVEL", "SMTP_DATA_DIR", "FASTMTA_ROUTES_MATCH", "FASTMTA_SMTP_NO_SUCH_KEY",
] + [
    f"FASTMTA_{name}_{key}".upper()
    for name in Config.__struct_fields__
    if isinstance(section := getattr(Config(), name), msgspec.Struct)
    for key in section.__struct_fields__
]  # fmt: skip

# Unlinked from the start, so that no run leaves it behind: libFuzzer ends the process without
# running atexit handlers. load() opens it again by its /proc name.
_FILE = tempfile.TemporaryFile()
_PATH = Path(f"/proc/self/fd/{_FILE.fileno()}")


def decode(data: bytes) -> tuple[dict[str, str], bytes]:
    environ: dict[str, str] = {}
    pos = 1
    for _ in range(data[0] % 5 if data else 0):
        if pos + 1 >= len(data):
            break
        name, size = NAMES[data[pos] % len(NAMES)], data[pos + 1]
        environ[name] = data[pos + 2 : pos + 2 + size].decode("utf-8", "replace").replace("\0", "")
        pos += 2 + size
    return environ, data[pos:]


def test_one_input(data: bytes) -> None:
    environ, toml = decode(data)
    _FILE.seek(0)
    _FILE.truncate()
    _FILE.write(toml)
    _FILE.flush()
    try:
        config = load(_PATH, environ)
    except ConfigError:
        return
    assert isinstance(config, Config)


if __name__ == "__main__":
    harness.fuzz("config", test_one_input)
