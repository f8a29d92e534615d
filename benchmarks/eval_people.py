# ruff: noqa: RUF001 -- romanization tables hold Cyrillic, Greek and Arabic letters
"""Labelled evaluation people for the identifier benchmark (deterministic).

People are drawn from the name lists of faker's person providers (first,
middle/patronymic and last names per locale, with faker's weights where it has
them) and a date of birth uniform over 1940-2007.  Sampling the lists directly
instead of calling faker is ~100x faster, which makes a population of one
million people practical.

Each person has a *reference* record (as the owning bureau writes it: native
script, diacritics, day.month.year) and variants in classes:

- ``format``: the same name and date, only written differently (case, comma
  "SURNAME, Given", order swapped, hyphen vs space, diacritics dropped or German
  umlauts expanded, Greek without accents, other date formats).
- ``translit``: a non-Latin name written in Latin by another bureau with another
  romanization: Russian BGN/PCGN, Ukrainian national passport system (KMU 2010),
  Greek "phonetic" spelling (Yiorgos), Arabic in a common Latin spelling with
  vowels supplied, Chinese pinyin with syllables spaced or run together.
- ``translit_de``: Russian/Ukrainian names in German Duden transliteration
  (Tschaikowski, Juri) -- far from the others; reported separately.
- ``middle``: a middle name or patronymic missing, or an extra given name.
- ``typo``: one letter substituted, deleted or swapped in the Latin rendering.
"""

from __future__ import annotations

import datetime as dt
import importlib
import itertools
import random
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["LOCALES", "NameLists", "Person", "Variant", "load_lists", "make_person", "variants"]

LOCALES = (
    "ru_RU", "uk_UA", "ar_AA", "el_GR", "zh_CN", "de_DE",
    "fr_FR", "tr_TR", "pl_PL", "vi_VN", "es_ES", "en_US",
)  # fmt: skip
NON_LATIN = {"ru_RU", "uk_UA", "ar_AA", "el_GR", "zh_CN"}
_EPOCH = dt.date(1940, 1, 1)
_DAYS = (dt.date(2007, 12, 31) - _EPOCH).days


@dataclass(frozen=True)
class NameLists:
    """Per-locale, per-sex name lists with optional weights."""

    first: dict[str, tuple[Sequence[str], Sequence[float] | None]]
    last: dict[str, tuple[Sequence[str], Sequence[float] | None]]
    middle: dict[str, tuple[Sequence[str], Sequence[float] | None]]


@dataclass(frozen=True)
class Person:
    """A true identity: name parts in native script and a date of birth."""

    locale: str
    given: tuple[str, ...]
    middle: tuple[str, ...]
    surname: tuple[str, ...]
    dob: dt.date

    @property
    def identity(self) -> tuple[object, ...]:
        return (self.locale, self.given, self.middle, self.surname, self.dob)


@dataclass(frozen=True)
class Variant:
    """A written form of a person: name string, date string, date order hint."""

    cls: str
    name: str
    dob: str
    date_order: str | None = None
    how: str = field(default="", compare=False)


def _pick(attr: object) -> tuple[Sequence[str], Sequence[float] | None]:
    """Names and cumulative weights (None when faker gives no weights)."""
    if isinstance(attr, dict):
        return tuple(attr.keys()), tuple(itertools.accumulate(float(w) for w in attr.values()))
    assert isinstance(attr, (list, tuple))
    return tuple(attr), None


def load_lists(locale: str) -> NameLists:
    """Name lists of faker's person provider for one locale."""
    provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
    first: dict[str, tuple[Sequence[str], Sequence[float] | None]] = {}
    last: dict[str, tuple[Sequence[str], Sequence[float] | None]] = {}
    middle: dict[str, tuple[Sequence[str], Sequence[float] | None]] = {}
    for sex in ("male", "female"):
        first[sex] = _pick(getattr(provider, f"first_names_{sex}"))
        if locale == "pl_PL":
            last[sex] = _pick(provider.unisex_last_names)
        elif hasattr(provider, f"last_names_{sex}"):
            last[sex] = _pick(getattr(provider, f"last_names_{sex}"))
        else:
            last[sex] = _pick(provider.last_names)
        if hasattr(provider, f"middle_names_{sex}"):
            middle[sex] = _pick(getattr(provider, f"middle_names_{sex}"))
        elif hasattr(provider, "middle_names"):
            middle[sex] = _pick(provider.middle_names)
    return NameLists(first, last, middle)


