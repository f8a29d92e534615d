"""`hub.columns`: keys in columns carry exactly what the per-key types carry."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub import policy
from hub.columns import (
    KeyColumns,
    concat,
    key_columns,
    make_key_columns,
    make_query_columns,
    query_columns,
    split,
)
from hub.store_pg import copy_data
from psi.errors import InvalidInputError
from psi.identifiers import KeyType

KEY_TYPES = list(policy.KEY_TYPE_CODES)

tagged_keys = st.lists(
    st.builds(
        policy.TaggedKey,
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=16, max_size=16),
        st.sampled_from(KEY_TYPES),
    ),
    max_size=40,
)


@given(tagged_keys)
def test_columns_round_trip_keys(keys: list[policy.TaggedKey]) -> None:
    columns = key_columns(keys)
    assert len(columns) == len(keys)
    assert columns.keys() == keys
    wire = make_key_columns(
        columns.tags, columns.handles, list(columns.codes), field="batch 0: columns"
    )
    assert wire == columns
    assert key_columns(wire) is wire


@given(tagged_keys, tagged_keys)
def test_digest_input_and_concat_agree_with_the_per_key_digest(
    first: list[policy.TaggedKey], second: list[policy.TaggedKey]
) -> None:
    joined = concat([key_columns(first), key_columns(second)])
    assert joined.keys() == first + second
    running = policy.KeyDigest()
    running.update_packed(key_columns(first).digest_input(), len(first))
    running.update_packed(key_columns(second).digest_input(), len(second))
    assert running.count == len(first) + len(second)
    assert running.digest() == policy.digest_of(first + second)
    assert hashlib.sha256(joined.digest_input()).digest() == policy.digest_of(first + second)


@given(tagged_keys)
def test_sorted_by_tag_is_a_stable_bytewise_sort(keys: list[policy.TaggedKey]) -> None:
    # Zero bytes at the end of a tag must survive (numpy's "S" dtype strips them).
    keys = [*keys, policy.TaggedKey(bytes(16), bytes(16), KEY_TYPES[0])]
    expected = sorted(keys, key=lambda k: k.tag)  # sorted() is stable
    assert key_columns(keys).sorted_by_tag().keys() == expected


@given(st.lists(st.tuples(st.binary(min_size=16, max_size=16), st.sampled_from(KEY_TYPES))))
def test_query_columns_round_trip(pairs: list[tuple[bytes, KeyType]]) -> None:
    tags = [policy.QueryTag(t, kt) for t, kt in pairs]
    columns = query_columns(tags)
    assert columns.tag_list() == [t for t, _ in pairs]
    assert [policy.key_type_from_code(c) for c in columns.codes] == [kt for _, kt in pairs]
    assert make_query_columns(columns.tags, list(columns.codes), field="columns") == columns


# Tags from a small alphabet of prefixes and suffixes: many share a prefix,
# some repeat, so the prefix search must be confirmed by the whole tag.
_shared_prefix_tags = st.builds(
    lambda p, s: p + s,
    st.sampled_from([bytes(8), b"\x01" * 8, b"\xff" * 8]),
    st.sampled_from([bytes(8), b"\x02" * 8, b"ab" * 4]),
)
_any_tags = st.one_of(_shared_prefix_tags, st.binary(min_size=16, max_size=16))


@given(
    st.lists(_any_tags, max_size=40),
    st.lists(st.one_of(_any_tags, st.binary(max_size=20)), max_size=12),
    st.integers(min_value=1, max_value=3),
)
def test_positions_of_finds_exactly_the_wanted_tags(
    tags: list[bytes], wanted: list[bytes], repeat: int
) -> None:
    tags = tags * repeat * 9  # batches beyond the few searched without arrays, too
    columns = query_columns([policy.QueryTag(t, KeyType.PASSPORT) for t in tags])
    expected = [i for i, tag in enumerate(tags) if tag in set(wanted)]
    assert columns.positions_of(set(wanted)) == expected
    assert all(columns.tag_at(i) == tags[i] for i in range(len(tags)))


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=20))
def test_split_keeps_every_byte(data: bytes, width: int) -> None:
    data = data[: len(data) - len(data) % width]
    assert b"".join(split(data, width)) == data
    assert all(len(piece) == width for piece in split(data, width))


@pytest.mark.parametrize(
    ("tags", "handles", "types", "fragments"),
    [
        (bytes(33), bytes(32), [1, 1], ["batch 2: columns.tags", "33 bytes"]),
        (bytes(32), bytes(48), [1, 1], ["batch 2: columns.handles", "3 handles for 2 tags"]),
        (bytes(32), bytes(32), [1], ["batch 2: columns.key_types", "1 entries for 2 tags"]),
        (bytes(32), bytes(32), [1, 0], ["batch 2: columns.key_types[1]", "unspecified"]),
        (bytes(32), bytes(32), [300, 1], ["batch 2: columns.key_types[0]", "300 is not"]),
        (bytes(32), bytes(32), [1, -4], ["batch 2: columns.key_types[1]", "-4 is not"]),
    ],
)
def test_bad_columns_name_the_column_and_key(
    tags: bytes, handles: bytes, types: list[int], fragments: list[str]
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        make_key_columns(tags, handles, types, field="batch 2: columns")
    for fragment in fragments:
        assert fragment in str(caught.value)


def _parse_copy(data: bytes) -> list[tuple[bytes, int, int, bytes, int, int]]:
    """PostgreSQL's binary COPY format, read field by field (the reference
    the vectorised `copy_data` is checked against)."""
    assert data[:11] == b"PGCOPY\n\xff\r\n\x00" and data[11:19] == bytes(8)
    at, rows = 19, []
    while True:
        fields = int.from_bytes(data[at : at + 2], "big", signed=True)
        at += 2
        if fields == -1:
            break
        values = []
        for _ in range(fields):
            length = int.from_bytes(data[at : at + 4], "big", signed=True)
            values.append(data[at + 4 : at + 4 + length])
            at += 4 + length
        tag, dataset_id, gen, handle, key_type, added = values
        rows.append(
            (
                tag,
                int.from_bytes(dataset_id, "big"),
                int.from_bytes(gen, "big"),
                handle,
                int.from_bytes(key_type, "big"),
                int.from_bytes(added, "big"),
            )
        )
    assert at == len(data)
    return rows


@given(tagged_keys, st.integers(1, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_copy_data_is_postgres_binary_copy(
    keys: list[policy.TaggedKey], dataset_id: int, gen: int
) -> None:
    columns: KeyColumns = key_columns(keys)
    expected = [
        (k.tag, dataset_id, gen, k.handle, policy.KEY_TYPE_CODES[k.key_type], 0) for k in keys
    ]
    assert _parse_copy(copy_data(dataset_id, gen, columns)) == expected
