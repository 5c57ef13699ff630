"""SMTP AUTH accounts: argon2id-hashed users, kept by a UserRows (queue.lmdb's `users` database, or SQL)."""

from __future__ import annotations

import functools
import re
import time
from typing import Protocol

import argon2
import lmdb
import msgspec

_USERS_DB = b"users"
# Local part or address characters only: usernames appear in logs, headers and URLs.
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,127}")


class User(msgspec.Struct, omit_defaults=True):
    """One account. Fields may be added with defaults; none may be removed or retyped."""

    username: str
    password_hash: str
    enabled: bool = True
    admin: bool = False
    quota: int = 0  # messages per day; 0 = unlimited
    created_at: float = 0.0
    updated_at: float = 0.0


class AccountError(Exception):
    """A change to the accounts that cannot be made; the message says why."""


class AccountExists(AccountError):
    def __init__(self) -> None:
        super().__init__("user already exists")


class AccountNotFound(AccountError):
    def __init__(self) -> None:
        super().__init__("no such user")


class InvalidUsername(AccountError):
    def __init__(self) -> None:
        super().__init__("usernames are 1-128 of a-z 0-9 . _ @ + - and start with a letter or digit")


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(User)


def normalize(username: str) -> str:
    name = username.strip().lower()
    if not _USERNAME.fullmatch(name):
        raise InvalidUsername()
    return name


class UserRows(Protocol):
    """Where accounts are kept: LmdbUsers below on one node, access/sql.py's SqlUsers in a cluster.
    Names come normalised; each method is one transaction, so every process sees a change at once."""

    def insert(self, user: User) -> bool:
        """False, and nothing stored, when the name is taken."""
        ...

    def get(self, username: str) -> User | None: ...

    def list(self) -> list[User]:
        """Every account, by name."""
        ...

    def change(self, username: str, **changes: object) -> User | None:
        """The account with these fields set, or None when there is none."""
        ...

    def delete(self, username: str) -> bool: ...


class LmdbUsers:
    """Accounts in the `users` database of queue.lmdb: this node's own."""

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self._db = env.open_db(_USERS_DB)

    def insert(self, user: User) -> bool:
        with self._env.begin(write=True, db=self._db) as txn:
            return bool(txn.put(user.username.encode(), _ENCODER.encode(user), overwrite=False))

    def get(self, username: str) -> User | None:
        with self._env.begin(db=self._db) as txn:
            raw = txn.get(username.encode())
        return None if raw is None else _DECODER.decode(raw)

    def list(self) -> list[User]:
        with self._env.begin(db=self._db) as txn:
            return [_DECODER.decode(raw) for _, raw in txn.cursor()]

    def change(self, username: str, **changes: object) -> User | None:
        key = username.encode()
        with self._env.begin(write=True, db=self._db) as txn:
            raw = txn.get(key)
            if raw is None:
                return None
            user = msgspec.structs.replace(_DECODER.decode(raw), **changes)
            txn.put(key, _ENCODER.encode(user))
        return user

    def delete(self, username: str) -> bool:
        with self._env.begin(write=True, db=self._db) as txn:
            return bool(txn.delete(username.encode()))


class Accounts:
    """Adds, checks and changes users: the rules (names, hashing, rehashing) here, the keeping in `rows`."""

    def __init__(self, rows: UserRows, hasher: argon2.PasswordHasher | None = None) -> None:
        self.rows = rows
        self._hasher = hasher or argon2.PasswordHasher()

    @functools.cached_property
    def _dummy_hash(self) -> str:
        """Checked against when the user is unknown, so a wrong username costs as long as a wrong password.
        Made on first need: a hash costs tens of milliseconds of CPU, in every process that opens accounts."""
        return self._hasher.hash("fastmta-no-such-user")

    def add(self, username: str, password: str, admin: bool = False, quota: int = 0) -> User:
        name = normalize(username)
        now = time.time()
        user = User(name, self._hasher.hash(password), admin=admin, quota=quota, created_at=now, updated_at=now)
        if not self.rows.insert(user):
            raise AccountExists()
        return user

    def get(self, username: str) -> User | None:
        try:
            name = normalize(username)
        except InvalidUsername:
            return None
        return self.rows.get(name)

    def list(self) -> list[User]:
        return self.rows.list()

    def set_password(self, username: str, password: str) -> User:
        return self._change(username, password_hash=self._hasher.hash(password))

    def update(self, username: str, *, enabled: bool | None = None, admin: bool | None = None, quota: int | None = None) -> User:
        changes = {"enabled": enabled, "admin": admin, "quota": quota}
        return self._change(username, **{field: value for field, value in changes.items() if value is not None})

    def delete(self, username: str) -> bool:
        if not self.rows.delete(normalize(username)):
            raise AccountNotFound()
        return True

    def authenticate(self, username: str, password: str) -> User | None:
        """The user, if enabled and this is its password; upgrades the hash if the parameters changed."""
        user = self.get(username)
        try:
            self._hasher.verify(user.password_hash if user else self._dummy_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return None
        if user is None or not user.enabled:
            return None
        if self._hasher.check_needs_rehash(user.password_hash):
            user = self._change(user.username, password_hash=self._hasher.hash(password))
        return user

    def verify(self, username: str, password: str) -> bool:
        return self.authenticate(username, password) is not None

    def _change(self, username: str, **changes: object) -> User:
        user = self.rows.change(normalize(username), updated_at=time.time(), **changes)
        if user is None:
            raise AccountNotFound()
        return user
