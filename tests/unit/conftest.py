"""History databases for sink tests: SQLite in a temporary directory, or a fresh database of one private PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from fastmta.config import Config, load
from fastmta.events.history import HistorySink
from fastmta.history import db
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
    environ = {"FASTMTA_SERVER_DATA_DIR": str(tmp_path / "var")}
    if request.param == "postgresql":
        server: str = request.getfixturevalue("postgres_server")
        name = f"history_{uuid.uuid4().hex}"
        admin = sa.create_engine(db.url(load(environ={"FASTMTA_HISTORY_URL": server})), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
        admin.dispose()
        environ["FASTMTA_HISTORY_URL"] = server.rsplit("/", 1)[0] + "/" + name
    return load(environ=environ)


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
