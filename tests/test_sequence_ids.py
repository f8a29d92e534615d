"""Ids as a keyed permutation of sequence numbers (`psi.sequence_ids`, the
hub's match ids and the agents' handles)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.match_ids import MatchIds
from psi.sequence_ids import SequenceIds

SEQS = st.integers(min_value=1, max_value=2**63 - 1)
KEYS = st.binary(min_size=16, max_size=16)


@given(key=KEYS, seqs=st.lists(SEQS, min_size=1, max_size=50, unique=True))
def test_ids_are_distinct_and_decrypt_to_their_numbers(key: bytes, seqs: list[int]) -> None:
    ids = MatchIds(key)
    made = ids.ids(seqs)
    assert len(set(made)) == len(seqs)
    assert all(len(m) == 16 for m in made)
    assert [ids.seq_of(m) for m in made] == seqs
    assert made == [ids.ids([s])[0] for s in seqs]  # one call or many: the same ids


@given(key=KEYS, seq=SEQS)
def test_another_key_gives_other_ids(key: bytes, seq: int) -> None:
    other = bytes([key[0] ^ 1]) + key[1:]
    assert MatchIds(key).ids([seq]) != MatchIds(other).ids([seq])


def test_consecutive_numbers_give_unrelated_looking_ids() -> None:
    made = MatchIds(os.urandom(16)).ids(list(range(1, 1001)))
    # Sequential numbers differ in their low bits only; their ids must not
    # share a prefix any more often than random bytes would.
    assert len({m[:2] for m in made}) > 950
    assert made != sorted(made)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 15, b"\x00" * 17])
def test_an_id_of_the_wrong_length_names_nothing(bad: bytes) -> None:
    assert MatchIds(os.urandom(16)).seq_of(bad) is None


def test_an_id_no_row_can_have_names_nothing() -> None:
    ids = MatchIds(os.urandom(16))
    # Find an id that decrypts beyond the 63-bit range (almost every random one does).
    assert sum(ids.seq_of(os.urandom(16)) is None for _ in range(20)) >= 19


@pytest.mark.parametrize("seq", [0, -1, 2**63])
def test_numbers_outside_the_database_range_are_refused(seq: int) -> None:
    with pytest.raises(ValueError, match=r"outside 1\.\.2"):
        MatchIds(os.urandom(16)).ids([seq])


def test_the_key_has_16_bytes_and_is_never_printed() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        MatchIds(b"short")
    key = os.urandom(16)
    assert key.hex() not in repr(MatchIds(key))


def test_match_ids_are_the_sequence_ids_of_the_hubs_key() -> None:
    key = os.urandom(16)
    assert MatchIds(key).ids([1, 2, 3]) == SequenceIds(key).ids([1, 2, 3])
    assert SequenceIds(key).ids([]) == []