def _choice(rng: random.Random, lst: tuple[Sequence[str], Sequence[float] | None]) -> str:
    names, weights = lst
    if weights is None:
        return names[rng.randrange(len(names))]
    return rng.choices(names, cum_weights=weights)[0]


def make_person(rng: random.Random, locale: str, lists: NameLists) -> Person:
    """Draw one person of a locale."""
    sex = "male" if rng.random() < 0.5 else "female"
    dob = _EPOCH + dt.timedelta(days=rng.randrange(_DAYS))
    first = lists.first[sex]
    surname: tuple[str, ...] = (_choice(rng, lists.last[sex]),)
    middle: tuple[str, ...] = ()
    given: tuple[str, ...]
    if locale == "zh_CN":
        given = (_choice(rng, first),)
        if len(given[0]) == 1 and rng.random() < 0.5:
            second = _choice(rng, first)
            given = (given[0] + second,) if len(second) == 1 else given
    else:
        given = (_choice(rng, first),)
        if (locale in ("ru_RU", "uk_UA") and rng.random() < 0.7) or locale == "vi_VN":
            middle = (_choice(rng, lists.middle[sex]),)
        elif locale == "ar_AA" and rng.random() < 0.6:
            middle = (_choice(rng, lists.first["male"]),)  # father's name
        elif locale not in NON_LATIN and rng.random() < 0.3:
            second = _choice(rng, first)
            if second != given[0]:
                given = (given[0], second)
        if locale == "es_ES":
            surname = (surname[0], _choice(rng, lists.last[sex]))
    return Person(locale, given, middle, surname, dob)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _full(p: Person, parts: Callable[[str], str] = str, surname_first: bool = False) -> str:
    given = [parts(g) for g in p.given + p.middle]
    surname = [parts(s) for s in p.surname]
    if p.locale == "zh_CN":
        return "".join(surname + given) if parts is str else " ".join(surname + given)
    if p.locale == "vi_VN" or surname_first:
        return " ".join(surname + given)
    return " ".join(given + surname)


def reference(p: Person) -> Variant:
    """The owning bureau's record: native script, day.month.year."""
    return Variant("reference", _full(p), p.dob.strftime("%d.%m.%Y"))


def _strip_diacritics(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))


