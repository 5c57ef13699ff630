"""The history sink: migrations, the rows a batch of events leaves, idempotent redelivery, retention."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext

from fastmta.config import Config, ConfigError, load
from fastmta.events import records, sinks
from fastmta.events.history import HistorySink
from fastmta.events.records import AnyEvent, Entry
from fastmta.history import db
from fastmta.history.schema import events, messages, metadata, recipients
from fastmta.queue.records import Message, Recipient
from tests.unit.conftest import T0

NODE = "node-a"


def message(id: str, *addresses: str, **fields: Any) -> Message:
    return Message(
        id=id, sender="alice@example.org", recipients=[Recipient(address=a) for a in addresses], received_at=T0,
        size=1234, next_attempt=T0, client_ip="192.0.2.7", helo="client.example.org", **fields,
    )


def outcome(kind: type[records.Attempted], msg: Message, address: str, at: float, reply: str, attempts: int) -> AnyEvent:
    recipient = Recipient(address=address, attempts=attempts, last_reply=reply, remote_host="mx.example.com")
    event = records.attempted(kind, msg, recipient, NODE, at)
    assert isinstance(event, records.Delivered | records.Deferred | records.Failed | records.Expired)
    return event


def numbered(events: Sequence[records.Event | None], start: int = 1) -> list[Entry]:
    """Outbox entries numbered from `start`; None stands for an entry that cannot be decoded."""
    return [
        Entry(sequence, b"{not an event") if event is None else Entry.of(sequence, event)
        for sequence, event in enumerate(events, start)
    ]


def rows(sink: HistorySink, table: sa.Table) -> list[dict[str, Any]]:
    with sink.engine.connect() as connection:
        return [dict(row) for row in connection.execute(sa.select(table).order_by(*table.primary_key)).mappings()]


def by_id(sink: HistorySink) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows(sink, messages)}


def test_migrations_create_the_schema_of_schema_py_and_run_twice(sink: HistorySink, tmp_path: Path) -> None:
    assert Path(tmp_path / "var" / "history.db").is_file() == (sink.engine.dialect.name == "sqlite")
    db.migrate(sink.engine)  # the second upgrade, on a database already at head, changes nothing
    with sink.engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT version_num FROM alembic_version")) == "0005"
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
        if sink.engine.dialect.name == "sqlite":
            assert connection.scalar(sa.text("PRAGMA journal_mode")) == "wal"
            assert connection.scalar(sa.text("PRAGMA synchronous")) == 2  # FULL


def test_the_access_migrations_go_down_and_up_again(sink: HistorySink) -> None:
    """Down to before users, tokens and audit (0003), and back to head, in the database a cluster shares."""
    settings = AlembicConfig()
    settings.set_main_option("script_location", str(db.MIGRATIONS))
    with sink.engine.begin() as connection:
        settings.attributes["connection"] = connection
        command.downgrade(settings, "0003")
        assert not {"users", "tokens", "audit"} & set(sa.inspect(connection).get_table_names())
        command.upgrade(settings, "head")
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []


def test_a_message_received_then_delivered_and_failed(sink: HistorySink) -> None:
    msg = message("m1", "bob@example.com", "carol@example.net", subject="Hi", workspace_id="ws1", campaign_id="c1")
    received = records.received(msg, NODE, T0)
    delivered = outcome(records.Delivered, msg, "bob@example.com", T0 + 5, "250 2.0.0 ok", 1)
    failed = outcome(records.Failed, msg, "carol@example.net", T0 + 6, "550 5.1.1 no such user", 1)
    sink.deliver(numbered([received, delivered]))
    row = by_id(sink)["m1"]
    assert row["status"] == "queued" and row["settled_at"] is None
    assert (row["sender"], row["recipients"], row["size"], row["subject"]) == ("alice@example.org", 2, 1234, "Hi")
    assert (row["workspace_id"], row["campaign_id"], row["client_ip"], row["node"]) == ("ws1", "c1", "192.0.2.7", NODE)
    sink.deliver(numbered([failed], 3))
    row = by_id(sink)["m1"]
    assert (row["status"], row["settled_at"], row["last_reply"], row["attempts"]) == (
        "failed", T0 + 6, "550 5.1.1 no such user", 1
    )
    assert [(r["address"], r["status"], r["last_reply"]) for r in rows(sink, recipients)] == [
        ("bob@example.com", "sent", "250 2.0.0 ok"),
        ("carol@example.net", "failed", "550 5.1.1 no such user"),
    ]
    timeline = rows(sink, events)
    assert sorted((e["seq"], e["type"], e["message_id"], e["recipient"]) for e in timeline) == [
        (1, "received", "m1", ""), (2, "delivered", "m1", "bob@example.com"), (3, "failed", "m1", "carol@example.net"),
    ]
    stored = {e["id"]: e["data"] for e in timeline}
    assert stored[delivered.id]["type"] == "delivered" and stored[delivered.id]["reply"] == "250 2.0.0 ok"


def test_deferred_then_delivered_ends_sent_with_its_deferrals_counted(sink: HistorySink) -> None:
    msg = message("m2", "dave@example.com")
    batch = [
        records.received(msg, NODE, T0),
        outcome(records.Deferred, msg, "dave@example.com", T0 + 60, "451 4.7.1 greylisted", 1),
        outcome(records.Deferred, msg, "dave@example.com", T0 + 360, "451 4.7.1 greylisted", 2),
    ]
    sink.deliver(numbered(batch))
    row = by_id(sink)["m2"]
    assert (row["status"], row["deferred"], row["attempts"]) == ("queued", 2, 2)
    sink.deliver(numbered([outcome(records.Delivered, msg, "dave@example.com", T0 + 900, "250 ok", 3)], 4))
    row = by_id(sink)["m2"]
    assert (row["status"], row["deferred"], row["attempts"], row["settled_at"]) == ("sent", 2, 3, T0 + 900)
    [recipient] = rows(sink, recipients)
    assert (recipient["status"], recipient["deferred"], recipient["attempts"]) == ("sent", 2, 3)


def test_expired_is_a_failure(sink: HistorySink) -> None:
    msg = message("m3", "erin@example.com")
    sink.deliver(numbered([
        records.received(msg, NODE, T0),
        outcome(records.Expired, msg, "erin@example.com", T0 + 5 * 86400, "451 4.4.1 timed out", 9),
    ]))
    assert by_id(sink)["m3"]["status"] == "failed"


def test_the_same_batch_twice_changes_nothing(sink: HistorySink) -> None:
    msg = message("m4", "frank@example.com", "grace@example.com")
    batch = numbered([
        records.received(msg, NODE, T0),
        outcome(records.Deferred, msg, "frank@example.com", T0 + 60, "451 later", 1),
        outcome(records.Delivered, msg, "grace@example.com", T0 + 61, "250 ok", 1),
    ])
    sink.deliver(batch)
    before = [rows(sink, table) for table in (messages, recipients, events)]
    sink.deliver(batch)
    sink.deliver(batch[1:])  # a retry of part of it, as after a cursor saved halfway
    assert [rows(sink, table) for table in (messages, recipients, events)] == before
    assert by_id(sink)["m4"]["deferred"] == 1


def test_a_refusal_is_a_rejected_message(sink: HistorySink) -> None:
    refusal = records.Rejected(
        id=records.new_event_id(T0), at=T0, node=NODE, recipient="nobody@example.com", reply="554 5.7.1 relay denied",
        stage="rcpt", command="RCPT TO:<nobody@example.com>", client_ip="198.51.100.9", sender="spam@example.biz",
    )
    sink.deliver(numbered([refusal]))
    sink.deliver(numbered([refusal]))
    with sink.engine.connect() as connection:
        found = connection.execute(sa.select(messages).where(messages.c.status == "rejected")).mappings().all()
        timeline = connection.execute(sa.select(events.c.type).where(events.c.message_id == refusal.id)).scalars().all()
    [row] = found
    assert (row["id"], row["sender"], row["client_ip"], row["last_reply"], row["recipients"], row["settled_at"]) == (
        refusal.id, "spam@example.biz", "198.51.100.9", "554 5.7.1 relay denied", 1, T0
    )
    assert timeline == ["rejected"]


def test_operator_actions_and_undecodable_entries(sink: HistorySink) -> None:
    msg = message("m5", "heidi@example.com")
    held = records.about_message(records.Held, "m5", NODE)
    sink.deliver(numbered([records.received(msg, NODE, T0), None, held]))
    assert sink.undecodable == 1
    assert by_id(sink)["m5"]["held"] is True
    released = records.about_message(records.Released, "m5", NODE)
    deleted = records.about_message(records.Deleted, "m5", NODE)
    failed = records.AuthFailed(id=records.new_event_id(), at=T0, node=NODE, client_ip="203.0.113.1", username="x")
    sink.deliver(numbered([released, deleted, failed], 4))
    row = by_id(sink)["m5"]
    assert (row["held"], row["status"], row["settled_at"]) == (False, "deleted", deleted.at)
    assert [r["status"] for r in rows(sink, recipients)] == ["deleted"]
    assert [e["message_id"] for e in rows(sink, events) if e["type"] == "auth_failed"] == [None]


def test_an_outcome_for_a_message_never_received_stays_in_the_timeline(sink: HistorySink) -> None:
    msg = message("m6", "ivan@example.com")
    sink.deliver(numbered([outcome(records.Delivered, msg, "ivan@example.com", T0, "250 ok", 1)]))
    assert by_id(sink) == {} and rows(sink, recipients) == []
    assert [e["type"] for e in rows(sink, events)] == ["delivered"]


def test_prune_removes_only_what_is_older_than_keep(sink: HistorySink) -> None:
    keep = 30 * 86400.0
    assert sink.keep == keep
    old, recent = message("old", "a@example.com"), message("new", "b@example.com")
    stray = records.AuthFailed(id=records.new_event_id(T0), at=T0, node=NODE, client_ip="203.0.113.1", username="x")
    sink.deliver(numbered([
        records.received(old, NODE, T0),
        outcome(records.Delivered, old, "a@example.com", T0 + 10, "250 ok", 1),
        records.received(recent, NODE, T0),  # received long ago, still changing: its whole timeline stays
        outcome(records.Deferred, recent, "b@example.com", T0 + keep + 50, "451 later", 9),
        stray,
    ]))
    now = T0 + keep + 100
    assert sink.prune(now) == 5  # old's message, recipient and two events; the stray event
    assert list(by_id(sink)) == ["new"]
    assert [r["message_id"] for r in rows(sink, recipients)] == ["new"]
    assert sorted(e["type"] for e in rows(sink, events)) == ["deferred", "received"]
    assert sink.prune(now) == 0


def test_history_config(tmp_path: Path) -> None:
    config = load(environ={"FASTMTA_SERVER_DATA_DIR": str(tmp_path)})
    assert (config.history.url, config.history.keep, config.history.keep_bodies) == ("", 30 * 86400, 7 * 86400)
    assert db.url(config) == f"sqlite:///{tmp_path.resolve()}/history.db"
    path = tmp_path / "c.toml"
    path.write_text('[history]\nurl = "postgresql://mta@db.example/history"\nkeep = "90d"\nkeep_bodies = "1d"\n')
    config = load(path, environ={})
    assert (config.history.keep, config.history.keep_bodies) == (90 * 86400, 86400)
    assert db.url(config) == "postgresql+psycopg://mta@db.example/history"
    with pytest.raises(ConfigError, match=r"^history\.url: not an sqlite:// or postgresql:// URL"):
        load(environ={"FASTMTA_HISTORY_URL": "mysql://db.example/history"})


def test_the_events_process_feeds_history(tmp_path: Path) -> None:
    [made] = sinks.configured(load(environ={"FASTMTA_SERVER_DATA_DIR": str(tmp_path), "FASTMTA_HISTORY_ENABLED": "true"}))
    assert isinstance(made, HistorySink) and made.name == "history"
    made.close()


def test_one_batch_of_many_messages_with_changes_between_their_outcomes(sink: HistorySink) -> None:
    # The sink writes a batch a statement per kind of row; the result must be what event-by-event gives.
    first, second, third = (message(f"b{n}", "x@example.com", "y@example.com") for n in range(3))
    batch = [records.received(m, NODE, T0) for m in (first, second, third)] + [
        outcome(records.Deferred, first, "x@example.com", T0 + 1, "451 later", 1),
        outcome(records.Delivered, second, "x@example.com", T0 + 2, "250 ok", 1),
        records.about_message(records.Deleted, "b1", NODE),  # second: y was still queued
        outcome(records.Delivered, second, "y@example.com", T0 + 3, "250 late", 1),  # finished after the delete
        outcome(records.Delivered, first, "x@example.com", T0 + 4, "250 ok", 2),
        outcome(records.Delivered, first, "y@example.com", T0 + 5, "250 ok", 1),
        outcome(records.Failed, third, "x@example.com", T0 + 6, "550 no", 1),
        outcome(records.Delivered, third, "y@example.com", T0 + 7, "250 ok", 1),
    ]
    sink.deliver(numbered(batch))
    found = by_id(sink)
    assert (found["b0"]["status"], found["b0"]["deferred"], found["b0"]["attempts"], found["b0"]["settled_at"]) == (
        "sent", 1, 2, T0 + 5
    )
    assert found["b1"]["status"] == "deleted"
    assert (found["b2"]["status"], found["b2"]["last_reply"]) == ("failed", "250 ok")
    statuses = {(r["message_id"], r["address"]): r["status"] for r in rows(sink, recipients)}
    assert statuses[("b1", "x@example.com")] == "sent" and statuses[("b1", "y@example.com")] == "sent"
    assert statuses[("b2", "x@example.com")] == "failed"
    # A later batch past this one skips the lookup of known ids; a batch offered again does not.
    sink.deliver(numbered(batch))
    assert by_id(sink) == found


def test_a_database_down_at_start_fails_deliveries_not_the_start(tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {"FASTMTA_SERVER_DATA_DIR": str(tmp_path), "FASTMTA_HISTORY_URL": f"postgresql://fastmta@127.0.0.1:{port}/h"}
    made = HistorySink.configured(load(environ=environ))  # no connection yet
    with pytest.raises(sa.exc.OperationalError):
        made.deliver(numbered([records.received(message("m9", "x@example.com"), NODE, T0)]))
    made.close()


def test_retention_runs_with_the_first_batch_then_hourly(sink: HistorySink) -> None:
    old = message("old", "a@example.com")
    sink.clock = lambda: T0 + sink.keep - 600
    sink.deliver(numbered([records.received(old, NODE, T0), outcome(records.Delivered, old, "a@example.com", T0, "250", 1)]))
    assert list(by_id(sink)) == ["old"]  # the first batch ran retention: nothing was old yet
    sink.clock = lambda: T0 + sink.keep + 1800  # old is now past keep, but the hour is not over
    sink.deliver(numbered([records.about_message(records.Retried, "other", NODE)], 3))
    assert list(by_id(sink)) == ["old"]
    sink.clock = lambda: T0 + sink.keep + 3600 * 2
    sink.deliver(numbered([records.about_message(records.Retried, "other", NODE)], 4))
    assert by_id(sink) == {}


@pytest.mark.parametrize("history_config", ["postgresql"], indirect=True)
def test_nodes_migrating_one_database_at_once_migrate_it_once(history_config: Config) -> None:
    """The events processes of a cluster's nodes start together against one PostgreSQL."""
    nodes = 3
    engines = [db.for_writing(history_config) for _ in range(nodes)]
    together = threading.Barrier(nodes)

    def start(engine: sa.Engine) -> None:
        together.wait()
        db.migrate(engine)

    try:
        with ThreadPoolExecutor(nodes) as pool:
            list(pool.map(start, engines))  # re-raises what any of them raised
        with engines[0].connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() is not None
    finally:
        for engine in engines:
            engine.dispose()
