"""The agent's local store: the bureau's own records and the handles it enrolled.

Plaintext identifiers live here and nowhere else.  One SQLite file (WAL,
synchronous=FULL).  A handle is 16 random bytes standing for one match key
of one record; re-enrolling the same key of the same record reuses its handle,
so the hub's standing-match deduplication and earlier match ids stay valid.

Enrollment is one local transaction (`EnrollmentWriter`): keys of the new
version are written under a new generation, the previous generation is
deleted at the end, and the transaction commits only after the hub has
acknowledged the version, so a failed enrollment leaves the local store as
it was.  (If the agent dies between the hub's commit and its own, the hub
holds handles the agent does not know; they match, but a disclosure of
them is answered as "record removed".  The next enrollment repairs it.)
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from psi.identifiers import MatchKey

__all__ = ["EnrollmentWriter", "LocalDataset", "RecordStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    category TEXT NOT NULL,
    policy TEXT NOT NULL,
    hub_version INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    dataset TEXT NOT NULL,
    record_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    fields TEXT NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (dataset, record_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    handle BLOB PRIMARY KEY,
    dataset TEXT NOT NULL,
    record_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_value TEXT NOT NULL,
    generation INTEGER NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS keys_by_record ON keys (dataset, record_id, key_type, key_value);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_events (
    idx INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    expected TEXT NOT NULL
);
"""


_IN_CHUNK = 500  # record ids per `IN (...)` lookup, well below SQLite's variable limit
HANDLE_BYTES = 16  # a key's handle: random, meaningless to anyone but its owner


@dataclass(frozen=True)
class LocalDataset:
    """What the agent remembers of one of its datasets."""

    name: str
    epoch: int
    category: str
    policy: Mapping[str, bool]
    hub_version: int
    generation: int
    updated: float