def _expand_umlauts(text: str) -> str:
    table = {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"}
    return "".join(table.get(c, c) for c in text)


_DATE_FORMATS = (
    ("%Y-%m-%d", None), ("%d/%m/%Y", "DMY"), ("%m/%d/%Y", "MDY"), ("%Y%m%d", None),
    ("%d %b %Y", None), ("%B %d, %Y", None), ("%d-%m-%Y", "DMY"), ("%Y/%m/%d", None),
)  # fmt: skip


def _other_date(rng: random.Random, p: Person) -> tuple[str, str | None]:
    fmt, order = rng.choice(_DATE_FORMATS)
    return p.dob.strftime(fmt), order


def _format_variant(rng: random.Random, p: Person) -> Variant:
    name = _full(p)
    how: list[str] = []
    ops = ["upper", "comma", "swap", "punct", "lower"]
    if p.locale not in NON_LATIN:
        ops += ["nodiacritics", "nodiacritics"]
        if p.locale == "de_DE":
            ops += ["umlauts", "umlauts"]
        if len(p.given) > 1:
            ops += ["hyphen", "hyphen"]
    if p.locale == "el_GR":
        ops += ["nodiacritics"]
    for op in rng.sample(ops, k=min(2, len(ops))):
        how.append(op)
        if op == "upper":
            name = name.upper()
        elif op == "lower":
            name = name.lower()
        elif op == "comma":
            name = (
                ", ".join((" ".join(p.surname), " ".join(p.given + p.middle)))
                if p.locale != "zh_CN"
                else name
            )
        elif op == "swap" and p.locale != "zh_CN":
            name = _full(p, surname_first=p.locale != "vi_VN")
            if p.locale == "vi_VN":
                name = " ".join(p.given + p.middle + p.surname)
        elif op == "punct":
            name = "  " + name.replace(" ", "  ") + " ."
        elif op == "nodiacritics":
            name = _strip_diacritics(name)
        elif op == "umlauts":
            name = _expand_umlauts(name)
        elif op == "hyphen":
            name = name.replace(f"{p.given[0]} {p.given[1]}", f"{p.given[0]}-{p.given[1]}")
    dob, order = _other_date(rng, p)
    return Variant("format", name, dob, order, "+".join(how))


# Russian BGN/PCGN (simplified: e after consonants, ye initially and after vowels).
_BGN = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "yo", "ж": "zh",
    "з": "z", "и": "i", "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o",
    "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts",
    "ч": "ch", "ш": "sh", "щ": "shch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu",
    "я": "ya", "і": "i", "ї": "yi", "є": "ye", "ґ": "g",
}  # fmt: skip
# Ukrainian national system (KMU 2010), used in Ukrainian passports.
_KMU = {
    **_BGN, "г": "h", "ґ": "g", "е": "e", "є": "ie", "и": "y", "і": "i", "ї": "i",
    "й": "i", "ю": "iu", "я": "ia", "х": "kh", "ь": "", "щ": "shch",
}  # fmt: skip
_KMU_INITIAL = {"є": "ye", "ї": "yi", "й": "y", "ю": "yu", "я": "ya"}
# German Duden transliteration.
_DUDEN = {
    **_BGN, "в": "w", "е": "e", "ё": "jo", "ж": "sch", "з": "s", "й": "i", "с": "s",
    "х": "ch", "ц": "z", "ч": "tsch", "ш": "sch", "щ": "schtsch", "ы": "y", "ю": "ju",
    "я": "ja", "г": "g", "и": "i",
}  # fmt: skip
_VOWELS_CYR = set("аеёиоуыэюяіїєАЕЁИОУЫЭЮЯІЇЄ")


def _cyr(text: str, table: dict[str, str], initial: dict[str, str] | None = None) -> str:
    out: list[str] = []
    prev = " "
    for c in text:
        low = c.lower()
        if low == "е" and table is _BGN and (prev in " -" or prev in _VOWELS_CYR):
            rep = "ye"
        elif initial and prev in " -" and low in initial:
            rep = initial[low]
        else:
            rep = table.get(low, c)
        if table is _DUDEN and rep.endswith("s") and low == "с" and prev in _VOWELS_CYR:
            rep = "ss"
        out.append(rep.capitalize() if c.isupper() else rep)
        prev = c
    text = "".join(out)
    if table is _DUDEN:
        text = re.sub(r"(?<=[ij])ij\b", "i", re.sub(r"ij\b", "i", text))
    return text


# Greek "phonetic" romanization common on older documents and in the press.
_GREEK_PHON = [
    ("ου", "ou"), ("αι", "e"), ("ει", "i"), ("οι", "i"), ("αυ", "av"), ("ευ", "ev"),
    ("μπ", "b"), ("ντ", "d"), ("γγ", "ng"), ("γκ", "g"), ("γι", "yi"), ("γε", "ye"),
    ("α", "a"), ("β", "v"), ("γ", "g"), ("δ", "d"), ("ε", "e"), ("ζ", "z"), ("η", "i"),
    ("θ", "th"), ("ι", "i"), ("κ", "k"), ("λ", "l"), ("μ", "m"), ("ν", "n"), ("ξ", "x"),
    ("ο", "o"), ("π", "p"), ("ρ", "r"), ("σ", "s"), ("ς", "s"), ("τ", "t"), ("υ", "i"),
    ("φ", "f"), ("χ", "ch"), ("ψ", "ps"), ("ω", "o"),
]  # fmt: skip


def _greek(text: str) -> str:
    low = _strip_diacritics(text).lower()
    out = []
    i = 0
    while i < len(low):
        for src, dst in _GREEK_PHON:
            if low.startswith(src, i):
                out.append(dst)
                i += len(src)
                break
        else:
            out.append(low[i])
            i += 1
    return " ".join(w.capitalize() for w in "".join(out).split(" "))


