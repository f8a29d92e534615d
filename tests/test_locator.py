"""`hub.locator.TagLocator`: a superset of what was noted, never missing a
tag, against a plain dictionary model (hypothesis)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hub.locator as locator_module
from hub.locator import Prefixes, Run, Slots, TagLocator, prefixes_of

Model = dict[bytes, set[tuple[int, int]]]


def expected(model: Model, tags: Sequence[bytes]) -> set[tuple[int, int, int]]:
    return {(i, d, g) for i, t in enumerate(tags) for d, g in model.get(t, ())}


def found(locator: TagLocator, tags: Sequence[bytes]) -> set[tuple[int, int, int]]:
    result = locator.candidates(tags)
    assert [c.position for c in result] == sorted(c.position for c in result)
    return {(c.position, c.dataset_id, c.gen) for c in result}


tag = st.binary(min_size=16, max_size=16)
# Batches of tags noted for a few (dataset, gen) pairs, drawn from a small
# pool so that tags repeat across pairs and batches.
notes = st.lists(
    st.tuples(st.integers(1, 4), st.integers(1, 3), st.lists(st.integers(0, 40), max_size=30)),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(pool=st.lists(tag, min_size=41, max_size=41, unique=True), batches=notes)
def test_candidates_are_exactly_what_was_noted(
    pool: list[bytes], batches: list[tuple[int, int, list[int]]]
) -> None:
    locator, model = TagLocator(), Model()
    for dataset_id, gen, picks in batches:
        tags = [pool[i] for i in picks]
        locator.note(dataset_id, gen, tags)
        for t in tags:
            model.setdefault(t, set()).add((dataset_id, gen))
        # Binary-counter merging keeps the runs few.
        assert locator.runs <= max(1, locator.size).bit_length()
    # Distinct 16-byte random tags have distinct prefixes (2^-64 otherwise).
    assert found(locator, pool) == expected(model, pool)
    # A lookup of a few tags searches without arrays: the same answer.
    for start in range(0, len(pool), 3):
        few = pool[start : start + 3]
        assert found(locator, few) == expected(model, few)
    assert locator.size == sum(len(p) for _, _, p in batches)


@settings(max_examples=100, deadline=None)
@given(
    pool=st.lists(tag, min_size=41, max_size=41, unique=True),
    before=notes,
    during=notes,
    kept=st.sets(st.tuples(st.integers(1, 4), st.integers(1, 3))),
)
def test_install_keeps_the_snapshot_and_the_journal(
    pool: list[bytes],
    before: list[tuple[int, int, list[int]]],
    during: list[tuple[int, int, list[int]]],
    kept: set[tuple[int, int]],
) -> None:
    """A rebuild = what a snapshot holds (here: the pairs in `kept` of what
    was noted before) + what was noted while it scanned."""
    locator, model = TagLocator(), Model()
    snapshot: dict[tuple[int, int], list[bytes]] = {}
    for dataset_id, gen, picks in before:
        tags = [pool[i] for i in picks]
        locator.note(dataset_id, gen, tags)
        if (dataset_id, gen) in kept:
            snapshot.setdefault((dataset_id, gen), []).extend(tags)
            for t in tags:
                model.setdefault(t, set()).add((dataset_id, gen))
    locator.start_journal()
    for dataset_id, gen, picks in during:
        tags = [pool[i] for i in picks]
        locator.note(dataset_id, gen, tags)
        for t in tags:
            model.setdefault(t, set()).add((dataset_id, gen))
    locator.install((d, g, prefixes_of(ts)) for (d, g), ts in snapshot.items())
    assert found(locator, pool) == expected(model, pool)
    # After the rebuild, notes go on as before.
    extra = [os.urandom(16) for _ in range(5)]
    locator.note(9, 9, extra)
    assert found(locator, extra) == {(i, 9, 9) for i in range(5)}


def test_prefixes_are_the_first_eight_bytes() -> None:
    tags = [bytes(range(i, i + 16)) for i in range(3)]
    got = prefixes_of(tags)
    assert got.dtype == np.uint64
    assert [int(p).to_bytes(8, "little") for p in got] == [t[:8] for t in tags]
    # Mixed lengths take the slow path, with the same answer.
    mixed = [tags[0], tags[1] + b"x", tags[2]]
    assert list(prefixes_of(mixed)) == list(got)


@pytest.mark.parametrize("count", [1, 3, 40])
def test_tags_sharing_a_prefix_are_candidates_for_each_other(count: int) -> None:
    # Only the first 8 bytes are indexed: a tag is a candidate wherever any
    # tag with its prefix was noted (the store's probe then tells them apart),
    # whether the lookup takes the scalar path (few tags) or the array path.
    a, b = bytes(8) + b"a" * 8, bytes(8) + b"b" * 8
    other = b"\xff" * 16
    locator = TagLocator()
    locator.note(1, 1, [a])
    locator.note(2, 5, [b, other])
    locator.note(3, 1, [a, a])
    tags = ([b] + [os.urandom(16) for _ in range(count - 1)])[:count]
    result = found(locator, tags)
    assert {(d, g) for i, d, g in result if i == 0} == {(1, 1), (2, 5), (3, 1)}
    assert all(i == 0 for i, _, _ in result)


def test_a_miss_and_an_empty_locator_name_nothing() -> None:
    locator = TagLocator()
    assert locator.candidates([os.urandom(16)]) == []
    locator.note(1, 1, [os.urandom(16) for _ in range(100)])
    assert locator.candidates([os.urandom(16) for _ in range(100)]) == []
    assert locator.candidates([]) == []


@settings(max_examples=100, deadline=None)
@given(
    pool=st.lists(tag, min_size=41, max_size=41, unique=True),
    before=notes,
    after=notes,
)
def test_compaction_keeps_every_candidate(
    pool: list[bytes],
    before: list[tuple[int, int, list[int]]],
    after: list[tuple[int, int, list[int]]],
) -> None:
    locator, model = TagLocator(), Model()

    def note(batches: list[tuple[int, int, list[int]]]) -> None:
        for dataset_id, gen, picks in batches:
            tags = [pool[i] for i in picks]
            locator.note(dataset_id, gen, tags)
            for t in tags:
                model.setdefault(t, set()).add((dataset_id, gen))

    note(before)
    runs, size = locator.runs, locator.size
    assert locator.compact() == (runs >= 2)
    assert locator.runs == min(runs, 1) and locator.size == size
    assert found(locator, pool) == expected(model, pool)
    note(after)  # notes go on into newer runs
    assert found(locator, pool) == expected(model, pool)


def test_compaction_gives_way_to_a_concurrent_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    """A note that merges the runs a compaction took, while it merges them
    itself, wins: the compaction reports False and nothing is lost."""
    locator = TagLocator()
    first, second, late = ([os.urandom(16) for _ in range(n)] for n in (8, 2, 4))
    locator.note(1, 1, first)
    locator.note(2, 1, second)
    assert locator.runs == 2
    original = locator_module.build_run
    interfered = False

    def build_run_with_a_note_meanwhile(prefixes: Prefixes, slots: Slots) -> Run:
        nonlocal interfered
        if not interfered:
            interfered = True
            locator.note(3, 1, late)  # merges both runs with the new one
        return original(prefixes, slots)

    monkeypatch.setattr(locator_module, "build_run", build_run_with_a_note_meanwhile)
    assert locator.compact() is False
    assert locator.runs == 1
    everything = [*first, *second, *late]
    owners = [1] * 8 + [2] * 2 + [3] * 4
    assert {(c.position, c.dataset_id) for c in locator.candidates(everything)} == set(
        enumerate(owners)
    )


@pytest.mark.parametrize("count", [3, 40])  # the scalar and the array lookup
def test_lookups_during_a_rebuild_see_the_old_entries(
    monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """Lookups run on other threads while `install` sorts the rebuilt run
    (numpy lets them): they must find every tag then too.  A rebuild that
    emptied the index before filling it lost hits after a hub restart."""
    locator = TagLocator()
    tags = [os.urandom(16) for _ in range(count)]
    locator.note(1, 1, tags)
    locator.start_journal()
    late = [os.urandom(16) for _ in range(2)]
    locator.note(2, 1, late)  # noted while the snapshot is scanned: journaled
    original = locator_module.build_run
    seen_during: list[set[tuple[int, int, int]]] = []

    def build_run_while_looking(prefixes: Prefixes, slots: Slots) -> Run:
        seen_during.append(found(locator, tags))  # what another thread would see now
        return original(prefixes, slots)

    monkeypatch.setattr(locator_module, "build_run", build_run_while_looking)
    locator.install([(1, 1, prefixes_of(tags))])
    assert seen_during == [{(i, 1, 1) for i in range(count)}]
    assert found(locator, [*tags, *late]) == {
        *((i, 1, 1) for i in range(count)),
        (count, 2, 1),
        (count + 1, 2, 1),
    }


# -- the directory of large runs ---------------------------------------------------


def _needles_for(run: Run, rng: np.random.Generator) -> Prefixes:
    """Random prefixes, every stored one and its neighbours, both ends of the
    64-bit range, and the first prefix of (and the one before) ranges."""
    top = np.uint64(2**64 - 1)
    stored = run.prefixes
    parts = [
        rng.integers(0, 2**64, 2000, dtype=np.uint64, endpoint=False),
        stored,
        stored[stored < top] + np.uint64(1),
        stored[stored > 0] - np.uint64(1),
        np.array([0, 1, 2**63, 2**64 - 2, 2**64 - 1], dtype=np.uint64),
    ]
    if run.starts is not None:
        ranges = rng.integers(0, run.starts.shape[0] - 1, 500, dtype=np.uint64)
        first = ranges << np.uint64(run.shift)
        parts += [first, first[first > 0] - np.uint64(1)]
    return np.concatenate(parts)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(4096, 20_000),
    repeats=st.integers(0, 30),
    extremes=st.booleans(),
)
def test_a_run_with_a_directory_searches_like_searchsorted(
    seed: int, size: int, repeats: int, extremes: bool
) -> None:
    rng = np.random.default_rng(seed)
    prefixes = rng.integers(0, 2**64, size, dtype=np.uint64, endpoint=False)
    prefixes[:repeats] = prefixes[repeats : 2 * repeats]  # equal prefixes, adjacent once sorted
    if extremes:
        prefixes[-2:] = np.array([0, 2**64 - 1], dtype=np.uint64)
    run = locator_module.build_run(prefixes, np.zeros(size, dtype=np.uint32))
    assert run.starts is not None  # uniform prefixes: the directory is built
    needles = _needles_for(run, rng)
    assert np.array_equal(run.search(needles), np.searchsorted(run.prefixes, needles))


def test_a_crowded_run_keeps_no_directory_and_still_searches_exactly() -> None:
    rng = np.random.default_rng(5)
    # Not OPRF output: every prefix in the lowest range.
    prefixes = rng.integers(0, 2**20, 10_000, dtype=np.uint64)
    run = locator_module.build_run(prefixes, np.zeros(10_000, dtype=np.uint32))
    assert run.starts is None
    needles = _needles_for(run, rng)
    assert np.array_equal(run.search(needles), np.searchsorted(run.prefixes, needles))


def test_candidates_in_large_runs_are_exactly_what_was_noted() -> None:
    """Runs past the directory threshold (one per note, then merged): every
    noted tag is found for each of its (dataset, gen), nothing else."""
    locator = TagLocator()
    model: Model = {}
    tags = [os.urandom(16) for _ in range(30_000)]
    for i, (dataset, gen) in enumerate([(1, 1), (2, 1), (2, 2)]):
        batch = tags[i * 8000 : i * 8000 + 14_000]  # overlapping: shared tags
        locator.note(dataset, gen, batch)
        for t in batch:
            model.setdefault(t, set()).add((dataset, gen))
    assert locator.compact() or locator.runs == 1
    asked = [*tags[::7], *(os.urandom(16) for _ in range(3000))]
    assert found(locator, asked) == expected(model, asked)
