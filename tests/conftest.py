"""Fixtures shared by the hub's tests: the store under test, parametrized
over SQLite and a real PostgreSQL server (one per session, started from the
Debian packages by `tests.pg`; an empty database per test).

Without PostgreSQL installed the PostgreSQL cases are skipped, unless the
environment variable CI is set: then they fail, saying what to install.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer, PostgresUnavailable
from tests.stores import StoreBackend

STORES = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; CI is set, so the PostgreSQL tests may not be skipped")
        pytest.skip(str(exc))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """An empty database of its own, dropped after the test."""
    dsn = postgres_server.new_database()
    yield dsn
    postgres_server.drop_database(dsn)


@pytest.fixture(params=STORES)
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """The store under test: each test that uses it runs once per store."""
    if request.param == "sqlite":
        return StoreBackend("sqlite", str(tmp_path / "hub.sqlite"))
    return StoreBackend("postgres", request.getfixturevalue("postgres_dsn"))


@pytest.fixture
def open_store(store_backend: StoreBackend) -> StoreBackend:
    """Opens the store under test (again, on the same data, when called twice)."""
    return store_backend
