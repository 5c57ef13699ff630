"""The history tables as SQLAlchemy Core sees them, and the rules for changing them.

History outlives upgrades and may be shared by nodes running different versions, so:
1. Every change of the schema is an Alembic revision in migrations/versions/, and this module is
   kept equal to the result of all of them (a test compares the two).
2. A column is never renamed, removed or retyped in place; a new column is nullable or has a
   server default, so rows written before it, and writers that do not know it, still work.
3. Times are seconds since the epoch (float), as events carry them: no time zone to get wrong,
   and the same comparison on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# Message and recipient states in history. "queued" covers deferred mail (its `deferred` count says
# how often); "rejected" is a refusal in the SMTP session, nothing was queued; "deleted" was removed
# from the queue by an operator before every recipient was settled.
QUEUED = "queued"
SENT = "sent"
FAILED = "failed"
REJECTED = "rejected"
DELETED = "deleted"

messages = sa.Table(
    "messages",
    metadata,
    # The queue id; for a refusal in the session, which has none, the id of its rejected event.
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("node", sa.String(255), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("held", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("sender", sa.Text, nullable=False),
    sa.Column("recipients", sa.Integer, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("client_ip", sa.String(64), nullable=False),
    sa.Column("helo", sa.Text, nullable=False),
    sa.Column("auth_user", sa.Text, nullable=False),
    sa.Column("listener", sa.String(64), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("header_message_id", sa.Text, nullable=False),
    sa.Column("header_from", sa.Text, nullable=False),
    sa.Column("header_to", sa.Text, nullable=False),
    sa.Column("workspace_id", sa.String(255), nullable=False),
    sa.Column("campaign_id", sa.String(255), nullable=False),
    sa.Column("user_id", sa.String(255), nullable=False),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("settled_at", sa.Double),
    sa.Column("last_reply", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("deferred", sa.Integer, nullable=False),
    # The filters of GET /api/v1/messages, and updated_at for retention.
    sa.Index("messages_status", "status", "received_at"),
    sa.Index("messages_workspace", "workspace_id", "received_at"),
    sa.Index("messages_campaign", "campaign_id", "received_at"),
    sa.Index("messages_sender", "sender", "received_at"),
    sa.Index("messages_received", "received_at"),
    sa.Index("messages_updated", "updated_at"),
)

# One row per distinct recipient address of a message: its outcome decides the message's status.
recipients = sa.Table(
    "recipients",
    metadata,
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("address", sa.Text, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("deferred", sa.Integer, nullable=False),
    sa.Column("last_reply", sa.Text, nullable=False),
    sa.Column("remote_host", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),  # the event's UUIDv7, which sinks deduplicate on
    sa.Column("seq", sa.BigInteger, nullable=False),  # its outbox sequence number on its node
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("node", sa.String(255), nullable=False),
    sa.Column("message_id", sa.String(64)),  # NULL for events about no message (auth_failed)
    sa.Column("recipient", sa.Text, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),  # the whole event as the outbox held it
    # When history stored it (microseconds since the epoch, the writer's clock): followers of the
    # event stream read in this order (history/events.py says why not in the order of `at` or `id`).
    sa.Column("stored_at", sa.BigInteger),
    sa.Index("events_message", "message_id", "at"),
    sa.Index("events_at", "at"),
    sa.Index("events_stored", "stored_at", "id"),
)

# Events a sink gave up on (a webhook receiver refused them or kept failing past [events] retry_for;
# delivery report entries rejected report_max_attempts times), kept until an operator replays them.
# A replay is asked for through the admin API (replay_requested_at) and done by the sink itself.
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sink", sa.String(255), nullable=False),  # "webhook:<name>", "report"
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),  # the name the receiver knows it by (message.sent, ...)
    sa.Column("payload", sa.JSON, nullable=False),  # what the receiver is sent, less the signature
    sa.Column("reason", sa.Text, nullable=False),  # the last failure
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("replay_requested_at", sa.Double),
    sa.Column("replayed_at", sa.Double),
    # One row per event and sink: a batch dead-lettered twice (the outbox offers it again after a
    # crash) leaves one row, and a replay that fails again updates the row it came from.
    sa.Index("dead_letters_event", "sink", "event_id", unique=True),
    sa.Index("dead_letters_replay", "sink", "replay_requested_at"),
)

# Delivery report entries the receiver answered as rejected: sent again with a later report.
report_retries = sa.Table(
    "report_retries",
    metadata,
    sa.Column("event_id", sa.String(36), primary_key=True),
    sa.Column("entry", sa.JSON, nullable=False),  # as it goes in the report's delivery_report list
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("retry_at", sa.Double, nullable=False),
    sa.Index("report_retries_due", "retry_at"),
)

# SMTP AUTH accounts, admin API tokens and the audit log, here when [history] url is PostgreSQL: every
# node of a cluster then reads and writes the same ones (fastmta/access/stores.py chooses). Their
# records' fields are the columns; access/sql.py maps one to the other.
users = sa.Table(
    "users",
    metadata,
    sa.Column("username", sa.String(128), primary_key=True),  # normalised: lower case
    sa.Column("password_hash", sa.Text, nullable=False),  # argon2id's encoded hash, never the password
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("quota", sa.BigInteger, nullable=False),  # messages a day; 0 = unlimited
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(12), primary_key=True),  # the id part of fmta_<id>_<secret>
    sa.Column("name", sa.Text, nullable=False, unique=True),  # the API's are 64 characters, the CLI's any
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),  # SHA-256 of the secret, hex; never the secret
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
)

audit = sa.Table(
    "audit",
    metadata,
    # The entry's time in nanoseconds and four random bytes, in hex: in time order, unique across nodes.
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("before", sa.JSON(none_as_null=True)),
    sa.Column("after", sa.JSON(none_as_null=True)),
    sa.Column("client_ip", sa.String(64), nullable=False),
    sa.Column("user_agent", sa.Text, nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),  # a client's X-Request-Id: up to 128 characters
    # The filters of GET /api/v1/audit and of a message's page, newest first.
    sa.Index("audit_actor", "actor", "id"),
    sa.Index("audit_action", "action", "id"),
    sa.Index("audit_target", "target", "id"),
)
