"""API tokens and the audit log in each place they are kept (queue.lmdb, SQLite, PostgreSQL: the `access`
fixture of tests/unit/conftest.py), and the copy of a node's own into the shared store."""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from pathlib import Path

import argon2
import lmdb
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from fastmta import metrics
from fastmta.access.accounts import Accounts, User
from fastmta.access.audit import AuditEntry
from fastmta.access.stores import CONNECT_TIMEOUT, Access, move
from fastmta.access.tokens import TokenExists
from fastmta.admin.api.realtime import Feed
from fastmta.admin.app import create_app
from fastmta.admin.state import AdminState
from fastmta.config import load
from tests.conftest import Server

# The cheapest parameters argon2 accepts: the copy is checked, not the hash.
CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


# --- tokens ----------------------------------------------------------------------------------------


def test_a_created_token_verifies_and_only_its_sha256_is_kept(access: Access) -> None:
    token, text = access.tokens.create("deploy", "operator", created_by="token:root")
    prefix = f"fmta_{token.id}_"
    secret = text.removeprefix(prefix)  # base64url: it may hold "_" itself
    assert text.startswith(prefix) and len(secret) == 32
    assert token.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert access.tokens.verify(text) == token
    assert access.tokens.list() == [token]
    assert all(secret not in repr(kept) for kept in access.tokens.list())
    assert (token.name, token.role, token.created_by) == ("deploy", "operator", "token:root")


def test_a_wrong_or_malformed_token_does_not_verify(access: Access) -> None:
    token, text = access.tokens.create("deploy", "viewer")
    assert access.tokens.verify(text[:-1] + ("A" if text[-1] != "A" else "B")) is None
    assert access.tokens.verify(f"fmta_{'0' * 12}_{'a' * 32}") is None
    assert access.tokens.verify("not a token") is None
    assert access.tokens.verify("") is None


def test_token_names_are_unique_and_the_list_is_by_id(access: Access) -> None:
    made = [access.tokens.create(name, "viewer")[0] for name in ("one", "two", "three")]
    with pytest.raises(TokenExists, match="'two'"):
        access.tokens.create("two", "admin")
    assert access.tokens.list() == sorted(made, key=lambda token: token.id)
    assert access.tokens.find("three") == made[2] and access.tokens.find(made[0].id) == made[0]
    assert access.tokens.find("four") is None


def test_a_revoked_token_no_longer_verifies_and_its_name_is_free(access: Access) -> None:
    token, text = access.tokens.create("deploy", "admin")
    assert access.tokens.revoke(token.id) == token
    assert access.tokens.verify(text) is None
    assert access.tokens.revoke(token.id) is None
    assert access.tokens.list() == []
    assert access.tokens.create("deploy", "admin")[0].name == "deploy"


def test_adopting_a_token_twice_changes_nothing_and_a_conflict_is_refused(access: Access) -> None:
    text = "fmta_0123456789ab_" + "x" * 32
    token, added = access.tokens.adopt(text, "prometheus", "viewer")
    assert added and access.tokens.verify(text) == token
    assert access.tokens.adopt(text, "prometheus", "viewer") == (token, False)
    with pytest.raises(TokenExists):
        access.tokens.adopt(text, "prometheus", "admin")  # the same id with another role
    with pytest.raises(TokenExists):
        access.tokens.adopt("fmta_ba9876543210_" + "y" * 32, "prometheus", "viewer")  # another id, the same name
    with pytest.raises(ValueError, match="not a token"):
        access.tokens.adopt("fmta_short", "x", "viewer")
    assert access.tokens.list() == [token]


# --- audit log -------------------------------------------------------------------------------------


def entry(actor: str, action: str, target: str, **fields: object) -> AuditEntry:
    return AuditEntry("", 0.0, actor, action, target, **fields)  # type: ignore[arg-type]


def test_the_audit_log_pages_newest_first_with_filters_and_a_total(access: Access) -> None:
    log = access.audit
    stored = [log.append(entry(f"token:{n % 2}", "user.update" if n % 3 else "token.create", f"t{n}")) for n in range(7)]
    assert [e.id for e in stored] == sorted(e.id for e in stored) and len({e.id for e in stored}) == 7
    newest_first = stored[::-1]
    assert log.newest(3, 0) == (newest_first[:3], 7)
    assert log.newest(3, 6) == (newest_first[6:], 7)
    assert log.newest(3, 7) == ([], 7)
    assert log.newest(10, 0, actor="token:1") == ([e for e in newest_first if e.actor == "token:1"], 3)
    assert log.newest(1, 1, action="token.create") == ([stored[3]], 3)
    assert log.newest(10, 0, actor="token:0", action="token.create", target="t6") == ([stored[6]], 1)
    assert log.newest(10, 0, target="none") == ([], 0)
    assert log.newest(10, 0, actor="", action="", target="")[1] == 7  # an empty filter is no filter


