"""Admin API tokens, kept by a TokenRows (queue.lmdb's `tokens` database, or SQL): only a SHA-256 of each secret is stored.

A token reads `fmta_<id>_<secret>`. The id finds the record without a scan; the secret has 192
random bits, so a fast hash is enough (a slow one protects guessable passwords, not these).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Protocol

import lmdb
import msgspec

from fastmta.access.roles import RoleName

_TOKENS_DB = b"tokens"
_TOKEN = re.compile(r"fmta_([0-9a-f]{12})_([A-Za-z0-9_-]{32})")


class Token(msgspec.Struct, omit_defaults=True):
    """One token. Fields may be added with defaults; none may be removed or retyped."""

    id: str
    name: str
    role: RoleName
    secret_hash: str
    created_at: float
    created_by: str = ""


class TokenExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"a token named {name!r} already exists")


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Token)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenRows(Protocol):
    """Where tokens are kept: LmdbTokens below on one node, access/sql.py's SqlTokens in a cluster.

    `remote` says whether a look-up waits on the network (and so belongs off an event loop).
    """

    remote: bool

    def insert(self, token: Token) -> None:
        """Raises TokenExists, storing nothing, when its name (or id) is taken."""
        ...

    def get(self, token_id: str) -> Token | None: ...

    def list(self) -> list[Token]:
        """Every token, by id."""
        ...

    def delete(self, token_id: str) -> Token | None:
        """The token removed, or None when there was none."""
        ...


class LmdbTokens:
    """Tokens in the `tokens` database of queue.lmdb: this node's own."""

    remote = False

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self._db = env.open_db(_TOKENS_DB)

    def insert(self, token: Token) -> None:
        with self._env.begin(write=True, db=self._db) as txn:
            if any(_DECODER.decode(raw).name == token.name for _, raw in txn.cursor()):
                raise TokenExists(token.name)
            if not txn.put(token.id.encode(), _ENCODER.encode(token), overwrite=False):
                raise TokenExists(token.name)

    def get(self, token_id: str) -> Token | None:
        with self._env.begin(db=self._db) as txn:
            raw = txn.get(token_id.encode())
        return None if raw is None else _DECODER.decode(raw)

    def list(self) -> list[Token]:
        with self._env.begin(db=self._db) as txn:
            return [_DECODER.decode(raw) for _, raw in txn.cursor()]

    def delete(self, token_id: str) -> Token | None:
        with self._env.begin(write=True, db=self._db) as txn:
            raw = txn.pop(token_id.encode())
        return None if raw is None else _DECODER.decode(raw)


class Tokens:
    """Makes, checks and revokes tokens: the rules (text form, hashing) here, the keeping in `rows`."""

    def __init__(self, rows: TokenRows) -> None:
        self.rows = rows

    def create(self, name: str, role: RoleName, created_by: str = "") -> tuple[Token, str]:
        """The new token and its text; the text is never stored and cannot be shown again."""
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(24)
        token = Token(token_id, name, role, _digest(secret), time.time(), created_by)
        self.rows.insert(token)
        return token, f"fmta_{token_id}_{secret}"

    def adopt(self, text: str, name: str, role: RoleName, created_by: str = "") -> tuple[Token, bool]:
        """Stores a token made elsewhere (one Secret for every node of a cluster); True if it was new.

        Adopting the same text again changes nothing, so a start script may do it each time.
        """
        found = _TOKEN.fullmatch(text)
        if not found:
            raise ValueError("not a token: expected fmta_<12 hex digits>_<32 characters of base64url>")
        token_id, secret = found.groups()
        token = Token(token_id, name, role, _digest(secret), time.time(), created_by)
        stored = self.rows.get(token_id)
        if stored is None:
            try:
                self.rows.insert(token)
                return token, True
            except TokenExists:
                # Another node of a cluster adopting the same token at the same moment is no conflict.
                stored = self.rows.get(token_id)
                if stored is None:
                    raise
        if (stored.name, stored.role, stored.secret_hash) == (name, role, token.secret_hash):
            return stored, False
        raise TokenExists(stored.name)

    def list(self) -> list[Token]:
        return self.rows.list()

    def find(self, id_or_name: str) -> Token | None:
        return next((t for t in self.list() if id_or_name in (t.id, t.name)), None)

    def revoke(self, token_id: str) -> Token | None:
        return self.rows.delete(token_id)

    def verify(self, text: str) -> Token | None:
        found = _TOKEN.fullmatch(text)
        if not found:
            return None
        token = self.rows.get(found.group(1))
        if token is None:
            return None
        return token if hmac.compare_digest(token.secret_hash, _digest(found.group(2))) else None
