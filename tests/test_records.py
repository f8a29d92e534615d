"""The agent's record store: handles are reused across versions and within one,
numbered keys, and the upgrade from random handles."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from bureau_agent.records import RecordStore
from psi.identifiers import KeyType, MatchKey
from psi.sequence_ids import SequenceIds

A = MatchKey(KeyType.PASSPORT, "FRA|A1")
B = MatchKey(KeyType.EMAIL, "a@b.org")
C = MatchKey(KeyType.PASSPORT, "FRA|C3")


def enroll(store: RecordStore, records: Sequence[tuple[str, tuple[MatchKey, ...]]]) -> list[bytes]:
    with store.enrollment("d", epoch=1, category="", policy={}) as writer:
        handles = writer.add_records(
            [(rid, line, {"passport": rid}, keys) for line, (rid, keys) in enumerate(records)]
        )
        writer.commit(hub_version=1)
    return handles


def test_handles_are_reused_for_the_same_key_of_the_same_record(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    try:
        first = enroll(store, [("r1", (A, B)), ("r2", (C,)), ("r1", (A,))])
        assert len(first) == 4 and len(set(first)) == 3
        assert first[3] == first[0]  # r1 repeated in the file: its key keeps one handle
        second = enroll(store, [("r2", (C,)), ("r1", (A,)), ("r3", (A,))])
        assert second[0] == first[2] and second[1] == first[0]
        assert second[2] not in first  # the same key of another record: another handle
        # The previous version's other keys are gone; the new ones resolve.
        assert store.record_for_handle(first[1]) is None
        found = store.record_for_handle(second[2])
        assert found is not None and found[:3] == ("d", "r3", "passport")
    finally:
        store.close()


def test_many_records_in_one_batch(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    try:
        records = [(f"r{i}", (MatchKey(KeyType.PASSPORT, f"FRA|{i}"),)) for i in range(1200)]
        first = enroll(store, records)
        # Fresh handles are made in one cipher call per batch: 16 bytes, all different.
        assert {len(h) for h in first} == {16} and len(set(first)) == 1200
        assert enroll(store, records) == first  # lookups chunked below SQLite's variable limit
    finally:
        store.close()


def handle_ids(path: Path) -> SequenceIds:
    with sqlite3.connect(path) as db:
        (key,) = db.execute("SELECT value FROM state WHERE name = 'handle_key'").fetchone()
    return SequenceIds(bytes.fromhex(key))


def test_a_handle_is_the_encryption_of_its_keys_number(tmp_path: Path) -> None:
    """Keys are numbered as they are first enrolled (the table appends) and a
    handle is AES-128 of the number under the store's own key."""
    path = tmp_path / "records.sqlite"
    store = RecordStore(path)
    try:
        handles = enroll(store, [(f"r{i}", (A, B)) for i in range(5)])
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        seqs = [int(r[0]) for r in db.execute("SELECT seq FROM keys ORDER BY rowid")]
    assert seqs == list(range(1, 11))
    assert handles == handle_ids(path).ids(seqs)
    assert handle_ids(path).ids([1]) != SequenceIds(os.urandom(16)).ids([1])


def test_a_deleted_keys_number_and_handle_are_never_given_again(tmp_path: Path) -> None:
    """B (the last number) is dropped by the second version; the third
    version's new key must not get B's number, or B's old handle (which the
    hub holds in matches) would name D's record."""
    store = RecordStore(tmp_path / "records.sqlite")
    try:
        first = enroll(store, [("r1", (A, B))])
        enroll(store, [("r1", (A,))])
        assert store.record_for_handle(first[1]) is None
        third = enroll(store, [("r1", (A,)), ("r4", (C,))])
        assert third[0] == first[0] and third[1] not in first
        assert store.record_for_handle(first[1]) is None
        assert store.known_handles("d", first) == [first[0]]
    finally:
        store.close()


