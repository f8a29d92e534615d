"""The agent's local store: the bureau's own records and the handles it enrolled.

Plaintext identifiers live here and nowhere else.  One SQLite file (WAL,
synchronous=FULL).  A handle is 16 bytes standing for one match key of one
record, meaningless to anyone but its owner; re-enrolling the same key of
the same record reuses its handle, so the hub's standing-match
deduplication and earlier match ids stay valid.

Keys are numbered (AUTOINCREMENT: a number is never used twice, even after
its key is deleted) and a key's handle is the AES-128 encryption of its
number under a key kept in this file (`psi.sequence_ids`), so that a
version's new keys append to the table instead of landing on random pages
(random 16-byte handles as the key made each insert slower as the table
grew).  Handles given out before (random ones, schema 1) stay the handles
of their keys through `legacy_handles`.

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
from psi.sequence_ids import KEY_LENGTH, SequenceIds

__all__ = ["EnrollmentWriter", "LocalDataset", "RecordStore"]

_SCHEMA_VERSION = 2
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
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_events (
    idx INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    expected TEXT NOT NULL
);
"""
# Schema 2's keys, one statement each (they run inside the migration's transaction).
_KEYS_SCHEMA = (
    "CREATE TABLE keys ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " dataset TEXT NOT NULL, record_id TEXT NOT NULL, key_type TEXT NOT NULL,"
    " key_value TEXT NOT NULL, generation INTEGER NOT NULL,"
    " removed INTEGER NOT NULL DEFAULT 0)",
    "CREATE UNIQUE INDEX keys_by_record ON keys (dataset, record_id, key_type, key_value)",
    "CREATE TABLE legacy_handles ("
    " handle BLOB PRIMARY KEY, seq INTEGER NOT NULL UNIQUE) WITHOUT ROWID",
)
_KEY_COLUMNS = "dataset, record_id, key_type, key_value, generation, removed"
_HANDLE_KEY = "handle_key"  # the `state` entry holding the handles' AES key (hex)


_IN_CHUNK = 500  # record ids per `IN (...)` lookup, well below SQLite's variable limit


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
        self._handles = _Handles(self._db, _migrate(self._db))

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
        writer = EnrollmentWriter(self._db, self._handles, name, epoch, category, dict(policy))
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
                "SELECT k.seq, l.handle FROM keys k LEFT JOIN legacy_handles l ON l.seq = k.seq "
                "WHERE k.dataset = ? AND k.record_id = ? AND k.removed = 0 ORDER BY k.seq",
                (dataset, record_id),
            ).fetchall()
            if rows:
                out[record_id] = self._handles.of(rows)
        return out

    def known_handles(self, dataset: str, handles: Iterable[bytes]) -> list[bytes]:
        """Those of `handles` that are live keys of `dataset`."""
        return [
            h
            for h in handles
            if (seq := self._handles.seq_of(h)) is not None
            and self._db.execute(
                "SELECT 1 FROM keys WHERE seq = ? AND dataset = ? AND removed = 0",
                (seq, dataset),
            ).fetchone()
        ]

    def mark_removed(self, handles: Sequence[bytes], hub_version: int, dataset: str) -> None:
        seqs = [(seq,) for h in handles if (seq := self._handles.seq_of(h)) is not None]
        with self._transaction():
            self._db.executemany("UPDATE keys SET removed = 1 WHERE seq = ?", seqs)
            self._db.execute(
                "UPDATE datasets SET hub_version = ?, updated = ? WHERE name = ?",
                (hub_version, time.time(), dataset),
            )

    def record_for_handle(self, handle: bytes) -> tuple[str, str, str, dict[str, str]] | None:
        """(dataset, record_id, key_type, fields) of a live handle, for disclosure."""
        seq = self._handles.seq_of(handle)
        if seq is None:
            return None
        row = self._db.execute(
            "SELECT k.dataset, k.record_id, k.key_type, r.fields FROM keys k "
            "JOIN records r ON r.dataset = k.dataset AND r.record_id = k.record_id "
            "WHERE k.seq = ? AND k.removed = 0",
            (seq,),
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
        handles: _Handles,
        name: str,
        epoch: int,
        category: str,
        policy: dict[str, bool],
    ) -> None:
        self._db = db
        self._handles = handles
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
        where_of = [(rid, key.type.value, key.value) for rid, _, _, keys in records for key in keys]
        # New keys take the next numbers (the table appends); their handles
        # are made in one cipher call.
        fresh = list(dict.fromkeys(w for w in where_of if w not in known))
        first = self._handles.next_seq()
        seqs = range(first, first + len(fresh))
        for where, seq, handle in zip(fresh, seqs, self._handles.ids(seqs), strict=True):
            known[where] = (seq, handle)
        self._db.executemany(
            "INSERT INTO keys (seq, dataset, record_id, key_type, key_value, generation) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(known[w][0], self.name, *w, self.generation) for w in fresh],
        )
        new = set(fresh)
        self._db.executemany(
            "UPDATE keys SET generation = ?, removed = 0 WHERE seq = ?",
            [(self.generation, known[w][0]) for w in dict.fromkeys(where_of) if w not in new],
        )
        return [known[w][1] for w in where_of]

    def _known_handles(self, record_ids: set[str]) -> dict[tuple[str, str, str], tuple[int, bytes]]:
        """(number, handle) of these records' stored keys, by (record id, type, value)."""
        rows: list[tuple[str, str, str, int, bytes | None]] = []
        ids = list(record_ids)
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))  # placeholders only
            rows += self._db.execute(
                "SELECT k.record_id, k.key_type, k.key_value, k.seq, l.handle FROM keys k "  # noqa: S608
                "LEFT JOIN legacy_handles l ON l.seq = k.seq "
                f"WHERE k.dataset = ? AND k.record_id IN ({marks})",
                (self.name, *chunk),
            ).fetchall()
        handles = self._handles.of([(seq, legacy) for _, _, _, seq, legacy in rows])
        return {
            (rid, key_type, key_value): (seq, handle)
            for (rid, key_type, key_value, seq, _), handle in zip(rows, handles, strict=True)
        }

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