# Arabic: consonant choices as in common Latin spellings; short vowels are not
# written in Arabic, so the romanizer supplies them as writers do.
_AR_CONS: dict[str, tuple[str, ...]] = {
    "ب": ("b",), "ت": ("t",), "ث": ("th", "s"), "ج": ("j", "g", "dj"), "ح": ("h",),
    "خ": ("kh",), "د": ("d",), "ذ": ("dh", "z"), "ر": ("r",), "ز": ("z",), "س": ("s",),
    "ش": ("sh",), "ص": ("s",), "ض": ("d", "dh"), "ط": ("t",), "ظ": ("z", "dh"),
    "ع": ("", "'", ""), "غ": ("gh",), "ف": ("f",), "ق": ("q", "k"), "ك": ("k",),
    "ل": ("l",), "م": ("m",), "ن": ("n",), "ه": ("h",), "ء": ("",), "ئ": ("",),
    "ؤ": ("",), "ة": ("a", "ah"), "ى": ("a",),
}  # fmt: skip
_AR_LONG: dict[str, tuple[str, ...]] = {
    "ا": ("a",), "أ": ("a",), "إ": ("i", "e"), "آ": ("a",), "و": ("w", "ou", "o", "u"),
    "ي": ("y", "i", "ee", "ei"),
}  # fmt: skip
_AR_SHORT = ("a", "a", "e", "o", "u", "i")
_AR_COMMON = {
    "محمد": ("Mohammed", "Muhammad", "Mohamed", "Mohammad", "Muhammed"),
    "أحمد": ("Ahmed", "Ahmad"),
    "علي": ("Ali", "Aly"),
    "عمر": ("Omar", "Umar"),
    "يوسف": ("Youssef", "Yusuf", "Yousef", "Youssouf"),
    "خالد": ("Khaled", "Khalid"),
    "حسين": ("Hussein", "Husain", "Hossein", "Hussain"),
    "حسن": ("Hassan", "Hasan"),
    "إبراهيم": ("Ibrahim", "Ebrahim", "Brahim"),
    "مصطفى": ("Mustafa", "Mostafa", "Moustafa"),
    "عبد الله": ("Abdullah", "Abdallah", "Abd Allah"),
    "فاطمة": ("Fatima", "Fatma", "Fatemah"),
}


_AR_WORDS = {
    "بن": ("bin", "ibn", "ben", "Bin"), "بنت": ("bint", "Bint"), "ابو": ("Abu", "Abou"),
    "أبو": ("Abu", "Abou"), "بني": ("Bani", "Beni"), "بنو": ("Banu", "Bani"),
}  # fmt: skip


def _arabic_word(rng: random.Random, word: str) -> str:
    letters = [c for c in word if not unicodedata.combining(c) and c != "ـ"]
    out: list[str] = []
    for i, c in enumerate(letters):
        if c in _AR_LONG:
            out.append(rng.choice(_AR_LONG[c]))
            continue
        rep = rng.choice(_AR_CONS.get(c, ("",)))
        out.append(rep)
        nxt = letters[i + 1] if i + 1 < len(letters) else None
        if nxt is not None and nxt not in _AR_LONG and nxt not in "ةى" and rng.random() < 0.85:
            out.append(rng.choice(_AR_SHORT))
    return "".join(out).capitalize()


def _arabic(rng: random.Random, text: str) -> str:
    for native, spellings in _AR_COMMON.items():
        if native in text:
            text = text.replace(native, rng.choice(spellings))
    words: list[str] = []
    for word in text.split(" "):
        if not any("\u0600" <= c <= "\u06ff" for c in word):
            words.append(word)
        elif word.startswith("ال") and len(word) > 2:
            article = rng.choice(("Al-", "al-", "El-", "Al ", "Al"))
            rest = _arabic_word(rng, word[2:])
            words.append(article + (rest if article.endswith((" ", "-")) else rest.lower()))
        elif word in _AR_WORDS:
            words.append(rng.choice(_AR_WORDS[word]))
        elif word == "عبد":
            words.append(rng.choice(("Abd", "Abdel", "Abdul", "Abd al")))
        else:
            words.append(_arabic_word(rng, word))
    return " ".join(words)