class RecordStore:
    """The bureau's records and handles (one writer connection, used from one thread)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if fresh:
            os.chmod(path, 0o600)  # plaintext identifiers: owner only
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- datasets --------------------------------------------------------

    def dataset(self, name: str) -> LocalDataset | None:
        row = self._db.execute(
            "SELECT name, epoch, category, policy, hub_version, generation, updated "
            "FROM datasets WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return None
        return LocalDataset(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6])

    def datasets(self) -> list[LocalDataset]:
        names = [r[0] for r in self._db.execute("SELECT name FROM datasets ORDER BY name")]
        return [d for d in (self.dataset(n) for n in names) if d is not None]

    # -- enrollment ------------------------------------------------------

    @contextmanager
    def enrollment(
        self, name: str, *, epoch: int, category: str, policy: Mapping[str, bool]
    ) -> Iterator[EnrollmentWriter]:
        """One transaction for a new version of `name`; commit with `writer.commit(...)`."""
        self._db.execute("BEGIN IMMEDIATE")
        writer = EnrollmentWriter(self._db, name, epoch, category, dict(policy))
        try:
            yield writer
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if not writer.committed:
            self._db.execute("ROLLBACK")

    # -- lookups ---------------------------------------------------------

    def handles_for(self, dataset: str, record_ids: Iterable[str]) -> dict[str, list[bytes]]:
        """The live handles of each record id (absent ids are left out)."""
        out: dict[str, list[bytes]] = {}
        for record_id in record_ids:
            rows = self._db.execute(
                "SELECT handle FROM keys WHERE dataset = ? AND record_id = ? AND removed = 0",
                (dataset, record_id),
            ).fetchall()
            if rows:
                out[record_id] = [r[0] for r in rows]
        return out

    def known_handles(self, dataset: str, handles: Iterable[bytes]) -> list[bytes]:
        """Those of `handles` that are live keys of `dataset`."""
        return [
            h
            for h in handles
            if self._db.execute(
                "SELECT 1 FROM keys WHERE handle = ? AND dataset = ? AND removed = 0",
                (h, dataset),
            ).fetchone()
        ]

    def mark_removed(self, handles: Sequence[bytes], hub_version: int, dataset: str) -> None:
        with self._transaction():
            self._db.executemany(
                "UPDATE keys SET removed = 1 WHERE handle = ?", [(h,) for h in handles]
            )
            self._db.execute(
                "UPDATE datasets SET hub_version = ?, updated = ? WHERE name = ?",
                (hub_version, time.time(), dataset),
            )

    def record_for_handle(self, handle: bytes) -> tuple[str, str, str, dict[str, str]] | None:
        """(dataset, record_id, key_type, fields) of a live handle, for disclosure."""
        row = self._db.execute(
            "SELECT k.dataset, k.record_id, k.key_type, r.fields FROM keys k "
            "JOIN records r ON r.dataset = k.dataset AND r.record_id = k.record_id "
            "WHERE k.handle = ? AND k.removed = 0",
            (handle,),
        ).fetchone()
        if row is None:
            return None
        return row[0], row[1], row[2], json.loads(row[3])

    # -- small persistent state (cursors) --------------------------------

    def get_state(self, name: str, default: str = "") -> str:
        row = self._db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else default

    def set_state(self, name: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO state (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    # -- own audit events ------------------------------------------------

    def record_audit_event(self, index: int, kind: str, expected: str) -> None:
        """Remember that the hub logged an event of ours at leaf `index`."""
        self._db.execute(
            "INSERT OR REPLACE INTO audit_events (idx, kind, expected) VALUES (?, ?, ?)",
            (index, kind, expected),
        )

    def audit_events(self) -> list[tuple[int, str, str]]:
        """(leaf index, kind, expected fields as JSON) of every own event, in order."""
        rows = self._db.execute("SELECT idx, kind, expected FROM audit_events ORDER BY idx")
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


class EnrollmentWriter:
    """Writes one dataset version inside the store's open transaction."""

    def __init__(
        self,
        db: sqlite3.Connection,
        name: str,
        epoch: int,
        category: str,
        policy: dict[str, bool],
    ) -> None:
        self._db = db
        self.name = name
        self.epoch = epoch
        self.category = category
        self.policy = policy
        row = db.execute("SELECT generation FROM datasets WHERE name = ?", (name,)).fetchone()
        self.exists = row is not None
        self.generation = (row[0] if row else 0) + 1
        self.committed = False

    def add_record(
        self, record_id: str, line: int, fields: Mapping[str, str], keys: Sequence[MatchKey]
    ) -> list[bytes]:
        """Store a record; one handle per key, reused when the key was enrolled before."""
        return self.add_records([(record_id, line, fields, keys)])

    def add_records(
        self, records: Sequence[tuple[str, int, Mapping[str, str], Sequence[MatchKey]]]
    ) -> list[bytes]:
        """Store a batch of (record id, line, fields, keys); the handles of all
        their keys, in order.  A key enrolled before (in an earlier version, or
        earlier in this one when a file repeats a record) keeps its handle.
        A few statements per batch, not per key: this is on the enrollment's
        hot path."""
        self._db.executemany(
            "INSERT INTO records (dataset, record_id, line, fields, generation) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (dataset, record_id) DO UPDATE SET "
            "line = excluded.line, fields = excluded.fields, generation = excluded.generation",
            [
                (
                    self.name,
                    rid,
                    line,
                    json.dumps(dict(fields), ensure_ascii=False),
                    self.generation,
                )
                for rid, line, fields, _ in records
            ],
        )
        known = self._known_handles({rid for rid, _, _, _ in records})
        handles: list[bytes] = []
        reused: list[tuple[int, bytes]] = []
        new: list[tuple[bytes, str, str, str, str, int]] = []
        # One read of the system's random source for the whole batch.
        pool = secrets.token_bytes(HANDLE_BYTES * sum(len(keys) for _, _, _, keys in records))
        drawn = 0
        for rid, _, _, keys in records:
            for key in keys:
                where = (rid, key.type.value, key.value)
                handle = known.get(where)
                if handle is not None:
                    reused.append((self.generation, handle))
                else:
                    handle = pool[drawn : drawn + HANDLE_BYTES]
                    drawn += HANDLE_BYTES
                    known[where] = handle
                    new.append((handle, self.name, *where, self.generation))
                handles.append(handle)
        self._db.executemany("UPDATE keys SET generation = ?, removed = 0 WHERE handle = ?", reused)
        self._db.executemany(
            "INSERT INTO keys (handle, dataset, record_id, key_type, key_value, generation) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            new,
        )
        return handles

    def _known_handles(self, record_ids: set[str]) -> dict[tuple[str, str, str], bytes]:
        """The stored handles of these records' keys, by (record id, type, value)."""
        out: dict[tuple[str, str, str], bytes] = {}
        ids = list(record_ids)
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))  # placeholders only
            rows = self._db.execute(
                "SELECT record_id, key_type, key_value, handle FROM keys "  # noqa: S608
                f"WHERE dataset = ? AND record_id IN ({marks})",
                (self.name, *chunk),
            )
            for rid, key_type, key_value, handle in rows:
                out[(rid, key_type, key_value)] = bytes(handle)
        return out

    def commit(self, hub_version: int) -> None:
        """Drop what the new version no longer has, record the hub's version, commit."""
        self._db.execute(
            "DELETE FROM keys WHERE dataset = ? AND generation < ?", (self.name, self.generation)
        )
        self._db.execute(
            "DELETE FROM records WHERE dataset = ? AND generation < ?",
            (self.name, self.generation),
        )
        self._db.execute(
            "INSERT INTO datasets (name, epoch, category, policy, hub_version, generation, "
            "updated) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "epoch = excluded.epoch, category = excluded.category, policy = excluded.policy, "
            "hub_version = excluded.hub_version, generation = excluded.generation, "
            "updated = excluded.updated",
            (
                self.name,
                self.epoch,
                self.category,
                json.dumps(self.policy, sort_keys=True),
                hub_version,
                self.generation,
                time.time(),
            ),
        )
        self._db.execute("COMMIT")
        self.committed = True
