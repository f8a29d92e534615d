"""Recall, precision and false-candidate rate of Blindmatch's person keys.

Run: ``python -m benchmarks.identifier_eval [--population 1000000]``.

1. A labelled set: people from 12 locales (`benchmarks.eval_people`), each
   enrolled once in its reference form; each variant (format, translit,
   translit_de, middle, typo) is queried.  A variant *recalls* its person when
   one of its keys equals one of the person's keys; a hit on anyone else is a
   false match.  Exact = `person` keys only; exact+fuzzy adds `person_phonetic`.
2. A population of N distinct people (default one million) is enrolled (key
   strings only: the OPRF maps equal strings to equal tags and distinct ones to
   distinct tags, so string equality is what matching sees); queries of people
   *not* in the population count false exact and false candidate hits.

Alternative key designs are measured side by side so that the shipped choice
(`v1`: metaphone after folds, full date of birth) is justified by numbers.
Results: JSON on stdout and ``benchmarks/results/identifier_eval.json``; a table
on stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jellyfish

from benchmarks.eval_people import LOCALES, Person, Variant, load_lists, make_person, variants
from psi import identifiers
from psi.errors import InvalidInputError
from psi.identifiers import DateOrder, KeyType, PartialDate, name_tokens, parse_date, person_keys

RESULTS = Path(__file__).parent / "results" / "identifier_eval.json"
CLASSES = ("format", "translit", "translit_de", "middle", "typo")
TARGETS = {
    "format_exact_recall_min": 0.95,
    "format_false_exact_max": 0,
    "translit_any_recall_min": 0.90,
    "false_candidates_per_10k_max": 1.0,
}


@dataclass(frozen=True)
class Design:
    """A person-key design: exact and fuzzy key strings from tokens and a date."""

    name: str
    description: str
    fuzzy: Callable[[tuple[str, ...], PartialDate], frozenset[str]]


def _exact(tokens: tuple[str, ...], date: PartialDate) -> frozenset[str]:
    if not date.is_complete:
        return frozenset()
    return frozenset({f"{' '.join(sorted(tokens))}|{date.iso()}"})


def _codes(code: Callable[[str], str], tokens: tuple[str, ...]) -> str:
    kept = identifiers._phonetic_tokens(tokens)
    return " ".join(sorted({c for c in map(code, kept) if c}))


class Name(tuple[str, ...]):
    """Canonical tokens of a name, remembering whether it was in Arabic script."""

    abjad: bool = False

    @classmethod
    def of(cls, raw: str) -> Name:
        name = cls(name_tokens(raw))
        name.abjad = identifiers._ARABIC_LETTER.search(raw) is not None
        return name


def _names(tokens: tuple[str, ...]) -> list[str]:
    return identifiers._phonetic_names(tokens, abjad=getattr(tokens, "abjad", False))


def _v1(tokens: tuple[str, ...], date: PartialDate) -> frozenset[str]:
    return frozenset(f"{codes}|{date.iso()}" for codes in _names(tokens))


def _v1_year(tokens: tuple[str, ...], date: PartialDate) -> frozenset[str]:
    return frozenset(f"{codes}|{date.year}" for codes in _names(tokens))


def _per_token(
    code: Callable[[str], str], year_only: bool = False
) -> Callable[[tuple[str, ...], PartialDate], frozenset[str]]:
    cached = lru_cache(maxsize=None)(code)

    def fuzzy(tokens: tuple[str, ...], date: PartialDate) -> frozenset[str]:
        codes = _codes(cached, tokens)
        when = str(date.year) if year_only else date.iso()
        return frozenset({f"{codes}|{when}"}) if codes else frozenset()

    return fuzzy


def _pairs(tokens: tuple[str, ...], date: PartialDate) -> frozenset[str]:
    """v1 plus one key per pair of tokens (robust to a missing middle name)."""
    base = set(_v1(tokens, date))
    kept = identifiers._phonetic_tokens(tokens)
    codes = sorted({identifiers.phonetic_code(t) for t in kept} - {""})
    if len(codes) > 2:
        base |= {f"{a} {b}|{date.iso()}" for i, a in enumerate(codes) for b in codes[i + 1 :]}
    return frozenset(base)


DESIGNS = (
    Design("v1", "shipped: metaphone after folds, particles dropped, full date", _v1),
    Design("v1-year", "as v1 but year of birth only", _v1_year),
    Design("metaphone", "plain jellyfish.metaphone, full date", _per_token(jellyfish.metaphone)),
    Design("nysiis", "jellyfish.nysiis, full date", _per_token(jellyfish.nysiis)),
    Design("soundex", "jellyfish.soundex, full date", _per_token(jellyfish.soundex)),
    Design("mrc", "jellyfish.match_rating_codex, full date",
           _per_token(jellyfish.match_rating_codex)),
    Design("v1-pairs", "v1 plus a key per pair of name tokens", _pairs),
)  # fmt: skip


def _keys(
    design: Design, tokens: tuple[str, ...], date: PartialDate
) -> tuple[frozenset[str], frozenset[str]]:
    return _exact(tokens, date), design.fuzzy(tokens, date)


def _parse(v: Variant) -> tuple[tuple[str, ...], PartialDate]:
    order = DateOrder(v.date_order) if v.date_order else None
    return Name.of(v.name), parse_date(v.dob, order)


def labelled(per_locale: int, seed: int) -> tuple[list[Person], list[list[Variant]]]:
    """People of the labelled set and their variants (deterministic)."""
    rng = random.Random(seed)
    lists = {loc: load_lists(loc) for loc in LOCALES}
    people: list[Person] = []
    seen: set[tuple[object, ...]] = set()
    for loc in LOCALES:
        while sum(1 for p in people if p.locale == loc) < per_locale:
            p = make_person(rng, loc, lists[loc])
            if p.identity not in seen:
                seen.add(p.identity)
                people.append(p)
    return people, [variants(rng, p, lists[p.locale]) for p in people]


def evaluate_labelled(people: list[Person], all_variants: list[list[Variant]]) -> dict[str, object]:
    """Recall and precision per design and variant class."""
    from benchmarks.eval_people import reference

    refs = [_parse(reference(p)) for p in people]
    # The shipped design must be exactly what psi.identifiers produces.
    for p, (tokens, date) in zip(people, refs, strict=True):
        exact, fuzzy = _keys(DESIGNS[0], tokens, date)
        api = person_keys(reference(p).name, date)
        assert {k.value for k in api if k.type is KeyType.PERSON} == exact
        assert {k.value for k in api if k.type is KeyType.PERSON_PHONETIC} == fuzzy
    parsed: list[list[tuple[Variant, tuple[tuple[str, ...], PartialDate] | None]]] = []
    unreadable: dict[str, int] = defaultdict(int)
    for vs in all_variants:
        row: list[tuple[Variant, tuple[tuple[str, ...], PartialDate] | None]] = []
        for v in vs:
            try:
                row.append((v, _parse(v)))
            except InvalidInputError:
                unreadable[v.cls] += 1
                row.append((v, None))
        parsed.append(row)
    out: dict[str, object] = {"unreadable_variants": dict(unreadable)}
    for design in DESIGNS:
        exact_index: dict[str, set[int]] = defaultdict(set)
        fuzzy_index: dict[str, set[int]] = defaultdict(set)
        for i, (tokens, date) in enumerate(refs):
            exact, fuzzy = _keys(design, tokens, date)
            for k in exact:
                exact_index[k].add(i)
            for k in fuzzy:
                fuzzy_index[k].add(i)
        stats: dict[str, dict[str, object]] = {}
        per_locale: dict[str, dict[str, list[int]]] = defaultdict(
            lambda: defaultdict(lambda: [0, 0])
        )
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
        for i, row in enumerate(parsed):
            for v, tp in row:
                if v.how == "n/a":
                    continue
                c = counts[v.cls]
                c[0] += 1
                if tp is None:
                    continue
                exact, fuzzy = _keys(design, *tp)
                ex_hits = set().union(*(exact_index.get(k, set()) for k in exact))
                any_hits = ex_hits.union(*(fuzzy_index.get(k, set()) for k in fuzzy))
                c[1] += i in ex_hits
                c[2] += len(ex_hits - {i})
                c[3] += i in any_hits
                c[4] += len(any_hits - {i})
                c[5] += bool(any_hits - {i})
                pl = per_locale[v.cls][people[i].locale]
                pl[0] += 1
                pl[1] += i in any_hits
        for cls in CLASSES:
            n, ex, ex_false, anyr, any_false, _ = counts[cls]
            stats[cls] = {
                "n": n,
                "exact_recall": round(ex / n, 4) if n else 0.0,
                "exact_false": ex_false,
                "exact_precision": round(ex / (ex + ex_false), 4) if ex + ex_false else 1.0,
                "any_recall": round(anyr / n, 4) if n else 0.0,
                "any_false": any_false,
                "any_precision": round(anyr / (anyr + any_false), 4) if anyr + any_false else 1.0,
                "any_recall_by_locale": {
                    loc: round(h / t, 3) for loc, (t, h) in sorted(per_locale[cls].items())
                },
            }
        out[design.name] = stats
    return out


def evaluate_population(population: int, queries: int, seed: int) -> dict[str, object]:
    """False exact / candidate hits of non-members against a population."""
    rng = random.Random(seed + 1)
    lists = {loc: load_lists(loc) for loc in LOCALES}
    exact_set: set[int] = set()
    fuzzy_sets: dict[str, set[int]] = {d.name: set() for d in DESIGNS}
    identities: set[int] = set()
    started = time.perf_counter()
    for n in range(population):
        p = make_person(rng, LOCALES[n % len(LOCALES)], lists[LOCALES[n % len(LOCALES)]])
        identities.add(hash(p.identity))
        tokens = Name.of(" ".join(p.given + p.middle + p.surname))
        date = PartialDate(p.dob.year, p.dob.month, p.dob.day)
        exact_set.update(hash(k) for k in _exact(tokens, date))
        for d in DESIGNS:
            fuzzy_sets[d.name].update(hash(k) for k in d.fuzzy(tokens, date))
    enrolled = time.perf_counter() - started
    false_exact = 0
    false_any: dict[str, int] = dict.fromkeys(fuzzy_sets, 0)
    asked = 0
    by_locale: dict[str, int] = defaultdict(int)
    while asked < queries:
        loc = LOCALES[asked % len(LOCALES)]
        p = make_person(rng, loc, lists[loc])
        if hash(p.identity) in identities:
            continue  # a member of the population: not a false-hit probe
        asked += 1
        tokens = Name.of(" ".join(p.given + p.middle + p.surname))
        date = PartialDate(p.dob.year, p.dob.month, p.dob.day)
        ex = any(hash(k) in exact_set for k in _exact(tokens, date))
        false_exact += ex
        for d in DESIGNS:
            hit = ex or any(hash(k) in fuzzy_sets[d.name] for k in d.fuzzy(tokens, date))
            false_any[d.name] += hit
            if d.name == "v1" and hit:
                by_locale[loc] += 1
    return {
        "population": population,
        "queries": queries,
        "enroll_seconds": round(enrolled, 1),
        "false_exact_per_10k": round(false_exact * 10_000 / queries, 3),
        "false_candidates_per_10k": {
            k: round(v * 10_000 / queries, 3) for k, v in false_any.items()
        },
        "v1_false_candidates_by_locale": dict(sorted(by_locale.items())),
    }


def _table(result: dict[str, object]) -> str:
    lab = result["labelled"]
    pop = result["population"]
    assert isinstance(lab, dict) and isinstance(pop, dict)
    lines = [
        f"labelled set: {result['labelled_people']} people x {len(CLASSES)} variant classes; "
        f"population {pop['population']:,}, {pop['queries']:,} non-member queries",
        "",
        f"{'design':<10} {'class':<12} {'n':>5} {'exact rec':>9} {'ex false':>8} "
        f"{'ex+fz rec':>9} {'ex+fz prec':>10} {'false cand/10k':>14}",
    ]
    fc = pop["false_candidates_per_10k"]
    for design in DESIGNS:
        stats = lab[design.name]
        for cls in CLASSES:
            s = stats[cls]
            lines.append(
                f"{design.name:<10} {cls:<12} {s['n']:>5} {s['exact_recall']:>9.3f} "
                f"{s['exact_false']:>8} {s['any_recall']:>9.3f} {s['any_precision']:>10.4f} "
                f"{fc[design.name] if cls == 'format' else '':>14}"
            )
    lines.append(f"false exact matches per 10k queries: {pop['false_exact_per_10k']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--per-locale", type=int, default=400)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    people, all_variants = labelled(args.per_locale, args.seed)
    result: dict[str, object] = {
        "benchmark": "identifier_eval",
        "seed": args.seed,
        "generator": "faker person-provider name lists sampled directly (weights where "
        "faker has them), 12 locales, dob uniform 1940-2007; see benchmarks/eval_people.py",
        "designs": {d.name: d.description for d in DESIGNS},
        "labelled_people": len(people),
        "labelled": evaluate_labelled(people, all_variants),
        "population": evaluate_population(args.population, args.queries, args.seed),
    }
    v1 = result["labelled"]["v1"]  # type: ignore[index]
    pop = result["population"]
    result["targets"] = TARGETS
    result["targets_met"] = {
        "format_exact_recall": v1["format"]["exact_recall"] >= 0.95,
        "format_zero_false_exact": v1["format"]["exact_false"] == 0,
        "translit_any_recall": v1["translit"]["any_recall"] >= 0.90,
        "false_candidates": pop["false_candidates_per_10k"]["v1"] <= 1.0,  # type: ignore[index]
        "zero_false_exact_population": pop["false_exact_per_10k"] == 0,  # type: ignore[index]
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))
    print(_table(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