def test_an_audit_entry_keeps_its_before_after_and_request_fields(access: Access) -> None:
    change = entry(
        "user:carol", "user.update", "dave", before={"quota": 1, "admin": False}, after={"quota": 2, "nested": [1, "x"]},
        client_ip="192.0.2.1", user_agent="curl/8", request_id="r-1",
    )  # fmt: skip
    stored = access.audit.append(change)
    assert stored.at > 0 and stored.id
    assert access.audit.newest(1, 0) == ([stored], 1)
    created = access.audit.append(entry("user:carol", "user.create", "erin", after={"username": "erin"}))
    assert access.audit.newest(1, 0)[0][0].before is None and created.after == {"username": "erin"}


def test_what_the_api_and_the_cli_accept_fits_every_store(access: Access) -> None:
    """A client's X-Request-Id has up to 128 characters (admin/app.py), a token named by the CLI any number."""
    long_name = "a token named at length by the command line, as queue.lmdb always kept it"
    token, text = access.tokens.create(long_name, "viewer")
    assert access.tokens.verify(text) == token and token.name == long_name
    stored = access.audit.append(entry(f"token:{long_name}", "token.create", token.id, request_id="r" * 128))
    assert access.audit.newest(1, 0) == ([stored], 1)


# --- a node joining a cluster ----------------------------------------------------------------------


def test_moving_a_nodes_own_into_the_shared_store_keeps_passwords_and_tokens_working(
    access: Access, tmp_path: Path
) -> None:
    env = lmdb.open(str(tmp_path / "local.lmdb"), map_size=1 << 24, max_dbs=16)
    try:
        local = Access.local(env)
        accounts = Accounts(local.accounts.rows, CHEAP)
        carol = accounts.add("carol", "carol's password", quota=5)
        accounts.add("dave", "dave's password", admin=True)
        accounts.add("erin", "erin's password on this node")
        kept, text = local.tokens.create("deploy", "operator")
        taken = local.tokens.create("taken", "viewer")[0]
        local.audit.append(entry("cli", "user.create", "carol"))
        access.tokens.create("taken", "admin")  # already in the shared store, under another id
        access.accounts.rows.insert(carol)  # already there too
        Accounts(access.accounts.rows, CHEAP).add("erin", "erin's password in the cluster")

        moved = move(local, access)
        assert (moved.users, moved.tokens, moved.audit) == (1, 1, 1)
        assert (moved.name_taken, moved.replaced) == (["taken"], ["erin"])
        shared = Accounts(access.accounts.rows, CHEAP)
        assert shared.verify("dave", "dave's password") and shared.verify("carol", "carol's password")
        assert shared.get("carol") == carol and shared.verify("erin", "erin's password in the cluster")
        assert access.tokens.verify(text) == kept
        assert access.audit.newest(10, 0) == local.audit.newest(10, 0)
        assert local.accounts.list() == [] and local.tokens.list() == [taken]  # the token waits for its name

        again = move(local, access)
        assert (again.users, again.tokens, again.audit, again.name_taken, again.replaced) == (0, 0, 0, ["taken"], [])
    finally:
        env.close()


def test_moving_again_brings_back_no_user_or_token_the_cluster_deleted(access: Access, tmp_path: Path) -> None:
    """A node's own users and tokens leave it once shared, so a second `fastmta access share` (the README
    says it adds only what is missing) cannot restore a leaked token revoked, or a user deleted, since."""
    env = lmdb.open(str(tmp_path / "local.lmdb"), map_size=1 << 24, max_dbs=16)
    try:
        local = Access.local(env)
        Accounts(local.accounts.rows, CHEAP).add("mallory", "mallory's password")
        token, text = local.tokens.create("leaked", "admin")
        move(local, access)
        access.accounts.delete("mallory")
        access.tokens.revoke(token.id)

        assert (move(local, access).users, move(local, access).tokens) == (0, 0)
        assert access.accounts.get("mallory") is None and access.tokens.verify(text) is None
    finally:
        env.close()


@pytest.mark.parametrize("access", ["postgresql"], indirect=True)
def test_fastmta_access_share_moves_what_a_node_kept_alone(access: Access, tmp_path: Path) -> None:
    """The operator's way into a cluster: users made before [history] url pointed at PostgreSQL work after."""
    assert access.engine is not None
    alone = Server(tmp_path, {})  # only its config and data_dir: the commands need no running server
    assert alone.cli("user", "add", "carol", "--password-stdin", input=b"pw of carol\n").returncode == 0
    refused = alone.cli("access", "share")
    assert refused.returncode == 1 and b"names no PostgreSQL" in refused.stderr
    url = access.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    joined = Server(tmp_path, {"history": {"url": url}})  # the same data_dir, now in the cluster
    shared = joined.cli("access", "share")
    assert shared.returncode == 0, shared.stderr
    assert shared.stdout.startswith(b"moved 1 users and 0 tokens, copied 0 audit entries")
    assert joined.cli("user", "verify", "carol", "--password-stdin", input=b"pw of carol\n").returncode == 0
    assert [user.username for user in access.accounts.list()] == ["carol"]


