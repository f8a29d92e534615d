# ruff: noqa: RUF001 -- letters of many scripts on purpose
"""Hypothesis properties of psi.identifiers (names, dates, keys)."""

from __future__ import annotations

import datetime as dt

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from psi.errors import InvalidInputError
from psi.identifiers import (
    KeyType,
    MatchKey,
    PartialDate,
    Record,
    canonical_name,
    match_keys,
    name_tokens,
    parse_date,
    passport_key,
    person_keys,
)

# Letters from the scripts Blindmatch must handle, plus separators.
_LETTERS = st.sampled_from(
    list("abcdefghijklmnopqrstuvwxyzäöüßéèçñłśżğışăâđơư")
    + list("абвгдежзийклмнопрстуфхцчшщыэюяєії")
    + list("αβγδεζηθικλμνξοπρστυφχψωάέή")
    + list("محمدعليحسنبنال")
    + list("习近平王李张伟")
)
_WORD = st.text(_LETTERS, min_size=1, max_size=10)
_WORDS = st.lists(_WORD, min_size=1, max_size=5)
_NAMES = st.text(max_size=60)
_DATES = st.dates(min_value=dt.date(1850, 1, 1), max_value=dt.date(2100, 12, 31))


def _tokens_or_none(name: str) -> tuple[str, ...] | None:
    try:
        return name_tokens(name)
    except InvalidInputError:
        return None


@given(_NAMES)
def test_canonical_name_is_idempotent(name: str) -> None:
    try:
        once = canonical_name(name)
    except InvalidInputError:
        return
    assert canonical_name(once) == once


@given(_WORDS, st.randoms(use_true_random=False))
def test_token_order_never_matters(words: list[str], rnd: object) -> None:
    assume(_tokens_or_none(" ".join(words)) is not None)
    # Each word on its own, so that a single Han run is not re-split differently.
    words = [w for w in words if _tokens_or_none(w)]
    assume(len(words) >= 2)
    shuffled = list(words)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert canonical_name(" ".join(words)) == canonical_name(" ".join(shuffled))
    assert canonical_name(" ".join(words)) == canonical_name(", ".join(reversed(words)))


@given(_WORDS)
def test_case_and_separators_never_matter(words: list[str]) -> None:
    name = " ".join(words)
    assume(_tokens_or_none(name) is not None and len(words) > 1)
    assert canonical_name(name.upper()) == canonical_name(name.lower())
    assert canonical_name("-".join(words)) == canonical_name(name)


@given(_NAMES, _DATES)
def test_every_key_is_utf8_with_the_right_prefix(name: str, date: dt.date) -> None:
    try:
        keys = person_keys(name, date.isoformat())
    except InvalidInputError:
        return
    assert keys
    for key in keys:
        data = key.oprf_input
        assert data.decode("utf-8") == f"blindmatch/v1|{key.type.value}|{key.value}"
        assert data.startswith(b"blindmatch/v1|" + key.type.value.encode() + b"|")
        assert key.value.isascii()


@given(_DATES, st.sampled_from(["%Y-%m-%d", "%d.%m.%Y", "%Y%m%d", "%d %b %Y", "%B %d, %Y",
                                "%Y/%m/%d", "%d %B %Y"]))  # fmt: skip
def test_every_date_format_gives_the_same_date(date: dt.date, fmt: str) -> None:
    assert parse_date(date.strftime(fmt)) == PartialDate(date.year, date.month, date.day)


@given(st.text(max_size=30))
def test_parse_date_only_raises_invalid_input(raw: str) -> None:
    try:
        result = parse_date(raw)
    except InvalidInputError as exc:
        assert exc.field == "dob"
    else:
        assert result.iso() == parse_date(result.iso()).iso()


@settings(max_examples=200)
@given(
    _WORDS,
    _DATES,
    st.sampled_from(["upper", "lower", "comma", "reverse", "hyphen", "spaces"]),
    st.sampled_from(["%Y-%m-%d", "%d.%m.%Y", "%Y%m%d", "%d %b %Y"]),
)
def test_same_identity_in_other_formats_gives_the_same_exact_key(
    words: list[str], date: dt.date, how: str, fmt: str
) -> None:
    words = [w for w in words if _tokens_or_none(w)]
    assume(words)
    name = " ".join(words)
    variant = {
        "upper": name.upper(),
        "lower": name.lower(),
        "comma": ", ".join(reversed(words)),
        "reverse": " ".join(reversed(words)),
        "hyphen": "-".join(words),
        "spaces": "  " + "   ".join(words) + " ",
    }[how]
    assume(len(words) > 1 or how not in ("comma", "reverse"))
    a = person_keys(name, date.isoformat())
    b = person_keys(variant, date.strftime(fmt))
    assert [k for k in a if k.type is KeyType.PERSON] == [k for k in b if k.type is KeyType.PERSON]


@given(
    st.sampled_from(["DEU", "D", "de", "De"]),
    st.text(st.sampled_from("ABCDEFGHJKLMNPRSTUVWXYZ0123456789"), min_size=1, max_size=9),
    st.sampled_from([" ", "-", "", "."]),
)
def test_passport_formats_give_the_same_key(issuer: str, number: str, sep: str) -> None:
    written = sep.join(number[i : i + 3] for i in range(0, len(number), 3)).lower()
    assert passport_key(issuer, written) == MatchKey(KeyType.PASSPORT, f"DEU|{number}")


@given(st.builds(Record, st.text(min_size=1, max_size=5), name=st.none() | _NAMES,
                 dob=st.none() | st.text(max_size=12), email=st.none() | st.emails()))  # fmt: skip
def test_match_keys_is_deterministic_and_unique(record: Record) -> None:
    try:
        keys = match_keys(record)
    except InvalidInputError:
        return
    assert keys == match_keys(record)
    assert len(set(keys)) == len(keys)