def _pinyin_syllables(text: str) -> list[str]:
    from anyascii import anyascii

    return [anyascii(c) for c in text]


def _translit_variant(rng: random.Random, p: Person, german: bool = False) -> Variant | None:
    swap = rng.random() < 0.5
    how = ""
    if p.locale == "ru_RU":
        table = _DUDEN if german else _BGN
        how = "duden" if german else "bgn"
        name = _full(p, lambda s: _cyr(s, table), surname_first=swap)
    elif p.locale == "uk_UA":
        if german:
            name, how = _full(p, lambda s: _cyr(s, _DUDEN), surname_first=swap), "duden"
        else:
            name = _full(p, lambda s: _cyr(s, _KMU, _KMU_INITIAL), surname_first=swap)
            how = "kmu2010"
    elif german:
        return None
    elif p.locale == "el_GR":
        name, how = _full(p, _greek, surname_first=swap), "greek-phonetic"
    elif p.locale == "ar_AA":
        name, how = _full(p, lambda s: _arabic(rng, s), surname_first=swap), "arabic-common"
    elif p.locale == "zh_CN":
        surname = "".join(_pinyin_syllables(p.surname[0]))
        given = _pinyin_syllables(p.given[0])
        style = rng.choice(("spaced", "official"))
        how = f"pinyin-{style}"
        if style == "spaced":
            parts = [surname, *given]
        elif style == "joined":
            parts = [surname + "".join(given).lower()]
        else:
            parts = [surname, "".join(given).capitalize()]
        name = " ".join([*parts[1:], parts[0]] if swap else parts)
    else:
        return None
    if rng.random() < 0.5:
        name = name.upper()
    dob, order = _other_date(rng, p)
    return Variant("translit_de" if german else "translit", name, dob, order, how)


def _middle_variant(rng: random.Random, p: Person, lists: NameLists) -> Variant:
    if p.middle:
        q = Person(p.locale, p.given, (), p.surname, p.dob)
        how = "middle-dropped"
    elif len(p.given) > 1:
        q = Person(p.locale, p.given[:1], (), p.surname, p.dob)
        how = "second-given-dropped"
    else:
        extra = _choice(rng, lists.first["male"] if rng.random() < 0.5 else lists.first["female"])
        if p.locale == "zh_CN":
            return Variant("middle", _full(p), p.dob.strftime("%d.%m.%Y"), None, "n/a")
        q = Person(p.locale, (*p.given, extra), (), p.surname, p.dob)
        how = "extra-given"
    return Variant("middle", _full(q), p.dob.strftime("%d.%m.%Y"), None, how)


def _typo_variant(rng: random.Random, p: Person) -> Variant:
    parts = list(p.given + p.middle + p.surname)
    i = rng.randrange(len(parts))
    word = parts[i]
    if len(word) < 3 or p.locale == "zh_CN":
        # Chinese: a wrong character (homophone or not) in the given name.
        j = rng.randrange(len(word))
        alphabet = word if p.locale != "zh_CN" else "伟强磊军洋勇艳杰娟涛明超秀霞平刚桂英"
        word = word[:j] + rng.choice(alphabet) + word[j + 1 :]
        how = "substitute"
    else:
        j = rng.randrange(1, len(word) - 1)
        op = rng.choice(("substitute", "delete", "swap"))
        how = op
        if op == "delete":
            word = word[:j] + word[j + 1 :]
        elif op == "swap":
            word = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
        else:
            word = word[:j] + rng.choice(word) + word[j + 1 :]
    parts[i] = word
    n_given = len(p.given) + len(p.middle)
    q = Person(
        p.locale,
        tuple(parts[: len(p.given)]),
        tuple(parts[len(p.given) : n_given]),
        tuple(parts[n_given:]),
        p.dob,
    )
    return Variant("typo", _full(q), p.dob.strftime("%d.%m.%Y"), None, how)


def variants(rng: random.Random, p: Person, lists: NameLists) -> list[Variant]:
    """One variant of each applicable class for a person."""
    out = [_format_variant(rng, p)]
    for german in (False, True):
        v = _translit_variant(rng, p, german)
        if v is not None:
            out.append(v)
    out.append(_middle_variant(rng, p, lists))
    out.append(_typo_variant(rng, p))
    return out