class _Handles:
    """Handles of numbered keys: AES-128 of the number, or the random handle a
    key had before keys were numbered (`legacy_handles`)."""

    def __init__(self, db: sqlite3.Connection, ids: SequenceIds) -> None:
        self._db = db
        self._ids = ids

    def ids(self, seqs: Sequence[int]) -> list[bytes]:
        """The handles of keys numbered `seqs` that have no legacy handle."""
        return self._ids.ids(seqs)

    def of(self, rows: Sequence[tuple[int, bytes | None]]) -> list[bytes]:
        """The handle of each (number, legacy handle or None)."""
        made = iter(self._ids.ids([seq for seq, legacy in rows if legacy is None]))
        return [bytes(legacy) if legacy is not None else next(made) for _, legacy in rows]

    def next_seq(self) -> int:
        """The first number no key has ever had (inside the writer's transaction)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'keys'").fetchone()
        return (int(row[0]) if row else 0) + 1

    def seq_of(self, handle: bytes) -> int | None:
        """The number of the key `handle` stands for, or None when it stands for none."""
        row = self._db.execute(
            "SELECT seq FROM legacy_handles WHERE handle = ?", (handle,)
        ).fetchone()
        if row is not None:
            return int(row[0])
        seq = self._ids.seq_of(handle)
        if seq is None:
            return None
        # A key with a legacy handle answers to that handle only.
        legacy = self._db.execute("SELECT 1 FROM legacy_handles WHERE seq = ?", (seq,)).fetchone()
        return None if legacy else seq


def _migrate(db: sqlite3.Connection) -> SequenceIds:
    """Bring the keys to schema 2 (numbered; old random handles kept in
    `legacy_handles`), in one transaction; the handles' cipher.  A current
    store is only read (no write lock)."""
    key = _handle_key(db)
    if key is not None and _schema_version(db) >= _SCHEMA_VERSION:
        return SequenceIds(key)
    db.execute("BEGIN IMMEDIATE")
    try:
        if _schema_version(db) < _SCHEMA_VERSION:
            columns = {str(r[1]) for r in db.execute("PRAGMA table_info(keys)")}
            if columns:  # schema 1: keys keyed by their random handles
                db.execute("ALTER TABLE keys RENAME TO keys_v1")
                db.execute("DROP INDEX IF EXISTS keys_by_record")
            for statement in _KEYS_SCHEMA:
                db.execute(statement)
            if columns:
                db.execute(
                    f"INSERT INTO keys ({_KEY_COLUMNS}) SELECT {_KEY_COLUMNS} FROM keys_v1 "  # noqa: S608
                    "ORDER BY dataset, record_id, key_type, key_value"
                )
                db.execute(
                    "INSERT INTO legacy_handles (handle, seq) SELECT o.handle, k.seq "
                    "FROM keys_v1 o JOIN keys k ON k.dataset = o.dataset "
                    "AND k.record_id = o.record_id AND k.key_type = o.key_type "
                    "AND k.key_value = o.key_value"
                )
                db.execute("DROP TABLE keys_v1")
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        key = _handle_key(db)
        if key is None:
            key = secrets.token_bytes(KEY_LENGTH)
            db.execute("INSERT INTO state (name, value) VALUES (?, ?)", (_HANDLE_KEY, key.hex()))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return SequenceIds(key)


def _schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _handle_key(db: sqlite3.Connection) -> bytes | None:
    row = db.execute("SELECT value FROM state WHERE name = ?", (_HANDLE_KEY,)).fetchone()
    return None if row is None else bytes.fromhex(str(row[0]))
