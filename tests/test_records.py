"""The agent's record store: handles are reused across versions and within one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bureau_agent.records import RecordStore
from psi.identifiers import KeyType, MatchKey

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
        # Fresh handles are drawn from one random read per batch: 16 bytes, all different.
        assert {len(h) for h in first} == {16} and len(set(first)) == 1200
        assert enroll(store, records) == first  # lookups chunked below SQLite's variable limit
    finally:
        store.close()
