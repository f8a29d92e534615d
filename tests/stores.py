"""The hub's stores as the tests see them: one `StoreBackend` per
implementation (the `open_store` and `store_backend` fixtures in
`conftest.py` are parametrized over them), opening the store under test
again on the same data, reading its tables directly, and naming it to a
child process or a `HubConfig`."""

from __future__ import annotations

import dataclasses
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from hub.config import HubConfig
from hub.store import HubStore, SqliteTagStore
from hub.store_pg import PostgresTagStore

__all__ = ["CHILD_OPEN", "StoreBackend"]

# Python source for a child process: `open_store(argv)` opens the store that
# `StoreBackend.argv` names.
CHILD_OPEN = """
from pathlib import Path

async def open_store(argv):
    kind, where = argv[1], argv[2]
    if kind == "sqlite":
        from hub.store import SqliteTagStore
        return await SqliteTagStore.open(Path(where), auto_sweep=False)
    from hub.store_pg import PostgresTagStore
    return await PostgresTagStore.open(where, auto_sweep=False)
"""


@dataclass(frozen=True)
class StoreBackend:
    """One store implementation over one (per-test) database."""

    kind: str  # "sqlite" or "postgres"
    where: str  # the SQLite file, or the PostgreSQL DSN

    async def __call__(self) -> HubStore:
        """Open the store (again, on the same data, when called twice)."""
        if self.kind == "sqlite":
            return await SqliteTagStore.open(Path(self.where), auto_sweep=False)
        return await PostgresTagStore.open(self.where, auto_sweep=False)

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (`?` placeholders) on the database directly."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.where) as conn:
                found = conn.execute(sql, args).fetchall()
            conn.close()
            return found
        with psycopg.connect(self.where, autocommit=True) as pg:
            cursor = pg.execute(sql.replace("?", "%s"), args)
            return cursor.fetchall() if cursor.description else []

    def scalar(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        """The single value a query returns."""
        ((value,),) = self.rows(sql, args)
        return value

    def forget_match_numbering(self, new_ids: dict[bytes, bytes]) -> None:
        """Turn the database back into what stores made before match ids were
        encrypted sequence numbers (SQLite schema 3: matches keyed by id;
        PostgreSQL schema 1), every match kept, each id replaced as
        `new_ids` says (random ones, as those stores made)."""
        if self.kind == "sqlite":
            script = [
                "CREATE TABLE m3 (match_id BLOB PRIMARY KEY, kind INTEGER NOT NULL, "
                "requester TEXT NOT NULL, requester_dataset_id INTEGER, requester_handle BLOB, "
                "owner TEXT NOT NULL, dataset_id INTEGER NOT NULL, handle BLOB NOT NULL, "
                "key_type INTEGER NOT NULL, created_ms INTEGER NOT NULL, tag BLOB) WITHOUT ROWID",
                "INSERT INTO m3 SELECT match_id, kind, requester, requester_dataset_id, "
                "requester_handle, owner, dataset_id, handle, key_type, created_ms, tag "
                "FROM matches",
                "DROP TABLE matches",
                "ALTER TABLE m3 RENAME TO matches",
                "DROP TABLE legacy_match_ids",
                "DROP TABLE hub_secrets",
                "PRAGMA user_version = 3",
            ]
        else:
            script = [
                "DROP TABLE legacy_match_ids",
                "DROP TABLE hub_secrets",
                "ALTER TABLE matches DROP COLUMN seq",
                "UPDATE meta SET value = 1 WHERE key = 'schema_version'",
            ]
        statements: list[tuple[str, tuple[bytes, ...]]] = [(sql, ()) for sql in script]
        for old, new in new_ids.items():
            for table in ("matches", "notices", "links", "disclosures"):
                sql = f"UPDATE {table} SET match_id = ? WHERE match_id = ?"  # noqa: S608
                statements.append((sql, (new, old)))
        if self.kind == "sqlite":
            with sqlite3.connect(self.where, isolation_level=None) as conn:
                for sql, args in statements:
                    conn.execute(sql, args)
            conn.close()
            return
        with psycopg.connect(self.where, autocommit=True) as pg:
            for sql, args in statements:
                pg.execute(sql.replace("?", "%s"), args)

    @property
    def argv(self) -> list[str]:
        """Arguments for a child process's `open_store` (see `CHILD_OPEN`)."""
        return [self.kind, self.where]

    def configure(self, config: HubConfig) -> HubConfig:
        """`config` with this store."""
        if self.kind == "sqlite":
            return dataclasses.replace(config, store="sqlite", database=Path(self.where))
        return dataclasses.replace(config, store="postgres", postgres_dsn=self.where, database=None)
