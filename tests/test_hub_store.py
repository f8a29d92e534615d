"""The hub's pure domain (hub.policy) and its tag store.

Store tests go through the `TagStore` protocol and the `open_store`
fixture (`conftest.py`), parametrized by implementation: each runs on
SQLite and on PostgreSQL.  Tests that look at the tables read them through
`StoreBackend.rows`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindmatch.v1 import common_pb2, hub_pb2
from hub import policy
from hub._store_sql import _CHUNK, _Dataset, _LiveDatasets, _searched
from hub.errors import (
    AlreadyExistsError,
    ConcurrentEnrollmentError,
    FailedPreconditionError,
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
)
from hub.policy import DatasetPolicy, EnrollSpec, QueryTag, TaggedKey
from hub.store import TagStore
from psi.errors import InvalidInputError, PeerError
from psi.identifiers import KeyType, Strength
from tests.stores import CHILD_OPEN, StoreBackend

T = TypeVar("T")
OpenStore = Callable[[], Awaitable[TagStore]]

LINKABLE = DatasetPolicy(linkable=True)
PRIVATE = DatasetPolicy()
# More keys than one staging chunk, so that staged rows are really on disk.
BIG = _CHUNK + 1000


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def keys(n: int, key_type: KeyType = KeyType.PASSPORT) -> list[TaggedKey]:
    return [TaggedKey(os.urandom(16), os.urandom(16), key_type) for _ in range(n)]


def queries(ks: Sequence[TaggedKey]) -> list[QueryTag]:
    return [QueryTag(k.tag, k.key_type) for k in ks]


async def enroll(
    store: TagStore,
    owner: str,
    name: str,
    ks: Sequence[TaggedKey],
    *,
    epoch: int = 1,
    policy_: DatasetPolicy = PRIVATE,
    category: str = "",
    replace: bool = False,
) -> policy.EnrollResult:
    enrollment = await store.begin_enrollment(
        owner, EnrollSpec(name, epoch, policy_, category, replace)
    )
    for start in range(0, len(ks), 2500):
        await enrollment.add(ks[start : start + 2500])
    return await enrollment.commit(len(ks), policy.digest_of(ks))


async def hit_indices(
    store: TagStore, requester: str, ks: Sequence[TaggedKey], *, epoch: int = 1, own: bool = False
) -> list[int]:
    result = await store.query(requester, epoch, queries(ks), include_own=own)
    return sorted(h.query_index for h in result.hits)


def with_store(open_store: OpenStore, scenario: Callable[[TagStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = await open_store()
        try:
            await scenario(store)
        finally:
            await store.close()

    run(main())


# -- pure domain ------------------------------------------------------------------


def test_key_type_codes_are_the_proto_enum_numbers() -> None:
    for key_type, code in policy.KEY_TYPE_CODES.items():
        assert common_pb2.KeyType.Value(f"KEY_TYPE_{key_type.name}") == code
        assert policy.key_type_from_code(code) is key_type
    assert set(policy.KEY_TYPE_CODES) == set(KeyType)
    with pytest.raises(InvalidInputError, match=r"tags\[2\]\.key_type: is unspecified"):
        policy.key_type_from_code(0, field="tags[2].key_type")
    with pytest.raises(InvalidInputError, match="99 is not a known key type"):
        policy.key_type_from_code(99)


def test_strength_is_candidate_only_for_phonetic_keys() -> None:
    hits = [policy.Hit(0, "m", kt, "FRA", "c", DatasetPolicy(reveal_owner=True)) for kt in KeyType]
    strengths = {h.key_type: policy.answer(h).strength for h in hits}
    assert strengths.pop(KeyType.PERSON_PHONETIC) is Strength.CANDIDATE
    assert set(strengths.values()) == {Strength.EXACT}


@pytest.mark.parametrize(
    ("reveal_owner", "reveal_category", "category", "owner_shown", "category_shown"),
    [
        (False, False, "stolen", None, None),
        (True, False, "stolen", "DEU", None),
        (False, True, "stolen", None, "stolen"),
        (True, True, "stolen", "DEU", "stolen"),
        (True, True, "", "DEU", None),
    ],
)
def test_answer_masks_by_policy(
    reveal_owner: bool,
    reveal_category: bool,
    category: str,
    owner_shown: str | None,
    category_shown: str | None,
) -> None:
    hit = policy.Hit(
        3, "id", KeyType.PHONE, "DEU", category, DatasetPolicy(reveal_owner, reveal_category)
    )
    shown = policy.answer(hit)
    assert (shown.owner, shown.category) == (owner_shown, category_shown)
    assert (shown.query_index, shown.match_id, shown.key_type) == (3, "id", KeyType.PHONE)


_hits = st.lists(
    st.builds(
        policy.Hit,
        query_index=st.integers(0, 9999),
        match_id=st.binary(min_size=16, max_size=16).map(bytes.hex),
        key_type=st.sampled_from(list(KeyType)),
        owner=st.sampled_from(["DEU", "FRA"]),
        category=st.sampled_from(["", "stolen", "wanted"]),
        policy=st.builds(DatasetPolicy, st.booleans(), st.booleans(), st.booleans()),
    ),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(hits=_hits)
def test_sent_matches_show_exactly_what_answer_decides(hits: list[policy.Hit]) -> None:
    """The service fills each sent Match from fields cached per kind of hit;
    each must equal `policy.answer` applied to that hit alone."""
    from hub.policy import KEY_TYPE_CODES
    from hub.service import add_matches

    sent = hub_pb2.QueryResponse()
    add_matches(sent.matches, hits)
    assert len(sent.matches) == len(hits)
    for match, hit in zip(sent.matches, hits, strict=True):
        shown = policy.answer(hit)
        assert (match.query_index, match.match_id) == (shown.query_index, shown.match_id)
        assert match.key_type == KEY_TYPE_CODES[shown.key_type]
        assert match.strength == (
            common_pb2.STRENGTH_EXACT
            if shown.strength is Strength.EXACT
            else common_pb2.STRENGTH_CANDIDATE
        )
        assert (match.owner if match.HasField("owner") else None) == shown.owner
        assert (match.category if match.HasField("category") else None) == shown.category


@settings(max_examples=200, deadline=None)
@given(hits=_hits)
def test_match_columns_carry_exactly_the_sent_matches(hits: list[policy.Hit]) -> None:
    """A bulk answer in columns, as the agent reads it back, is the answer
    in messages: same matches, same order, same fields."""
    from bureau_agent.local_api import bulk_answer_matches
    from hub.service import add_match_columns, add_matches

    in_messages = hub_pb2.BulkMatchResponse(batch_id=4)
    add_matches(in_messages.matches, hits)
    in_columns = hub_pb2.BulkMatchResponse(batch_id=4)
    add_match_columns(in_columns.match_columns, hits)
    assert in_columns.HasField("match_columns")
    assert len(in_columns.match_columns.kinds) == len(
        {(h.policy, h.owner, h.category, h.key_type) for h in hits}
    )
    assert bulk_answer_matches(in_columns, 10_000) == list(in_messages.matches)
    assert bulk_answer_matches(in_messages, 10_000) == list(in_messages.matches)


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda c: c.query_indices.append(3), "3 query indices"),
        (lambda c: setattr(c, "match_ids", c.match_ids[:-1]), "31 bytes of match ids"),
        (lambda c: c.kind_of.append(0), "3 kinds"),
        (lambda c: c.kind_of.__setitem__(1, 5), "kind 5 of 1"),
        (lambda c: c.query_indices.__setitem__(0, 10), "query index 10 of 10 tags"),
    ],
)
def test_malformed_match_columns_are_refused(
    damage: Callable[[hub_pb2.MatchColumns], None], fragment: str
) -> None:
    from bureau_agent.local_api import bulk_answer_matches
    from hub.service import add_match_columns

    hit = policy.Hit(2, bytes(16).hex(), KeyType.PASSPORT, "FRA", "", DatasetPolicy())
    answer = hub_pb2.BulkMatchResponse(batch_id=9)
    add_match_columns(answer.match_columns, [hit, hit._replace(query_index=7)])
    assert [m.query_index for m in bulk_answer_matches(answer, 10)] == [2, 7]
    damage(answer.match_columns)
    with pytest.raises(PeerError, match=fragment) as caught:
        bulk_answer_matches(answer, 10)
    assert "batch 9" in str(caught.value)
    messages = hub_pb2.BulkMatchResponse(batch_id=9, matches=[common_pb2.Match(query_index=10)])
    with pytest.raises(PeerError, match=r"matches\[0\].query_index 10 for 10 tags"):
        bulk_answer_matches(messages, 10)


def test_resolve_dataset_only_for_the_callers_own() -> None:
    assert policy.resolve_dataset("FRA", "watchlist") == "watchlist"
    assert policy.resolve_dataset("FRA", "FRA/watchlist") == "watchlist"
    with pytest.raises(PermissionDeniedError, match="DEU"):
        policy.resolve_dataset("FRA", "DEU/watchlist")
    for bad in ("", " x", "FRA/a/b", "x" * 101, "tab\there"):
        with pytest.raises(InvalidInputError, match="dataset"):
            policy.resolve_dataset("FRA", bad)


def test_validation_names_the_field() -> None:
    with pytest.raises(
        InvalidInputError, match=r"keys\[4\]\.tag: must be exactly 16 bytes, got 15"
    ):
        policy.make_tagged_key(b"t" * 15, b"h" * 16, 1, field="keys[4]")
    with pytest.raises(InvalidInputError, match=r"keys\[0\]\.handle"):
        policy.make_tagged_key(b"t" * 16, b"h" * 17, 1, field="keys[0]")
    with pytest.raises(LimitExceededError, match="at most 10000"):
        policy.check_request_size(10_001, 10_000, field="tags")
    policy.check_request_size(10_000, 10_000, field="tags")
    with pytest.raises(InvalidInputError, match="epoch"):
        policy.check_epoch(0)


def test_key_digest_checks_count_and_order() -> None:
    ks = keys(3)
    good = policy.KeyDigest()
    good.update(ks)
    good.verify(3, policy.digest_of(ks))
    with pytest.raises(InvalidInputError, match="announces 4 keys but 3 arrived"):
        good.verify(4, policy.digest_of(ks))
    with pytest.raises(InvalidInputError, match=r"trailer\.digest"):
        good.verify(3, policy.digest_of(ks[::-1]))
    assert ks[0].digest_input == ks[0].tag + ks[0].handle + b"\x01"


# -- matching -------------------------------------------------------------------------


def test_misses_count_the_live_datasets_as_they_change(open_store: OpenStore) -> None:
    # Most queries hit nothing; on SQLite they are answered without a read of
    # the database, from the live datasets kept since the last change.  Every
    # change must show in the next answer.
    async def searched(epoch: int = 1) -> int:
        result = await store_ref[0].query("ITA", epoch, queries(keys(2)), include_own=False)
        assert result.hits == ()
        return result.datasets_searched

    store_ref: list[TagStore] = []

    async def scenario(store: TagStore) -> None:
        store_ref.append(store)
        assert await searched() == 0
        fra = keys(5)
        await enroll(store, "FRA", "w", fra)
        assert await searched() == 1
        deu = keys(3)
        await enroll(store, "DEU", "w", deu)
        assert await searched() == 2
        assert await hit_indices(store, "ITA", [*keys(1), deu[1]]) == [1]
        assert await searched() == 2
        await enroll(store, "FRA", "w", keys(4), epoch=2, replace=True)
        assert (await searched(), await searched(2)) == (1, 1)
        added = keys(1)
        await store.update_dataset("DEU", "w", 1, added, [])
        assert await hit_indices(store, "ITA", added) == [0]
        assert await searched() == 1
        await enroll(store, "ITA", "w", keys(2))  # the asker's own: not searched
        assert await searched() == 1

    with_store(open_store, scenario)


def test_lookup_across_bureaus_excludes_own_and_other_epochs(open_store: OpenStore) -> None:
    fra, deu = keys(20), keys(5, KeyType.PERSON_PHONETIC)

    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "watchlist", fra, category="stolen-passports")
        await enroll(store, "DEU", "watchlist", deu, epoch=2)
        asked = [*keys(3), fra[7], fra[2]]
        result = await store.query("ITA", 1, queries(asked), include_own=False)
        assert result.datasets_searched == 1
        assert sorted(h.query_index for h in result.hits) == [3, 4]
        assert {h.owner for h in result.hits} == {"FRA"}
        assert {h.category for h in result.hits} == {"stolen-passports"}
        assert len({h.match_id for h in result.hits}) == 2
        # Own datasets only on request; another epoch never.
        assert await hit_indices(store, "FRA", fra[:2]) == []
        assert await hit_indices(store, "FRA", fra[:2], own=True) == [0, 1]
        assert await hit_indices(store, "ITA", deu, epoch=1) == []
        assert await hit_indices(store, "ITA", deu, epoch=2) == [0, 1, 2, 3, 4]
        # The key type is part of what matches.
        other_type = [QueryTag(fra[0].tag, KeyType.IDCARD)]
        assert (await store.query("ITA", 1, other_type, include_own=False)).hits == ()

    with_store(open_store, scenario)


def test_same_name_for_two_owners_and_listing(open_store: OpenStore) -> None:
    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "watchlist", keys(3), policy_=LINKABLE)
        await enroll(store, "DEU", "watchlist", keys(4), epoch=2)
        (fra,) = await store.list_datasets("FRA")
        (deu,) = await store.list_datasets("DEU")
        assert (fra.owner, fra.name, fra.tag_count, fra.epoch, fra.policy) == (
            "FRA", "watchlist", 3, 1, LINKABLE,
        )  # fmt: skip
        assert (deu.owner, deu.tag_count, deu.epoch) == ("DEU", 4, 2)
        assert await store.list_datasets("ITA") == []
        stats = await store.stats()
        assert (stats.datasets, stats.tags, stats.epochs) == (2, 7, (1, 2))

    with_store(open_store, scenario)


# -- versions ---------------------------------------------------------------------------


def test_existing_name_needs_replace_and_one_enrollment_at_a_time(open_store: OpenStore) -> None:
    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "w", keys(2))
        with pytest.raises(AlreadyExistsError, match="replace"):
            await store.begin_enrollment("FRA", EnrollSpec("w", 1, DatasetPolicy()))
        first = await store.begin_enrollment(
            "FRA", EnrollSpec("w", 1, DatasetPolicy(), replace=True)
        )
        with pytest.raises(ConcurrentEnrollmentError, match="in progress"):
            await store.begin_enrollment("FRA", EnrollSpec("w", 1, DatasetPolicy(), replace=True))
        with pytest.raises(ConcurrentEnrollmentError):
            await store.update_dataset("FRA", "w", 1, keys(1), [])
        await first.abort()
        await first.abort()  # idempotent
        again = await enroll(store, "FRA", "w", keys(5), replace=True)
        assert (again.version, again.tag_count) == (2, 5)

    with_store(open_store, scenario)


def test_staged_version_is_invisible_until_commit(open_store: OpenStore) -> None:
    old, new = keys(10), keys(BIG)

    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "w", old)
        enrollment = await store.begin_enrollment(
            "FRA", EnrollSpec("w", 2, DatasetPolicy(), replace=True)
        )
        await enrollment.add(new)  # more than a chunk: written, not yet live
        assert await hit_indices(store, "DEU", new[:100], epoch=2) == []
        assert await hit_indices(store, "DEU", old) == list(range(10))
        result = await enrollment.commit(len(new), policy.digest_of(new))
        assert (result.version, result.tag_count) == (2, BIG)
        assert await hit_indices(store, "DEU", old) == []
        assert await hit_indices(store, "DEU", old, epoch=2) == []
        assert await hit_indices(store, "DEU", new[-100:], epoch=2) == list(range(100))
        (info,) = await store.list_datasets("FRA")
        assert (info.version, info.epoch, info.tag_count) == (2, 2, BIG)

    with_store(open_store, scenario)


@pytest.mark.parametrize("fault", ["count", "digest", "abort"])
def test_failed_enrollment_leaves_the_previous_version(open_store: OpenStore, fault: str) -> None:
    old, new = keys(10), keys(BIG)

    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "w", old)
        enrollment = await store.begin_enrollment(
            "FRA", EnrollSpec("w", 1, DatasetPolicy(), replace=True)
        )
        await enrollment.add(new)
        if fault == "abort":
            await enrollment.abort()
        else:
            count = len(new) + (fault == "count")
            digest = policy.digest_of(new if fault == "count" else new[1:])
            with pytest.raises(InvalidInputError, match="nothing was committed"):
                await enrollment.commit(count, digest)
        assert await hit_indices(store, "DEU", old) == list(range(10))
        assert await hit_indices(store, "DEU", new[:50]) == []
        (info,) = await store.list_datasets("FRA")
        assert (info.version, info.tag_count) == (1, 10)
        # The dataset is free again.
        assert (await enroll(store, "FRA", "w", new[:3], replace=True)).version == 2

    with_store(open_store, scenario)


def test_a_key_sent_twice_in_one_stream_is_stored_once(open_store: OpenStore) -> None:
    ks, fresh = keys(BIG), keys(1)
    again = [ks[0], *fresh, ks[BIG - 1], TaggedKey(ks[1].tag, ks[1].handle, KeyType.EMAIL)]

    async def scenario(store: TagStore) -> None:
        enrollment = await store.begin_enrollment("FRA", EnrollSpec("w", 1, DatasetPolicy()))
        await enrollment.add(ks)  # more than a chunk: written before the repeats come
        await enrollment.add(again)
        sent = [*ks, *again]
        result = await enrollment.commit(len(sent), policy.digest_of(sent))
        assert result.tag_count == BIG + 1
        asked = queries([*ks[:3], *fresh])
        hits = (await store.query("DEU", 1, asked, include_own=False)).hits
        assert sorted(h.query_index for h in hits) == [0, 1, 2, 3]
        assert {h.key_type for h in hits} == {KeyType.PASSPORT}  # the first key type sent

    with_store(open_store, scenario)


def test_first_enrollment_aborted_leaves_no_dataset(open_store: OpenStore) -> None:
    async def scenario(store: TagStore) -> None:
        enrollment = await store.begin_enrollment("FRA", EnrollSpec("w", 1, DatasetPolicy()))
        await enrollment.add(keys(BIG))
        await enrollment.abort()
        assert await store.list_datasets("FRA") == []
        assert (await enroll(store, "FRA", "w", keys(1))).version == 1  # no ALREADY_EXISTS

    with_store(open_store, scenario)


def test_restart_drops_staged_rows_and_keeps_committed(open_store: OpenStore) -> None:
    old, new = keys(10), keys(BIG)

    async def first_run() -> None:
        store = await open_store()
        await enroll(store, "FRA", "w", old)
        enrollment = await store.begin_enrollment(
            "FRA", EnrollSpec("w", 1, DatasetPolicy(), replace=True)
        )
        await enrollment.add(new)
        await store.close()  # the stream never ends: as if the process died

    async def second_run(store: TagStore) -> None:
        assert await hit_indices(store, "DEU", old) == list(range(10))
        assert await hit_indices(store, "DEU", new[:50]) == []
        assert (await enroll(store, "FRA", "w", new, replace=True)).version == 2

    run(first_run())
    with_store(open_store, second_run)


# -- updates -------------------------------------------------------------------------------


def test_update_adds_and_removes_at_once(open_store: OpenStore) -> None:
    base = keys(6)
    record = base[0].handle
    # A second key of the same record, and a replacement key for it.
    second = TaggedKey(os.urandom(16), record, KeyType.EMAIL)
    fresh = keys(2)

    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "w", [*base, second])
        result = await store.update_dataset("FRA", "w", 1, fresh, [record, base[1].handle])
        assert (result.version, result.added, result.removed) == (2, 2, 2)
        assert await hit_indices(store, "DEU", [base[0], second, base[1], *fresh]) == [3, 4]
        # Removing first, then adding under the same handle, revives that key only.
        revived = await store.update_dataset("FRA", "w", 1, [second], [record])
        assert (revived.added, revived.removed) == (1, 0)
        assert await hit_indices(store, "DEU", [base[0], second]) == [1]
        # Adding a key that is already live changes nothing.
        assert (await store.update_dataset("FRA", "w", 1, [base[2]], [])).added == 0

    with_store(open_store, scenario)


def test_update_refusals(open_store: OpenStore) -> None:
    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "w", keys(2), epoch=3)
        with pytest.raises(FailedPreconditionError, match=r"epoch 3.*epoch 4.*replace"):
            await store.update_dataset("FRA", "w", 4, keys(1), [])
        with pytest.raises(NotFoundError, match="'nothing'"):
            await store.update_dataset("FRA", "nothing", 3, keys(1), [])
        with pytest.raises(NotFoundError):
            await store.update_dataset("DEU", "w", 3, keys(1), [])  # names are per owner
        (info,) = await store.list_datasets("FRA")
        assert info.version == 1

    with_store(open_store, scenario)


def test_sweep_deletes_dead_generations_and_removed_keys(
    open_store: OpenStore, store_backend: StoreBackend
) -> None:
    first, second = keys(BIG), keys(300)

    def rows() -> int:
        return int(store_backend.scalar("SELECT count(*) FROM tags"))

    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "w", first)
        await enroll(store, "FRA", "w", second, replace=True)
        assert rows() == BIG + 300
        assert await store.sweep() == BIG
        assert rows() == 300
        await store.update_dataset("FRA", "w", 1, [], [k.handle for k in second[:100]])
        (info,) = await store.list_datasets("FRA")
        assert info.tag_count == 300  # removed keys leave the count when swept
        assert await store.sweep() == 100
        (info,) = await store.list_datasets("FRA")
        assert info.tag_count == 200
        assert await hit_indices(store, "DEU", second) == list(range(100, 300))

    with_store(open_store, scenario)


def test_query_hits_are_recorded_as_matches(
    open_store: OpenStore, store_backend: StoreBackend
) -> None:
    ks = keys(3)

    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "w", ks)
        result = await store.query("DEU", 1, queries(ks[:2]), include_own=False)
        stored = store_backend.rows("SELECT match_id, requester, owner, handle FROM matches")
        assert sorted((bytes(m).hex(), r, o, bytes(h)) for m, r, o, h in stored) == sorted(
            (h.match_id, "DEU", "FRA", k.handle) for h, k in zip(result.hits, ks, strict=False)
        )

    with_store(open_store, scenario)


def test_concurrent_queries_each_get_their_own_audit_leaf(
    open_store: OpenStore, store_backend: StoreBackend
) -> None:
    """Queries recorded together (group commit) still get one leaf each,
    with their own hit counts, and every hit becomes a match row."""
    from hub.store import HubStore
    from psi.audit import EntryKind, decode_entry

    ks = keys(40)

    async def scenario(tag_store: TagStore) -> None:
        store = cast(HubStore, tag_store)  # both stores are whole HubStores
        await enroll(store, "FRA", "w", ks)
        before = (await store.audit_head())[0]
        # Query i asks i enrolled tags and one that is not.
        results = await asyncio.gather(
            *(
                store.query("DEU", 1, queries([*ks[:i], *keys(1)]), include_own=False)
                for i in range(30)
            )
        )
        indices = [r.audit_index for r in results]
        assert sorted(indices) == list(range(before, before + 30))
        entries = await store.audit_entries(before, before + 30)
        for i, result in enumerate(results):
            assert sorted(h.query_index for h in result.hits) == list(range(i))
            entry = decode_entry(entries[result.audit_index - before])
            assert entry.kind is EntryKind.QUERY
            assert (entry["tags"], entry["hits"]) == (i + 1, i)
        assert store_backend.scalar("SELECT count(*) FROM matches") == sum(range(30))

    with_store(open_store, scenario)


def test_a_query_with_more_hits_than_one_insert_takes_records_them_all(
    open_store: OpenStore, store_backend: StoreBackend
) -> None:
    """Matches go in as multi-row INSERTs of at most 500 rows on both stores:
    1,201 hits (three statements) are all stored, each with its own id."""
    ks = keys(1201)

    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "w", ks)
        result = await store.query("DEU", 1, queries(ks), include_own=False)
        assert len(result.hits) == 1201
        stored = store_backend.rows("SELECT match_id, handle FROM matches")
        assert sorted((bytes(m).hex(), bytes(h)) for m, h in stored) == sorted(
            (hit.match_id, ks[hit.query_index].handle) for hit in result.hits
        )
        assert len({hit.match_id for hit in result.hits}) == 1201

    with_store(open_store, scenario)


def test_match_ids_encrypt_the_order_in_which_matches_were_made(
    open_store: OpenStore, store_backend: StoreBackend
) -> None:
    """Rows are numbered 1, 2, ... as matches are made (queries and standing
    matches alike), and each id is the store's key's encryption of its
    number: what bureaus see looks random, the table only appends."""
    from hub.match_ids import MatchIds

    ks = keys(5)

    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "w", ks)
        first = await store.query("DEU", 1, queries(ks[:3]), include_own=False)
        second = await store.query("ITA", 1, queries(ks[3:]), include_own=False)
        await enroll(store, "DEU", "linked", ks[:1], policy_=LINKABLE)
        await enroll(store, "ITA", "linked", ks[:1], policy_=LINKABLE)
        stored = store_backend.rows("SELECT seq, match_id, requester, kind FROM matches")
        assert sorted(seq for seq, _, _, _ in stored) == [1, 2, 3, 4, 5, 6]
        key = bytes(store_backend.scalar("SELECT value FROM hub_secrets"))
        ids = MatchIds(key)
        by_seq = {
            seq: (bytes(match_id), requester, kind) for seq, match_id, requester, kind in stored
        }
        assert all(ids.ids([seq]) == [match_id] for seq, (match_id, _, _) in by_seq.items())
        assert sorted(by_seq[seq][0].hex() for seq in (1, 2, 3)) == sorted(
            h.match_id for h in first.hits
        )
        assert sorted(by_seq[seq][0].hex() for seq in (4, 5)) == sorted(
            h.match_id for h in second.hits
        )
        assert by_seq[6][2] == 1  # the standing match between DEU and ITA came last

    with_store(open_store, scenario)


# -- standing matches -------------------------------------------------------------------------


def test_standing_matches_notify_both_owners_once(open_store: OpenStore) -> None:
    fra, deu = keys(10), keys(10)
    deu[3] = TaggedKey(fra[5].tag, deu[3].handle, fra[5].key_type)
    deu[7] = TaggedKey(fra[1].tag, deu[7].handle, fra[1].key_type)

    async def scenario(store: TagStore) -> None:
        await enroll(
            store, "FRA", "w", fra, policy_=DatasetPolicy(reveal_owner=True, linkable=True)
        )
        deu_policy = DatasetPolicy(reveal_category=True, linkable=True)
        result = await enroll(store, "DEU", "alerts", deu, policy_=deu_policy, category="fugitives")
        assert result.new_notices == 2
        to_fra = await store.read_notices("FRA", 0, 100)
        to_deu = await store.read_notices("DEU", 0, 100)
        assert [n.sequence for n in to_fra] == [1, 2] and [n.sequence for n in to_deu] == [1, 2]
        assert {n.match_id for n in to_fra} == {n.match_id for n in to_deu}
        assert {n.handle for n in to_fra} == {fra[5].handle, fra[1].handle}
        assert {n.handle for n in to_deu} == {deu[3].handle, deu[7].handle}
        # Each side sees what the *other* dataset's policy reveals.
        assert {(n.dataset, n.other_owner, n.other_category) for n in to_fra} == {
            ("w", None, "fugitives")
        }
        assert {(n.dataset, n.other_owner, n.other_category) for n in to_deu} == {
            ("alerts", "FRA", None)
        }
        # Re-enrolling the same handles (either side) does not notify again ...
        again = await enroll(store, "DEU", "alerts", deu, policy_=deu_policy, replace=True)
        assert again.new_notices == 0
        assert (
            await enroll(store, "FRA", "w", fra, policy_=LINKABLE, replace=True)
        ).new_notices == 0
        # ... a new record pair does, from an update too.
        new = TaggedKey(fra[9].tag, os.urandom(16), fra[9].key_type)
        assert (await store.update_dataset("DEU", "alerts", 1, [new], [])).new_notices == 1
        assert len(await store.read_notices("FRA", 2, 100)) == 1
        assert len(await store.read_notices("DEU", 2, 100)) == 1

    with_store(open_store, scenario)


@pytest.mark.parametrize("other", ["not linkable", "other epoch", "same owner", "removed"])
def test_no_standing_match_without_both_sides(open_store: OpenStore, other: str) -> None:
    fra = keys(4)

    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "w", fra, policy_=LINKABLE)
        if other == "removed":
            await store.update_dataset("FRA", "w", 1, [], [fra[0].handle])
        owner = "FRA" if other == "same owner" else "DEU"
        result = await enroll(
            store,
            owner,
            "x",
            [TaggedKey(fra[0].tag, os.urandom(16), fra[0].key_type)],
            epoch=2 if other == "other epoch" else 1,
            policy_=DatasetPolicy() if other == "not linkable" else LINKABLE,
        )
        assert result.new_notices == 0
        assert await store.read_notices("FRA", 0, 10) == []

    with_store(open_store, scenario)


def test_standing_match_between_two_enrollments_staging_at_once(open_store: OpenStore) -> None:
    fra, deu = keys(BIG), keys(BIG)
    shared = [(10, 20), (5999, 0), (3000, 4000)]
    for i, j in shared:
        deu[j] = TaggedKey(fra[i].tag, deu[j].handle, fra[i].key_type)

    async def scenario(store: TagStore) -> None:
        a = await store.begin_enrollment("FRA", EnrollSpec("w", 1, LINKABLE))
        b = await store.begin_enrollment("DEU", EnrollSpec("w", 1, LINKABLE))
        await a.add(fra)  # written while DEU stages
        await b.add(deu)  # finds FRA's staged rows
        first = await b.commit(len(deu), policy.digest_of(deu))
        assert first.new_notices == 0  # FRA's side is not live yet
        second = await a.commit(len(fra), policy.digest_of(fra))
        assert second.new_notices == 3
        notices = await store.read_notices("DEU", 0, 10)
        assert {n.handle for n in notices} == {deu[j].handle for _, j in shared}

    with_store(open_store, scenario)


def test_notices_are_kept_and_wake_waiters(open_store: OpenStore) -> None:
    fra = keys(3)

    async def scenario(store: TagStore) -> None:
        await enroll(store, "FRA", "w", fra, policy_=LINKABLE)
        waiter = asyncio.create_task(store.wait_for_notices("FRA", 0))
        other = asyncio.create_task(store.wait_for_notices("ITA", 0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        shared = [TaggedKey(k.tag, os.urandom(16), k.key_type) for k in fra[:2]]
        await enroll(store, "DEU", "w", shared, policy_=LINKABLE)
        assert await asyncio.wait_for(waiter, 2) is True
        assert not other.done()
        assert [n.sequence for n in await store.read_notices("FRA", 1, 10)] == [2]
        assert [n.sequence for n in await store.read_notices("FRA", 0, 1)] == [1]  # kept
        assert await store.wait_for_notices("FRA", 1) is True  # already there
        await store.interrupt_waiters()
        assert await asyncio.wait_for(other, 2) is False

    with_store(open_store, scenario)


# -- durability (a real kill -9) ------------------------------------------------------------

_CHILD = CHILD_OPEN + textwrap.dedent(
    """
    import asyncio, os, sys
    from hub.policy import DatasetPolicy, EnrollSpec, TaggedKey, digest_of
    from psi.identifiers import KeyType

    async def main():
        store = await open_store(sys.argv)
        committed = [TaggedKey(bytes([1]) * 15 + bytes([i]), os.urandom(16), KeyType.VIN)
                     for i in range(5)]
        staged = [TaggedKey(os.urandom(16), os.urandom(16), KeyType.VIN) for _ in range(6000)]
        e = await store.begin_enrollment("FRA", EnrollSpec("w", 1, DatasetPolicy()))
        await e.add(committed)
        await e.commit(5, digest_of(committed))
        print("committed", flush=True)
        e = await store.begin_enrollment("FRA", EnrollSpec("w", 1, DatasetPolicy(), replace=True))
        await e.add(staged)
        print("staged", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def test_kill_9_keeps_acknowledged_and_drops_staged(
    open_store: OpenStore, store_backend: StoreBackend
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, *store_backend.argv],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "committed"
            assert child.stdout.readline().strip() == "staged"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    committed = [QueryTag(bytes([1]) * 15 + bytes([i]), KeyType.VIN) for i in range(5)]

    async def after_crash(store: TagStore) -> None:
        result = await store.query("DEU", 1, committed, include_own=False)
        assert sorted(h.query_index for h in result.hits) == [0, 1, 2, 3, 4]
        (info,) = await store.list_datasets("FRA")
        assert (info.version, info.tag_count) == (1, 5)
        assert (await enroll(store, "FRA", "w", keys(1), replace=True)).version == 2

    with_store(open_store, after_crash)
    if store_backend.kind == "sqlite":
        assert store_backend.scalar("PRAGMA journal_mode") == "wal"
    assert store_backend.scalar("SELECT count(*) FROM staging") == 0


# -- SQLite: the tag locator and schema 3 ----------------------------------------------


def test_sqlite_locator_is_rebuilt_on_open_and_after_sweeps(tmp_path: Path) -> None:
    """Rows keyed by (dataset, gen, tag) are found through the in-memory
    locator: after a restart (rebuilt from the file) and after sweeps have
    deleted most of what it noted (rebuilt from a snapshot)."""
    from hub.store import SqliteTagStore

    path = tmp_path / "hub.sqlite"
    ks, other = keys(500), keys(50, KeyType.EMAIL)

    async def first() -> None:
        store = await SqliteTagStore.open(path, auto_sweep=False)
        try:
            await enroll(store, "FRA", "w", ks)
            await enroll(store, "DEU", "x", other)
        finally:
            await store.close()

    async def second() -> None:
        store = await SqliteTagStore.open(path, auto_sweep=False)
        try:
            assert store._locator.size == 550
            assert await hit_indices(store, "BRA", ks + other) == list(range(550))
            # Replace FRA's dataset three times: the sweep deletes 3 x 500
            # rows, more than a quarter of the locator, which is rebuilt.
            current = ks
            for _ in range(3):
                current = keys(500)
                await enroll(store, "FRA", "w", current, replace=True)
            assert store._locator.size == 2050
            assert await store.sweep() == 1500
            assert store._locator.size == 550
            assert await hit_indices(store, "BRA", current + other) == list(range(550))
            assert await hit_indices(store, "BRA", ks) == []
        finally:
            await store.close()

    run(first())
    run(second())


def test_sqlite_readers_are_read_only(tmp_path: Path) -> None:
    """Both kinds of reader connection (the event loop's, for small lookups,
    and the pool's, for large ones) refuse writes."""
    from hub.store import SqliteTagStore

    ks = keys(40)

    async def scenario() -> None:
        store = await SqliteTagStore.open(tmp_path / "hub.sqlite", auto_sweep=False)
        try:
            await enroll(store, "FRA", "w", ks)
            assert await hit_indices(store, "DEU", ks[:1]) == [0]  # the loop's reader
            assert await hit_indices(store, "DEU", ks) == list(range(40))  # a pool reader
            readers = [store._loop_reader, *store._readers]
            assert len(readers) == 2
            for conn in readers:
                assert conn is not None
                assert conn.execute("PRAGMA query_only").fetchone() == (1,)
                with pytest.raises(sqlite3.OperationalError, match="readonly"):
                    conn.execute("DELETE FROM tags")
        finally:
            await store.close()

    run(scenario())


def test_sqlite_locator_runs_are_merged_when_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once nothing has been noted for a while, the locator's runs become
    one, and every tag is still found; enrollments after that go on."""
    import hub.store
    from hub.store import SqliteTagStore

    monkeypatch.setattr(hub.store, "COMPACT_IDLE_SECONDS", 0.05)
    sets = [keys(n) for n in (400, 50, 20, 7)]

    async def scenario() -> None:
        store = await SqliteTagStore.open(tmp_path / "hub.sqlite", auto_sweep=False)
        try:
            for i, ks in enumerate(sets):
                await enroll(store, "FRA", f"w{i}", ks)
            everything = [k for ks in sets for k in ks]
            for _ in range(100):
                if store._locator.runs == 1:
                    break
                await asyncio.sleep(0.05)
            assert store._locator.runs == 1
            assert store._locator.size == len(everything)
            assert await hit_indices(store, "DEU", everything) == list(range(len(everything)))
            late = keys(30)
            await enroll(store, "FRA", "late", late)
            assert await hit_indices(store, "DEU", late) == list(range(30))
        finally:
            await store.close()

    run(scenario())


def test_sqlite_schema_2_tags_are_rekeyed(tmp_path: Path) -> None:
    """A schema-2 file (tags keyed by tag first) is rewritten on open, every
    row kept."""
    import sqlite3

    from hub.store import SqliteTagStore

    path = tmp_path / "hub.sqlite"
    ks = keys(300)

    async def before() -> None:
        store = await SqliteTagStore.open(path, auto_sweep=False)
        try:
            await enroll(store, "FRA", "w", ks)
        finally:
            await store.close()

    run(before())
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE old (tag BLOB NOT NULL, dataset_id INTEGER NOT NULL, "
            "gen INTEGER NOT NULL, handle BLOB NOT NULL, key_type INTEGER NOT NULL, "
            "added INTEGER NOT NULL, PRIMARY KEY (tag, dataset_id, gen, handle)) WITHOUT ROWID;"
            "INSERT INTO old SELECT * FROM tags; DROP TABLE tags; ALTER TABLE old RENAME TO tags;"
            "PRAGMA user_version = 2;"
        )
    conn.close()

    async def after() -> None:
        store = await SqliteTagStore.open(path, auto_sweep=False)
        try:
            assert await hit_indices(store, "DEU", ks) == list(range(300))
        finally:
            await store.close()

    run(after())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
        columns = sorted(conn.execute("PRAGMA table_info(tags)"), key=lambda r: r[5])
        key = [r[1] for r in columns if r[5]]
        assert key == ["dataset_id", "gen", "tag", "handle"]
        assert conn.execute("SELECT count(*) FROM tags").fetchone()[0] == 300
    conn.close()


@settings(max_examples=100, deadline=None)
@given(
    datasets=st.lists(
        st.tuples(st.sampled_from(["FRA", "DEU", "ITA"]), st.integers(1, 3)), max_size=12
    ),
    requester=st.sampled_from(["FRA", "DEU", "USA"]),
    epoch=st.integers(1, 4),
    include_own=st.booleans(),
)
def test_live_dataset_counts_match_what_a_lookup_searches(
    datasets: list[tuple[str, int]], requester: str, epoch: int, include_own: bool
) -> None:
    live = _LiveDatasets.of(
        7,
        [
            _Dataset(i, owner, f"d{i}", 1, 1, ep, 0, "", 0, 0, None)
            for i, (owner, ep) in enumerate(datasets)
        ],
    )
    searched = _searched(live, requester, epoch, include_own)
    assert live.searched(requester, epoch, include_own) == len(searched)
    for d in searched.values():
        assert d.epoch == epoch and (include_own or d.owner != requester)