def test_handles_that_name_no_key_are_refused(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    try:
        (handle,) = enroll(store, [("r1", (A,))])
        for bad in (os.urandom(16), b"", handle[:15], bytes(16)):
            assert store.record_for_handle(bad) is None
            assert store.known_handles("d", [bad]) == []
        assert store.known_handles("other", [handle]) == []
    finally:
        store.close()


SCHEMA_1 = """
CREATE TABLE datasets (name TEXT PRIMARY KEY, epoch INTEGER NOT NULL, category TEXT NOT NULL,
    policy TEXT NOT NULL, hub_version INTEGER NOT NULL, generation INTEGER NOT NULL,
    updated REAL NOT NULL);
CREATE TABLE records (dataset TEXT NOT NULL, record_id TEXT NOT NULL, line INTEGER NOT NULL,
    fields TEXT NOT NULL, generation INTEGER NOT NULL, PRIMARY KEY (dataset, record_id))
    WITHOUT ROWID;
CREATE TABLE keys (handle BLOB PRIMARY KEY, dataset TEXT NOT NULL, record_id TEXT NOT NULL,
    key_type TEXT NOT NULL, key_value TEXT NOT NULL, generation INTEGER NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE UNIQUE INDEX keys_by_record ON keys (dataset, record_id, key_type, key_value);
CREATE TABLE state (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE audit_events (idx INTEGER PRIMARY KEY, kind TEXT NOT NULL, expected TEXT NOT NULL);
"""


def test_random_handles_of_schema_1_stay_the_handles_of_their_keys(tmp_path: Path) -> None:
    """A store written before keys were numbered: its keys keep their random
    handles (the hub holds them), new keys get numbered ones after them."""
    path = tmp_path / "records.sqlite"
    old = {("r1", "passport", "FRA|A1"): os.urandom(16), ("r2", "email", "a@b.org"): os.urandom(16)}
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1)
        db.execute(
            "INSERT INTO datasets VALUES ('d', 1, '', '{}', 1, 1, 0)",
        )
        for (rid, key_type, value), handle in old.items():
            db.execute("INSERT INTO records VALUES ('d', ?, 0, '{}', 1)", (rid,))
            db.execute(
                "INSERT INTO keys VALUES (?, 'd', ?, ?, ?, 1, 0)", (handle, rid, key_type, value)
            )
    store = RecordStore(path)
    try:
        a, b = old[("r1", "passport", "FRA|A1")], old[("r2", "email", "a@b.org")]
        assert store.handles_for("d", ["r1", "r2"]) == {"r1": [a], "r2": [b]}
        found = store.record_for_handle(a)
        assert found is not None and found[:3] == ("d", "r1", "passport")
        # The number-derived handle of a migrated key names nothing: only its old one does.
        ids = handle_ids(path)
        assert {store.record_for_handle(h) for h in ids.ids([1, 2])} == {None}
        again = enroll(store, [("r1", (A,)), ("r2", (B,)), ("r3", (C,))])
        assert again[:2] == [a, b]  # re-enrolled keys keep their random handles
        assert again[2] == ids.ids([3])[0]  # a new key is numbered after them
        store.mark_removed([a], hub_version=3, dataset="d")
        assert store.record_for_handle(a) is None and store.known_handles("d", again) == again[1:]
    finally:
        store.close()
    reopened = RecordStore(path)  # the upgrade ran once; opening again changes nothing
    try:
        assert reopened.handles_for("d", ["r2", "r3"]) == {"r2": [again[1]], "r3": [again[2]]}
    finally:
        reopened.close()


def test_opening_a_current_store_takes_no_write_lock(tmp_path: Path) -> None:
    """The agent may open its store while another connection writes (a long
    enrollment holds the write lock for its whole transaction)."""
    path = tmp_path / "records.sqlite"
    RecordStore(path).close()
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        store = RecordStore(path)  # would wait, then fail with "database is locked"
        try:
            assert store.datasets() == []
        finally:
            store.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
