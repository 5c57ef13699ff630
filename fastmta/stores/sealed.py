"""Sealed copies: a file store's bytes in AES-256-GCM, the key's id in a header so that keys can rotate.

A sealed file is `FMTASEAL`, a version byte (1), the key id's length and the key id (ASCII), a
12-byte random nonce, then the ciphertext with GCM's 16-byte tag. The header is the cipher's
associated data: a changed key id or nonce fails to open like a changed byte of the message does.
New copies are sealed with [store] active_key; any key still in [store] keys opens the copies made
with it, so a new key can become active while the old one stays to read what it sealed.
"""

from __future__ import annotations

import base64
import dataclasses
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fastmta.config import StoreConfig
from fastmta.stores.base import Copy, Store

MAGIC = b"FMTASEAL"
VERSION = 1
_NONCE = 12


class SealError(Exception):
    """The bytes cannot be opened: not sealed, sealed with a key that is not configured, or changed since."""


class Sealer:
    def __init__(self, keys: dict[str, bytes], active: str) -> None:
        self.keys = keys
        self.active = active

    @classmethod
    def configured(cls, store: StoreConfig) -> Sealer:
        """[store] keys (base64, checked when the config was loaded) and active_key."""
        return cls({key_id: base64.b64decode(value) for key_id, value in store.keys.items()}, store.active_key)

    def seal(self, data: bytes) -> bytes:
        key_id = self.active.encode()
        nonce = os.urandom(_NONCE)
        header = MAGIC + bytes([VERSION, len(key_id)]) + key_id + nonce
        return header + AESGCM(self.keys[self.active]).encrypt(nonce, data, header)

    def unseal(self, sealed: bytes) -> bytes:
        if not sealed.startswith(MAGIC):
            raise SealError("not a sealed copy (it does not begin with FMTASEAL)")
        at = len(MAGIC)
        if len(sealed) < at + 2 or sealed[at] != VERSION:
            raise SealError(f"sealed in an unknown format (version {sealed[at] if len(sealed) > at else '?'})")
        id_length = sealed[at + 1]
        key_id = sealed[at + 2 : at + 2 + id_length].decode("ascii", "replace")
        nonce_at = at + 2 + id_length
        header = sealed[: nonce_at + _NONCE]
        if key_id not in self.keys:
            raise SealError(f"sealed with key {key_id!r}, which [store] keys does not hold")
        try:
            return AESGCM(self.keys[key_id]).decrypt(header[nonce_at:], sealed[len(header) :], header)
        except (InvalidTag, ValueError):
            raise SealError(f"does not open with key {key_id!r}: changed or cut short since it was sealed") from None


class SealedStore:
    """Any store that keeps one message per file or object, its copies sealed before they are put."""

    def __init__(self, inner: Store, sealer: Sealer) -> None:
        self.inner = inner
        self.sealer = sealer
        self.per_recipient = inner.per_recipient

    def put(self, copy: Copy) -> None:
        self.inner.put(dataclasses.replace(copy, body=self.sealer.seal(copy.body)))

    def close(self) -> None:
        self.inner.close()
