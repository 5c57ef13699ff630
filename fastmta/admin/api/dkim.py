"""GET /api/v1/dkim: every configured DKIM key, whether it signs, its age and the DNS record to publish for it."""

from __future__ import annotations

import time

import anyio.to_thread
import msgspec

from fastmta.admin.endpoint import Call, Endpoint
from fastmta.config import Config
from fastmta.dkim import keys


class DkimKeyView(msgspec.Struct):
    domain: str
    selector: str
    workspace: str  # empty: the domain's own key
    signing: bool  # false: kept published while a rotation retires it
    key_file: str
    dns_name: str  # where its TXT record goes: <selector>._domainkey.<domain>
    algorithm: str = ""  # rsa-sha256 | ed25519-sha256
    bits: int = 0
    created_at: float = 0.0  # the key file's modification time
    age_seconds: float = 0.0
    dns_record: str = ""  # the TXT record's text
    problem: str = ""  # why the file cannot be used now (moved or opened up since the config was loaded); the rest stays empty


def _views(config: Config) -> list[DkimKeyView]:
    views, now = [], time.time()
    for entry in config.dkim.keys:
        view = DkimKeyView(
            entry.domain, entry.selector, entry.workspace, entry.signing, str(keys.path_of(entry, config.data_dir)),
            keys.dns_name(entry.domain, entry.selector),
        )
        try:
            key = keys.load(entry, config.data_dir)
        except keys.UnusableKey as exc:
            view.problem = str(exc)
        else:
            view.algorithm, view.bits, view.dns_record = key.algorithm, key.bits, key.dns_record
            view.created_at, view.age_seconds = key.created_at, round(now - key.created_at, 3)
        views.append(view)
    return views


async def list_keys(call: Call) -> list[DkimKeyView]:
    return await anyio.to_thread.run_sync(_views, call.state.config)


ENDPOINTS = [
    Endpoint("GET", "/api/v1/dkim", "DKIM keys by domain and selector: which signs, their age, their DNS records", list_keys, "dkim", returns=list[DkimKeyView]),
]