# --- the shared store unreachable ------------------------------------------------------------------


def test_with_the_shared_database_unreachable_lookups_fail_and_the_api_says_why(tmp_path: Path) -> None:
    """The SMTP worker turns the error into 454 4.7.0 (test_session.py); the admin API into a 503 naming it."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = load(environ={"FASTMTA_SERVER_DATA_DIR": str(tmp_path), "FASTMTA_HISTORY_URL": f"postgresql://fastmta@127.0.0.1:{port}/h"})
    env = lmdb.open(str(tmp_path / "local.lmdb"), map_size=1 << 24, max_dbs=16)
    try:
        with pytest.raises(sa.exc.OperationalError):
            Accounts(Access.opened(config, env).accounts.rows, CHEAP).authenticate("carol", "pw")
    finally:
        env.close()
    metrics.directory_for(tmp_path).mkdir(parents=True, exist_ok=True)
    basic = base64.b64encode(b"carol:pw").decode()
    with TestClient(create_app(config, Feed())) as client:
        for credentials in (f"Bearer fmta_0123456789ab_{'x' * 32}", f"Basic {basic}"):
            answer = client.get("/api/v1/delivery", headers={"Authorization": credentials})
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "DATABASE_UNREACHABLE"


@pytest.mark.parametrize("access", ["postgresql"], indirect=True)
def test_the_shared_store_outlives_a_database_restart_and_its_errors_carry_no_hashes(access: Access, tmp_path: Path) -> None:
    """A pooled connection that PostgreSQL closed is replaced, not handed to an AUTH to fail it; a failed
    statement's error, which the logs show, names no password hash."""
    assert access.engine is not None
    url = access.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    config = load(environ={"FASTMTA_SERVER_DATA_DIR": str(tmp_path), "FASTMTA_HISTORY_URL": url})
    env = lmdb.open(str(tmp_path / "local.lmdb"), map_size=1 << 24, max_dbs=16)
    opened = Access.opened(config, env)
    try:
        assert opened.engine is not None
        accounts = Accounts(opened.accounts.rows, CHEAP)
        accounts.add("carol", "pw of carol")
        with opened.engine.connect() as pooled:
            backend = pooled.scalar(sa.text("SELECT pg_backend_pid()"))
        with access.engine.connect() as other:  # what a restart of PostgreSQL does to every session
            assert other.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        assert accounts.verify("carol", "pw of carol")

        secret_hash = CHEAP.hash("another password")
        with pytest.raises(sa.exc.DataError) as refused:
            opened.accounts.rows.insert(User("x" * 200, secret_hash))  # longer than the column
        assert secret_hash not in str(refused.value)
    finally:
        opened.close()
        env.close()


@pytest.mark.parametrize("access", ["postgresql"], indirect=True)
def test_the_admin_process_reads_history_and_the_shared_store_through_one_pool(access: Access, tmp_path: Path) -> None:
    assert access.engine is not None
    url = access.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    metrics.directory_for(tmp_path).mkdir(parents=True, exist_ok=True)
    state = AdminState.open(load(environ={"FASTMTA_SERVER_DATA_DIR": str(tmp_path), "FASTMTA_HISTORY_URL": url}))
    try:
        assert state.access.engine is not None and state.database() is state.access.engine
    finally:
        state.close()


def test_a_database_that_drops_packets_fails_a_lookup_within_the_connect_timeout(tmp_path: Path) -> None:
    """Not after the system's TCP timeout: meanwhile an SMTP worker could check no AUTH at all."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # The accept queue full and never read: the kernel drops further SYNs, as a lost host's network would.
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        env = lmdb.open(str(tmp_path / "local.lmdb"), map_size=1 << 24, max_dbs=16)
        try:
            url = f"postgresql://fastmta@127.0.0.1:{port}/h"
            default = Access.opened(load(environ={"FASTMTA_SERVER_DATA_DIR": str(tmp_path), "FASTMTA_HISTORY_URL": url}), env)
            assert default.engine is not None and default.engine.url.query["connect_timeout"] == str(CONNECT_TIMEOUT)
            # The url's own wins; 2 is the least libpq takes.
            config = load(environ={"FASTMTA_SERVER_DATA_DIR": str(tmp_path), "FASTMTA_HISTORY_URL": f"{url}?connect_timeout=2"})
            started = time.monotonic()
            with pytest.raises(sa.exc.OperationalError):
                Access.opened(config, env).accounts.get("carol")
            assert time.monotonic() - started < 10
        finally:
            env.close()
            for filler in fillers:
                filler.close()
