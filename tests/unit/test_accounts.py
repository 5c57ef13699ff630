"""SMTP AUTH accounts in each place they are kept (queue.lmdb, SQLite, PostgreSQL), with a deliberately cheap argon2id hasher."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path

import argon2
import lmdb
import msgspec
import pytest

import fastmta.access.accounts as accounts_module
from fastmta.access.accounts import (
    AccountError,
    AccountExists,
    AccountNotFound,
    Accounts,
    InvalidUsername,
    LmdbUsers,
    User,
    UserRows,
    normalize,
)
from fastmta.access.stores import Access

# The cheapest parameters argon2 accepts: these tests check the bookkeeping, not the hash's strength.
CHEAP = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}
PASSWORD = "correct horse battery staple"


def cheap_hasher(**changes: int) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(**{**CHEAP, **changes})


@pytest.fixture
def env(tmp_path: Path) -> Iterator[lmdb.Environment]:
    # As the queue store opens it: the users are one named database among several.
    environment = lmdb.open(str(tmp_path / "queue.lmdb"), map_size=1 << 24, max_dbs=16)
    yield environment
    environment.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1_700_000_000.0]
    monkeypatch.setattr(accounts_module, "time", types.SimpleNamespace(time=lambda: now[0]))
    return now


@pytest.fixture
def rows(access: Access) -> UserRows:
    """Each place accounts are kept (tests/unit/conftest.py)."""
    return access.accounts.rows


@pytest.fixture
def accounts(rows: UserRows, clock: list[float]) -> Accounts:
    return Accounts(rows, cheap_hasher())


def raw_records(env: lmdb.Environment) -> dict[bytes, bytes]:
    with env.begin() as txn:
        return dict(txn.cursor(db=env.open_db(b"users", txn=txn, create=False)))


# --- usernames -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("carol", "carol"),
        ("Carol", "carol"),
        ("  CAROL\t\n", "carol"),
        ("a", "a"),
        ("0day", "0day"),
        ("carol@example.com", "carol@example.com"),
        ("c.a_r+o-l@x", "c.a_r+o-l@x"),
        ("a" * 128, "a" * 128),
    ],
)
def test_normalize_valid(given: str, stored: str) -> None:
    assert normalize(given) == stored


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "a" * 129,
        ".carol",
        "-carol",
        "_carol",
        "@carol",
        "+carol",
        "car ol",
        "carol!",
        "carol/x",
        "carol:x",
        "carol\x00",
        "ca\nrol",
        "carol%",
        "café",
        "carol\u200b",
        "кэрол",
    ],
)
def test_invalid_usernames(accounts: Accounts, name: str) -> None:
    with pytest.raises(InvalidUsername):
        normalize(name)
    with pytest.raises(InvalidUsername):
        accounts.add(name, PASSWORD)
    assert accounts.get(name) is None
    with pytest.raises(InvalidUsername):
        accounts.delete(name)
    with pytest.raises(InvalidUsername):
        accounts.set_password(name, PASSWORD)
    with pytest.raises(InvalidUsername):
        accounts.update(name, enabled=False)
    assert accounts.verify(name, PASSWORD) is False
    assert accounts.list() == []


def test_errors_are_account_errors_with_a_message() -> None:
    for error in (AccountExists(), AccountNotFound(), InvalidUsername()):
        assert isinstance(error, AccountError) and str(error)


# --- add / get / list ------------------------------------------------------------------------------


def test_add_and_get(accounts: Accounts, clock: list[float]) -> None:
    user = accounts.add("Carol", PASSWORD, admin=True, quota=500)
    assert user.username == "carol"
    assert (user.enabled, user.admin, user.quota) == (True, True, 500)
    assert user.created_at == user.updated_at == clock[0]
    assert accounts.get("carol") == user
    assert accounts.get("CAROL") == user
    assert accounts.get(" carol ") == user
    assert accounts.get("dave") is None


def test_defaults(accounts: Accounts) -> None:
    user = accounts.add("dave", PASSWORD)
    assert (user.enabled, user.admin, user.quota) == (True, False, 0)


@pytest.mark.parametrize("again", ["carol", "Carol", "CAROL", " carol "])
def test_duplicates_raise_case_insensitively(accounts: Accounts, again: str) -> None:
    first = accounts.add("Carol", PASSWORD, quota=7)
    with pytest.raises(AccountExists):
        accounts.add(again, "another password", admin=True)
    # The first account is untouched.
    assert accounts.get("carol") == first
    assert accounts.verify("carol", PASSWORD)
    assert not accounts.verify("carol", "another password")
    assert len(accounts.list()) == 1


def test_list_is_sorted_and_complete(accounts: Accounts) -> None:
    for name in ["mallory", "Alice", "bob@example.com", "0perator"]:
        accounts.add(name, PASSWORD)
    assert [user.username for user in accounts.list()] == ["0perator", "alice", "bob@example.com", "mallory"]
    assert all(isinstance(user, User) for user in accounts.list())


def test_empty_list(accounts: Accounts) -> None:
    assert accounts.list() == []


def test_users_persist_across_environments(tmp_path: Path) -> None:
    path = str(tmp_path / "queue.lmdb")
    env = lmdb.open(path, map_size=1 << 24, max_dbs=16)
    added = Accounts(LmdbUsers(env), cheap_hasher()).add("carol", PASSWORD, quota=3)
    env.close()
    env = lmdb.open(path, map_size=1 << 24, max_dbs=16)
    try:
        reopened = Accounts(LmdbUsers(env), cheap_hasher())
        assert reopened.get("carol") == added
        assert reopened.verify("carol", PASSWORD)
    finally:
        env.close()


def test_users_share_the_environment_with_other_databases(env: lmdb.Environment) -> None:
    accounts = Accounts(LmdbUsers(env), cheap_hasher())
    other = env.open_db(b"messages")
    with env.begin(write=True, db=other) as txn:
        txn.put(b"carol", b"not a user")
    accounts.add("carol", PASSWORD)
    assert [user.username for user in accounts.list()] == ["carol"]
    with env.begin(db=other) as txn:
        assert txn.get(b"carol") == b"not a user"


# --- what is stored --------------------------------------------------------------------------------


def test_only_an_argon2id_hash_is_stored(env: lmdb.Environment) -> None:
    password = "Sw0rdfish-\u00e9\u00e8-unique-marker"
    user = Accounts(LmdbUsers(env), cheap_hasher()).add("carol", password)
    assert user.password_hash.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert password not in user.password_hash
    records = raw_records(env)
    assert list(records) == [b"carol"]
    raw = records[b"carol"]
    assert password.encode() not in raw and password.encode("utf-16-le") not in raw
    assert user.password_hash.encode() in raw
    assert argon2.PasswordHasher().verify(user.password_hash, password)


def test_same_password_gets_a_different_salt(accounts: Accounts) -> None:
    first = accounts.add("carol", PASSWORD)
    second = accounts.add("dave", PASSWORD)
    assert first.password_hash != second.password_hash


def test_default_hasher_is_argon2id() -> None:
    # Accounts(env) without a hasher uses argon2's defaults (64 MiB, too slow to build here): argon2id.
    assert argon2.PasswordHasher().type is argon2.Type.ID


# --- set_password / update / delete ----------------------------------------------------------------


def test_set_password(accounts: Accounts, clock: list[float]) -> None:
    before = accounts.add("carol", PASSWORD, admin=True, quota=9)
    clock[0] += 60
    after = accounts.set_password("CAROL", "new password")
    assert after.password_hash != before.password_hash
    assert (after.username, after.admin, after.quota, after.enabled) == ("carol", True, 9, True)
    assert (after.created_at, after.updated_at) == (before.created_at, clock[0])
    assert accounts.get("carol") == after
    assert accounts.verify("carol", "new password")
    assert not accounts.verify("carol", PASSWORD)


def test_update(accounts: Accounts, clock: list[float]) -> None:
    before = accounts.add("carol", PASSWORD, quota=100)
    clock[0] += 5
    user = accounts.update("Carol", admin=True)
    assert (user.enabled, user.admin, user.quota) == (True, True, 100)
    assert user.password_hash == before.password_hash
    assert (user.created_at, user.updated_at) == (before.created_at, clock[0])
    # False and 0 are changes, not "leave as is".
    user = accounts.update("carol", enabled=False, admin=False, quota=0)
    assert (user.enabled, user.admin, user.quota) == (False, False, 0)
    assert accounts.get("carol") == user
    user = accounts.update("carol", quota=42)
    assert (user.enabled, user.admin, user.quota) == (False, False, 42)
    # Nothing to change: only the timestamp moves.
    clock[0] += 5
    same = accounts.update("carol")
    assert same == msgspec_replace(user, updated_at=clock[0])


def msgspec_replace(user: User, **changes: object) -> User:
    return msgspec.structs.replace(user, **changes)


def test_delete(accounts: Accounts) -> None:
    accounts.add("carol", PASSWORD)
    accounts.add("dave", PASSWORD)
    assert accounts.delete("CAROL") is True
    assert accounts.get("carol") is None
    assert [user.username for user in accounts.list()] == ["dave"]
    assert not accounts.verify("carol", PASSWORD)
    with pytest.raises(AccountNotFound):
        accounts.delete("carol")
    # The name is free again.
    assert accounts.add("Carol", "other").username == "carol"
    assert accounts.verify("carol", "other")


@pytest.mark.parametrize(
    "change",
    [
        lambda accounts: accounts.set_password("nobody", PASSWORD),
        lambda accounts: accounts.update("nobody", enabled=False),
        lambda accounts: accounts.update("nobody"),
        lambda accounts: accounts.delete("nobody"),
    ],
    ids=["set_password", "update", "update-nothing", "delete"],
)
def test_changing_an_unknown_user_raises(accounts: Accounts, change: object) -> None:
    accounts.add("somebody", PASSWORD)
    with pytest.raises(AccountNotFound):
        change(accounts)  # type: ignore[operator]
    assert accounts.get("nobody") is None
    assert [user.username for user in accounts.list()] == ["somebody"]


# --- verify ----------------------------------------------------------------------------------------


def test_verify(accounts: Accounts) -> None:
    accounts.add("carol", PASSWORD)
    assert accounts.verify("carol", PASSWORD) is True
    assert accounts.verify("Carol", PASSWORD) is True
    assert accounts.verify("carol", "wrong") is False
    assert accounts.verify("carol", PASSWORD.upper()) is False
    assert accounts.verify("carol", PASSWORD + " ") is False
    assert accounts.verify("carol", "") is False
    assert accounts.verify("dave", PASSWORD) is False


def test_authenticate_returns_the_user_or_none(accounts: Accounts) -> None:
    added = accounts.add("Carol", PASSWORD, quota=25)
    assert accounts.authenticate("CAROL", PASSWORD) == added
    assert accounts.authenticate("carol", "wrong") is None
    assert accounts.authenticate("nobody", PASSWORD) is None
    assert accounts.authenticate("not valid!", PASSWORD) is None
    accounts.update("carol", enabled=False)
    assert accounts.authenticate("carol", PASSWORD) is None


def test_verify_unknown_user_with_the_dummy_password(accounts: Accounts) -> None:
    """The hash checked for unknown users must not let its own password in."""
    assert accounts.verify("nobody", "fastmta-no-such-user") is False
    assert accounts.verify("nobody", "") is False


def test_verify_disabled_user(accounts: Accounts) -> None:
    accounts.add("carol", PASSWORD)
    accounts.update("carol", enabled=False)
    assert accounts.verify("carol", PASSWORD) is False
    assert accounts.verify("carol", "wrong") is False
    accounts.update("carol", enabled=True)
    assert accounts.verify("carol", PASSWORD) is True


def test_verify_unicode_password(accounts: Accounts) -> None:
    accounts.add("carol", "pässwörd-\u2603-\U0001f512")
    assert accounts.verify("carol", "pässwörd-\u2603-\U0001f512")
    assert not accounts.verify("carol", "passwort-\u2603-\U0001f512")


def test_verify_a_corrupt_hash_is_false(rows: UserRows, accounts: Accounts) -> None:
    accounts.add("carol", PASSWORD)
    rows.change("carol", password_hash="not a hash")
    assert accounts.verify("carol", PASSWORD) is False


def test_verify_does_not_rehash_with_unchanged_parameters(accounts: Accounts) -> None:
    user = accounts.add("carol", PASSWORD)
    assert accounts.verify("carol", PASSWORD)
    assert accounts.get("carol") == user


@pytest.mark.parametrize("changes", [{"time_cost": 2}, {"memory_cost": 16}, {"parallelism": 2, "memory_cost": 16}])
def test_verify_rehashes_when_the_parameters_change(rows: UserRows, clock: list[float], changes: dict[str, int]) -> None:
    old = Accounts(rows, cheap_hasher()).add("carol", PASSWORD)
    clock[0] += 10
    stronger = cheap_hasher(**changes)
    accounts = Accounts(rows, stronger)
    assert stronger.check_needs_rehash(old.password_hash)

    # A wrong password changes nothing.
    assert not accounts.verify("carol", "wrong")
    assert accounts.get("carol") == old

    new = accounts.authenticate("carol", PASSWORD)
    assert new is not None and new == accounts.get("carol")
    assert new.password_hash != old.password_hash
    assert not stronger.check_needs_rehash(new.password_hash)
    assert new == msgspec_replace(old, password_hash=new.password_hash, updated_at=clock[0])
    # Still the same password, under either hasher.
    assert accounts.verify("carol", PASSWORD) and not accounts.verify("carol", "wrong")
    assert Accounts(rows, cheap_hasher()).verify("carol", PASSWORD)


def test_disabled_user_is_not_rehashed(rows: UserRows, accounts: Accounts) -> None:
    accounts.add("carol", PASSWORD)
    old = accounts.update("carol", enabled=False)
    assert not Accounts(rows, cheap_hasher(time_cost=2)).verify("carol", PASSWORD)
    assert accounts.get("carol") == old


def test_two_instances_on_one_store_agree(rows: UserRows) -> None:
    """The CLI and the workers (of every node, in a cluster) each make their own Accounts; every change
    is visible at once to the other."""
    cli, worker = Accounts(rows, cheap_hasher()), Accounts(rows, cheap_hasher())
    cli.add("carol", PASSWORD)
    assert worker.verify("carol", PASSWORD)
    cli.update("carol", enabled=False)
    assert not worker.verify("carol", PASSWORD)
    cli.delete("carol")
    assert worker.get("carol") is None
