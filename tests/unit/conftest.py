"""History databases for sink tests: SQLite in a temporary directory, or a fresh database of one private PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
import sqlalchemy as sa

from fastmta.access.stores import Access
from fastmta.config import Config, load
from fastmta.events.history import HistorySink
from fastmta.history import db, schema
from tests import postgres


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if postgres.binaries() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    with postgres.server(tmp_path_factory.mktemp("postgres")) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def history_config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    """A config whose [history] is SQLite in tmp_path or a database of its own in the session's PostgreSQL."""
    return _config(request, tmp_path / "var", request.param == "postgresql")


def _config(request: pytest.FixtureRequest, data_dir: Path, postgresql: bool) -> Config:
    environ = {"FASTMTA_SERVER_DATA_DIR": str(data_dir)}
    if postgresql:
        server: str = request.getfixturevalue("postgres_server")
        name = f"history_{uuid.uuid4().hex}"
        admin = sa.create_engine(db.url(load(environ={"FASTMTA_HISTORY_URL": server})), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
        admin.dispose()
        environ["FASTMTA_HISTORY_URL"] = server.rsplit("/", 1)[0] + "/" + name
    return load(environ=environ)


def _access_database(request: pytest.FixtureRequest, data_dir: Path, postgresql: bool) -> Iterator[sa.Engine]:
    made = db.opened(_config(request, data_dir, postgresql))
    yield made
    made.dispose()


# One database of each kind for the access tests of a session, emptied before each (access below):
# making and migrating a database per test would cost more than the tests.
@pytest.fixture(scope="session")
def sqlite_access(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    yield from _access_database(request, tmp_path_factory.mktemp("access"), postgresql=False)


@pytest.fixture(scope="session")
def postgres_access(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    yield from _access_database(request, tmp_path_factory.mktemp("access"), postgresql=True)


@pytest.fixture(params=["lmdb", "sqlite", "postgresql"])
def access(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Access]:
    """Users, tokens and audit log in each place they can be kept: a node's queue.lmdb (an environment
    with other databases, as the queue store opens it), SQLite, PostgreSQL; empty."""
    if request.param == "lmdb":
        env = lmdb.open(str(tmp_path / "queue.lmdb"), map_size=1 << 24, max_dbs=16)
        yield Access.local(env)
        env.close()
        return
    engine: sa.Engine = request.getfixturevalue("sqlite_access" if request.param == "sqlite" else "postgres_access")
    with engine.begin() as connection:
        for table in (schema.users, schema.tokens, schema.audit):
            connection.execute(sa.delete(table))
    yield Access.sql(engine)


@pytest.fixture
def engine(history_config: Config) -> Iterator[sa.Engine]:
    made = db.opened(history_config)
    yield made
    made.dispose()


# The time the sink tests' events happen at.
T0 = 1_700_000_000.0


@pytest.fixture
def sink(history_config: Config) -> Iterator[HistorySink]:
    """A history sink on SQLite and on PostgreSQL (tests/unit/conftest.py)."""
    made = HistorySink.configured(history_config)
    db.ready(made.engine)  # as the first batch would
    made.clock = lambda: T0 + 3600  # the tests' events happen at T0: retention must not find them old
    yield made
    made.close()
