# ruff: noqa: RUF001 -- transliteration tables hold Cyrillic and Greek letters on purpose
"""Canonical, typed match keys: the OPRF inputs of Blindmatch (wire format v1).

Pure functions, no I/O.  Every identifier of a record becomes zero or more
`MatchKey`s; the OPRF input of a key is the UTF-8 encoding of

    blindmatch/v1|<type>|<canonical value>

Two bureaus obtain the same tag exactly when they compute the same string, so
the canonical forms below are a wire format.  Changing any rule (a table entry
included) changes tags already enrolled and must come with a new prefix
(`blindmatch/v2`), never silently.

Canonical values (v1)
---------------------
``passport``, ``idcard``
    ``<ISSUER>|<NUMBER>``.  ISSUER is an ISO 3166-1 alpha-3 code or an ICAO
    Doc 9303 code (`psi._countries`); alpha-2 codes and the aliases D, UK, XK
    are mapped to alpha-3.  NUMBER is NFKC, upper-case, with spaces, ``-``,
    ``.``, ``/`` and the MRZ filler ``<`` removed; 1 to 20 of ``[A-Z0-9]``.
``person`` (exact)
    ``<name>|<YYYY-MM-DD>``.  Only for a *complete* date of birth.  ``<name>``
    is `canonical_name`: name tokens, sorted, joined by one space.
``person_phonetic`` (candidate)
    ``<codes>|<date>``.  ``<codes>`` is the phonetic code of each name token
    (`phonetic_code`), particles dropped, sorted, joined by one space; ``<date>``
    is the date of birth in ISO 8601 with reduced precision when the day or the
    month is unknown (``1980-02-13``, ``1980-02``, ``1980``).
``phone``
    E.164 (``+4930123456``) of a number `phonenumbers` considers valid.
``email``
    ``<local>@<domain>``: local part NFKC and lower-cased, domain lower-cased
    and IDNA-encoded (Python's ``idna`` codec, label by label).
``iban``
    Upper-case, no spaces; length per the IBAN registry; ISO 13616 mod-97 == 1.
``vin``
    17 characters ``[A-HJ-NPR-Z0-9]``, upper-case; see `vin_key` for the check
    digit.

Names (`name_tokens`): NFKC; combining diacritics of Latin, Greek, Cyrillic,
Hebrew and Arabic removed (so vocalised and unvocalised Arabic agree); the
Arabic article ``ال`` split off as ``al``; a name written as one run of Han or
Hangul syllables is split into family name (one syllable, or two for the
compound family names in `_COMPOUND_SURNAMES`) and given name, each further
run of such characters is one token (GB/T 28039: ``习近平`` -> ``xi jinping``);
everything transliterated to ASCII with `anyascii`; lower-cased; apostrophes
deleted (``O'Brien`` -> ``obrien``); every other non-alphanumeric character
separates tokens (so ``Hans-Peter`` == ``Hans Peter``); in each token ``ae``,
``oe``, ``ue`` become ``a``, ``o``, ``u`` so that ``Müller``, ``Muller`` and
``MUELLER`` (the ICAO spelling) agree.  Particles (``van``, ``de``, ``al``,
``bin`` ...) are ordinary tokens of the exact key and are dropped from the
phonetic key.

Partial dates: police data often knows only the year or the month of birth.
A person with such a date gets **no exact key**: "Hans Müller, 1980" is not an
exact identity and must never be reported as an exact match.  It gets the
phonetic candidate key with the reduced-precision date, which meets records
with the same partial date.  A complete date never produces a year-only key:
the measured false-candidate rate of year-only keys is far above budget (see
``benchmarks/identifier_eval.py``).
"""

from __future__ import annotations

import calendar
import enum
import functools
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import jellyfish
import phonenumbers
from anyascii import anyascii

from psi._countries import ALPHA2_TO_ALPHA3, ICAO_ALIASES, ISSUER_CODES
from psi.errors import InvalidInputError

__all__ = [
    "PREFIX",
    "DateOrder",
    "InvalidRecordError",
    "KeyType",
    "MatchKey",
    "PartialDate",
    "Record",
    "Strength",
    "canonical_issuer",
    "canonical_name",
    "email_key",
    "iban_key",
    "idcard_key",
    "match_keys",
    "name_tokens",
    "parse_date",
    "passport_key",
    "person_keys",
    "phone_key",
    "phonetic_code",
    "vin_key",
]

PREFIX: Final = "blindmatch/v1"

# Input longer than this is refused before any work is done on it.
_MAX_NAME_CHARS: Final = 300
_MAX_FIELD_CHARS: Final = 100


class Strength(enum.Enum):
    """How much a match on a key type says."""

    EXACT = "exact"
    CANDIDATE = "candidate"


class KeyType(enum.Enum):
    """The type of a match key; its value is the `<type>` of the OPRF input."""

    PASSPORT = "passport"
    IDCARD = "idcard"
    PERSON = "person"
    PERSON_PHONETIC = "person_phonetic"
    PHONE = "phone"
    EMAIL = "email"
    IBAN = "iban"
    VIN = "vin"

    @property
    def strength(self) -> Strength:
        """`Strength.CANDIDATE` for fuzzy keys, `Strength.EXACT` otherwise."""
        return Strength.CANDIDATE if self is KeyType.PERSON_PHONETIC else Strength.EXACT


@dataclass(frozen=True, order=True)
class MatchKey:
    """One canonical identifier of a record, typed."""

    type: KeyType
    value: str

    @property
    def oprf_input(self) -> bytes:
        """The OPRF input: ``blindmatch/v1|<type>|<value>`` in UTF-8."""
        return f"{PREFIX}|{self.type.value}|{self.value}".encode()


class InvalidRecordError(InvalidInputError):
    """One or more fields of a record are invalid; `errors` has one per field."""

    def __init__(self, errors: Iterable[InvalidInputError]) -> None:
        self.errors = tuple(errors)
        if not self.errors:
            raise ValueError("InvalidRecordError needs at least one error")
        first = self.errors[0]
        super().__init__(first.reason, field=first.field)
        # str() lists every field; `field` and `reason` are the first error's.
        self.args = ("; ".join(str(e) for e in self.errors),)


def _show(value: str, limit: int = 40) -> str:
    """A value quoted for an error message: escaped, so that a hostile field
    cannot inject terminal control sequences, and shortened."""
    shown = value if len(value) <= limit else value[:limit] + "…"
    return ascii(shown) if not shown.isprintable() else repr(shown)


def _check_length(value: str, limit: int, field: str) -> None:
    if len(value) > limit:
        raise InvalidInputError(
            f"too long ({len(value)} characters, at most {limit} are accepted)", field=field
        )


# --------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------

# Combining marks removed before transliteration.  Limited to scripts where a
# mark is a diacritic or a vowel point; in Indic scripts marks carry vowels
# that anyascii needs.
_STRIP_MARKS: Final = re.compile(
    "[\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]"
)
# The Arabic definite article at the start of a word (after NFKC and marks removed).
_ARABIC_ARTICLE: Final = re.compile(r"(?<!\w)\u0627\u0644")
_ARABIC_LETTER: Final = re.compile("[\u0620-\u064a\u066e-\u06d3\u06fa-\u06ff]")
_APOSTROPHES: Final = re.compile(r"['`]")
_NON_ALNUM: Final = re.compile(r"[^a-z0-9]+")
_UMLAUT_DIGRAPH: Final = re.compile(r"([aou])e+")  # e+ keeps the rule idempotent ("aee")

# Compound (two-character) family names, simplified and traditional, and
# Korean two-syllable family names.  Part of the v1 wire format.
_COMPOUND_SURNAMES: Final = frozenset(
    {
        "欧阳", "歐陽", "司马", "司馬", "上官", "诸葛", "諸葛", "东方", "東方", "皇甫",
        "尉迟", "尉遲", "公孙", "公孫", "慕容", "长孙", "長孫", "宇文", "司徒", "夏侯",
        "轩辕", "軒轅", "令狐", "端木", "独孤", "獨孤", "南宫", "南宮", "西门", "西門",
        "呼延", "澹台", "澹臺", "申屠", "闻人", "聞人", "万俟", "萬俟", "钟离", "鍾離",
        "赫连", "赫連", "濮阳", "濮陽", "淳于", "单于", "單于", "司空", "拓跋",
        "남궁", "황보", "제갈", "선우", "독고", "사공",
    }
)  # fmt: skip

# Particles: kept in the exact key, dropped from the phonetic key so that
# "al-Hassan" meets "Hassan" and "Ludwig van Beethoven" meets "Ludwig Beethoven".
_PARTICLES: Final = frozenset(
    {
        "al", "el", "ul", "bin", "ibn", "bint", "bn", "van", "von", "vom", "der", "den",
        "de", "del", "della", "di", "da", "do", "dos", "das", "du", "la", "le", "lo",
        "zu", "zum", "zur", "ter", "ten", "te", "y", "e", "ben", "bani", "banu", "beni",
        "bny", "bnw",
    }
)  # fmt: skip


def _is_syllabic(char: str) -> bool:
    """Han ideographs and Hangul syllables: one character, one syllable."""
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x3134F
        or 0xAC00 <= code <= 0xD7A3
    )


def _romanize_syllabic_run(run: str, whole_name: bool) -> list[str]:
    """Romanize a run of Han/Hangul characters; split family/given name only
    when the run is the whole name (otherwise the writer already separated them)."""
    if not whole_name or len(run) < 2:
        return ["".join(anyascii(c) for c in run)]
    split = 2 if run[:2] in _COMPOUND_SURNAMES and len(run) > 2 else 1
    family, given = run[:split], run[split:]
    return ["".join(anyascii(c) for c in family), "".join(anyascii(c) for c in given)]


def _prepare(raw: str) -> str:
    text = unicodedata.normalize("NFKC", raw)
    text = unicodedata.normalize("NFC", _STRIP_MARKS.sub("", unicodedata.normalize("NFD", text)))
    return _ARABIC_ARTICLE.sub("al ", text)


# Cyrillic per ICAO Doc 9303 Part 3 (the spelling in the MRZ of Russian,
# Belarusian, Serbian, ... passports), so that "Юрий" meets the passport's IURII.
_CYRILLIC_ICAO: Final = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh",
    "з": "z", "и": "i", "й": "i", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o",
    "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts",
    "ч": "ch", "ш": "sh", "щ": "shch", "ъ": "ie", "ы": "y", "ь": "", "э": "e", "ю": "iu",
    "я": "ia", "і": "i", "ї": "i", "є": "ie", "ґ": "g", "ў": "u", "ѕ": "dz", "ј": "j",
    "љ": "lj", "њ": "nj", "ћ": "c", "ђ": "d", "џ": "dz", "ќ": "kj", "ѓ": "gj",
}  # fmt: skip
# Greek per ELOT 743 (= ISO 843 type 2, the spelling of Greek passports).
_GREEK_DIGRAPHS: Final = (
    (re.compile("(?<![\u0370-\u03ff])μπ", re.IGNORECASE), "b"),
    (re.compile("ου", re.IGNORECASE), "ou"),
    (re.compile("([αεη])υ(?=[θκξπστφχψ]|$|[^\u0370-\u03ff])", re.IGNORECASE), "\\1f"),
    (re.compile("([αεη])υ", re.IGNORECASE), "\\1v"),
    (re.compile("γ(?=[γξχ])", re.IGNORECASE), "n"),
)
_GREEK_LETTERS: Final = dict(
    zip("αβγδεζηθικλμνξοπρσςτυφχψω",
        ("a", "v", "g", "d", "e", "z", "i", "th", "i", "k", "l", "m", "n", "x", "o", "p",
         "r", "s", "s", "t", "y", "f", "ch", "ps", "o"), strict=True)
)  # fmt: skip


def _to_ascii(text: str) -> str:
    """Transliterate: Cyrillic by ICAO 9303, Greek by ELOT 743, the rest by anyascii."""
    if any("\u0370" <= c <= "\u03ff" for c in text):
        for pattern, replacement in _GREEK_DIGRAPHS:
            text = pattern.sub(replacement, text)
    out: list[str] = []
    for char in text:
        lower = char.lower()
        mapped = _CYRILLIC_ICAO.get(lower)
        if mapped is None:
            mapped = _GREEK_LETTERS.get(lower)
        out.append(mapped if mapped is not None else anyascii(char))
    return "".join(out)


# Name pieces repeat across a file (given names, common surnames), so their
# transliteration is cached: it is the costliest step of normalizing a name.
@functools.lru_cache(maxsize=1 << 16)
def _ascii_token(text: str) -> tuple[str, ...]:
    ascii_text = _APOSTROPHES.sub("", _to_ascii(text).lower())
    return tuple(_UMLAUT_DIGRAPH.sub(r"\1", t) for t in _NON_ALNUM.split(ascii_text) if t)


def name_tokens(raw: str) -> tuple[str, ...]:
    """The canonical tokens of a name, in written order (see module docstring).

    Raises `InvalidInputError` (field ``name``) if nothing is left.
    """
    _check_length(raw, _MAX_NAME_CHARS, "name")
    text = _prepare(raw)
    chunks = [
        c
        for c in re.split("[\\s,;/\u00b7\u30fb\\-\u2010-\u2015]+", text)
        if any(ch.isalnum() for ch in c)
    ]
    tokens: list[str] = []
    for chunk in chunks:
        # Split the chunk into runs of syllabic and of other characters (every
        # syllabic character is at U+3400 or above: most chunks are one run).
        pieces: list[tuple[bool, str]] = []
        if max(chunk) < "\u3400":
            pieces.append((False, chunk))
        else:
            for char in chunk:
                syl = _is_syllabic(char)
                if pieces and pieces[-1][0] == syl:
                    pieces[-1] = (syl, pieces[-1][1] + char)
                else:
                    pieces.append((syl, char))
        whole = len(chunks) == 1 and len(pieces) == 1
        for syl, piece in pieces:
            if syl:
                for romanized in _romanize_syllabic_run(piece, whole):
                    tokens.extend(_ascii_token(romanized))
            else:
                tokens.extend(_ascii_token(piece))
    if not tokens:
        raise InvalidInputError(
            f"no letters left in {_show(raw)} after removing punctuation", field="name"
        )
    return tuple(tokens)


def canonical_name(raw: str) -> str:
    """The canonical name: `name_tokens` sorted, joined by one space."""
    return " ".join(sorted(name_tokens(raw)))


# Folds applied before metaphone so that the usual romanizations of one sound
# get one code.  Each line is there because the evaluation set showed the
# variants it joins (benchmarks/identifier_eval.py).
_PHONETIC_FOLDS: Final = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"dj", "j"),  # Arabic/Serbian dj vs j
        (r"ks", "x"),  # Aleksandr/Alexander
        (r"th", "t"),  # Arabic/Greek th vs t (Fatah/Fath, Tomas/Thomas)
        (r"h$", ""),  # final h (Arabic ta marbuta: Fatima/Fatimah)
        (r"[yj]", "i"),  # Cyrillic й/ю/я as y, i or j (Yuriy/Iurii/Jurij)
        (r"g(?=i[aeou])", ""),  # Greek gi/yi before a vowel (Giorgos/Yiorgos)
        (r"gk", "g"),  # Greek gk vs g
        (r"m[pb]", "b"),  # Greek mp vs b
        (r"n(?=[td])", ""),  # Greek nt vs d
        # Ukrainian h vs Russian g (Hanna/Ganna), and an h that metaphone would
        # silence after a vowel (Ahmed vs Arabic "hmd"): both become k, except
        # in the digraphs ch, sh, kh, zh, ph and gh.
        (r"gh", "g"),
        (r"(?<![cskzp])h|g", "k"),
        (r"(.)\1+", r"\1"),  # doubled letters
    )
)
# Token rewrites for the phonetic key: the Arabic article glued to a name
# (Alhassan) and the forms of "abd" (Abdul, Abdel, Abd al).
_GLUED_ARTICLE: Final = re.compile(r"^al(?=[a-z]{3})")
_ABD: Final = re.compile(r"^abd(?:ul|el|al|ol|ou|u)?")
# Hanyu Pinyin syllables (and a few Cantonese readings anyascii gives for Han
# characters): a name written as 3+ single syllables ("Xi Jin Ping") is
# regrouped into family and given name for the phonetic key.
_PINYIN: Final = frozenset(
    (  # noqa: SIM905 - a word list reads better as text
        "a ai an ang ao ba baak bai ban bang bao bei ben beng bi bian biao bie bin bing bo bu "
        "ca cai can cang cao ce cen ceng cha chai chan chang chao che chen cheng chi chong "
        "chou chu chua chuai chuan chuang chui chun chuo ci cong cou cu cuan cui cun cuo da "
        "dai dan dang dao de den deng di dia dian diao die ding diu dong dou du duan dui dun "
        "duo e ei en eng er fa fan fang fei fen feng fiao fo fou fu ga gaa gai gan gang gao "
        "ge gei gen geng gong gou gu gua guai guan guang gui gun guo gwaan ha hai han hang "
        "hao he hei hen heng hm hong hou hu hua huai huan huang hui hun huo ji jia jian jiang "
        "jiao jie jin jing jiong jiu ju juan jue jun ka kai kan kang kao ke kei ken keng kong "
        "kou ku kua kuai kuan kuang kui kun kuo la lai lan lang lao le lei leng li lia lian "
        "liang liao lie lin ling liu lo long lou lu luan lue lun lung luo m ma mai man mang "
        "mao me mei men meng mi mian miao mie min ming miu mo mou mu na nai nan nang nao ne "
        "nei nen neng ng ni nian niang niao nie nin ning niu nong nou nu nuan nue nun nuo o "
        "ou pa pai pan pang pao pei pen peng pi pian piao pie pin ping po pou pu qi qia qian "
        "qiang qiao qie qin qing qiong qiu qu quan que qun ran rang rao re ren reng ri rong "
        "rou ru rua ruan rui run ruo sa sai san sang sao sap se sen seng sha shai shan shang "
        "shao she shei shen sheng shi shou shu shua shuai shuan shuang shui shun shuo si song "
        "sou su suan sui sun suo ta tai tan tang tao te teng ti tian tiao tie ting tong tou "
        "tu tuan tui tun tuo wa wai wan wang wei wen weng wo wu xi xia xian xiang xiao xie "
        "xin xing xiong xiu xu xuan xue xun ya yan yang yao ye yi yin ying yo yong you yu "
        "yuan yue yun za zai zan zang zao ze zei zen zeng zha zhai zhan zhang zhao zhe zhen "
        "zheng zhi zhong zhou zhu zhua zhuai zhuan zhuang zhui zhun zhuo zi zong zou zu zuan "
        "zui zun zuo "
    ).split()
)


def _fold(token: str) -> str:
    for pattern, replacement in _PHONETIC_FOLDS:
        token = pattern.sub(replacement, token)
    return token


@functools.lru_cache(maxsize=1 << 16)
def phonetic_code(token: str) -> str:
    """Phonetic code of one canonical name token: metaphone after the folds
    above, repeated letters of the code merged, any leading vowel dropped (Arabic
    written without its initial vowel then agrees: Ahmed / "hmd")."""
    code = re.sub(r"(.)\1+", r"\1", str(jellyfish.metaphone(_fold(token))))
    return code.lstrip("AEIOU") or code


@functools.lru_cache(maxsize=1 << 16)
def _pinyin_run(token: str) -> bool:
    """Whether a token is one or more pinyin syllables (Chinese given names)."""
    ends = {0}
    for end in range(1, len(token) + 1):
        starts = range(max(0, end - 6), end)
        if any(start in ends and token[start:end] in _PINYIN for start in starts):
            ends.add(end)
    return len(token) in ends


def _monosyllabic_name(tokens: tuple[str, ...]) -> bool:
    """Chinese (all tokens pinyin) or Vietnamese-like (3+ tokens of one vowel
    group each) names, which differ mostly in the vowels metaphone drops."""
    if all(_pinyin_run(t) for t in tokens):
        return True
    return len(tokens) >= 3 and all(len(re.findall("[aeiouy]+", t)) == 1 for t in tokens)


def _phonetic_tokens(tokens: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for token in tokens:
        if token in _PARTICLES:
            continue
        token = _GLUED_ARTICLE.sub("", token)
        abd = _ABD.match(token)
        if abd:
            out.append("abd")
            token = _GLUED_ARTICLE.sub("", token[abd.end() :])
            if len(token) < 3:
                continue
        out.append(token)
    return out or list(tokens)


def _phonetic_names(tokens: tuple[str, ...], abjad: bool = False) -> list[str]:
    """The phonetic name(s): sorted codes; two groupings for spaced pinyin."""
    groupings = [_phonetic_tokens(tokens)]
    if len(tokens) >= 3 and all(t in _PINYIN for t in tokens):
        groupings = [
            [tokens[0], "".join(tokens[1:])],
            ["".join(tokens[:-1]), tokens[-1]],
        ]
    # Names made of monosyllables (Chinese, Vietnamese) differ mostly in their
    # vowels, which metaphone drops: they keep their folded spelling instead.
    # Arabic script (`abjad`) omits short vowels, so it never counts as such.
    mono = not abjad and _monosyllabic_name(tokens)
    code = _fold if mono else phonetic_code
    names = []
    for grouping in groupings:
        codes = sorted({c for c in map(code, grouping) if c})
        if codes:
            names.append(" ".join(codes))
    return sorted(set(names))


# --------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------


class DateOrder(enum.Enum):
    """Order of day, month and year in numeric dates with the year last or first."""

    DMY = "DMY"
    MDY = "MDY"
    YMD = "YMD"


_MIN_YEAR: Final = 1850
_MAX_YEAR: Final = 2100


@dataclass(frozen=True, order=True)
class PartialDate:
    """A date of birth whose month and day may be unknown (day needs month)."""

    year: int
    month: int | None = None
    day: int | None = None

    def __post_init__(self) -> None:
        if not _MIN_YEAR <= self.year <= _MAX_YEAR:
            raise InvalidInputError(
                f"year {self.year} is outside {_MIN_YEAR}..{_MAX_YEAR}", field="dob"
            )
        if self.month is None:
            if self.day is not None:
                raise InvalidInputError(
                    "a day without a month cannot be used; mark the day unknown too",
                    field="dob",
                )
            return
        if not 1 <= self.month <= 12:
            raise InvalidInputError(f"month {self.month} does not exist", field="dob")
        if self.day is not None:
            last = calendar.monthrange(self.year, self.month)[1]
            if not 1 <= self.day <= last:
                raise InvalidInputError(
                    f"day {self.day} does not exist in {self.year}-{self.month:02d}",
                    field="dob",
                )

    @property
    def is_complete(self) -> bool:
        """True when year, month and day are all known."""
        return self.day is not None

    def iso(self) -> str:
        """ISO 8601, with reduced precision when incomplete: 1980-02-13, 1980-02, 1980."""
        if self.month is None:
            return f"{self.year:04d}"
        if self.day is None:
            return f"{self.year:04d}-{self.month:02d}"
        return f"{self.year:04d}-{self.month:02d}-{self.day:02d}"


_MONTHS: Final = {
    name: number
    for number, names in enumerate(
        (
            ("jan", "january", "januar", "janner", "janvier", "janv", "enero", "ene"),
            ("feb", "february", "februar", "fevrier", "fevr", "fev", "febrero"),
            ("mar", "march", "marz", "mrz", "mars", "marzo"),
            ("apr", "april", "avril", "avr", "abril", "abr"),
            ("may", "mai", "mayo"),
            ("jun", "june", "juni", "juin", "junio"),
            ("jul", "july", "juli", "juillet", "juil", "julio"),
            ("aug", "august", "aout", "agosto", "ago"),
            ("sep", "sept", "september", "septembre", "septiembre", "setiembre"),
            ("oct", "october", "okt", "oktober", "octobre", "octubre"),
            ("nov", "november", "novembre", "noviembre"),
            ("dec", "december", "dez", "dezember", "decembre", "diciembre", "dic"),
        ),
        start=1,
    )
    for name in names
}
# Markers police data uses for an unknown day or month.
_UNKNOWN_PART: Final = re.compile(r"^(?:\?+|x+|u+|0+|unk|nk|<+)$")
_ISO_DATETIME: Final = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?$"
)


def _date_part(part: str) -> int | None:
    """A numeric date part, or None when it is an unknown-marker."""
    if _UNKNOWN_PART.match(part):
        return None
    return int(part)


def _build(year: str, month: str | None, day: str | None) -> PartialDate:
    y = _date_part(year)
    if y is None:
        raise InvalidInputError("the year of birth is unknown; a year is required", field="dob")
    if len(year) != 4:
        raise InvalidInputError(
            f"two-digit year {year!r} is ambiguous; write the year in full", field="dob"
        )
    m = None if month is None else _date_part(month)
    d = None if day is None else _date_part(day)
    return PartialDate(y, m, d)


# Dates of birth repeat (a century has about 36,500 of them), so parsing is cached;
# `PartialDate` is immutable, and a refusal is raised again on each call.
@functools.lru_cache(maxsize=1 << 16)
def parse_date(raw: str, order: DateOrder | None = None) -> PartialDate:
    """Parse a date of birth as written in police records.

    Accepts ISO (``1980-02-13``, ``1980-02``, ``1980``, ``19800213``, with a
    time part ignored), numeric dates with the year last (``13.02.1980``,
    ``02/13/1980``; the day/month order is `order`; without it dotted dates are
    day.month.year and any other date that reads validly both ways is refused
    as ambiguous), month names in English,
    German, French and Spanish (``13 Feb 1980``, ``February 13, 1980``), and
    unknown day or month written ``??``, ``XX``, ``00``, ``UNK`` or ``<<``.
    """
    _check_length(raw, _MAX_FIELD_CHARS, "dob")
    text = unicodedata.normalize("NFKC", raw).strip()
    if not text:
        raise InvalidInputError("date of birth is empty", field="dob")
    iso_time = _ISO_DATETIME.match(text)
    if iso_time:
        text = iso_time.group(1)
    if re.fullmatch(r"\d{8}", text):
        return _build(text[:4], text[4:6], text[6:])
    parts = [p for p in re.split(r"[\s\-./,]+", anyascii(text).lower()) if p]
    if (
        not all(re.fullmatch(r"[a-z]+|\d{1,4}|\?+|<+", p) for p in parts)
        or not 1 <= len(parts) <= 3
    ):
        raise InvalidInputError(f"cannot read {_show(raw)} as a date", field="dob")
    try:
        named = [i for i, p in enumerate(parts) if p.isalpha() and p in _MONTHS]
        if named:
            return _parse_named(parts, named[0], raw)
        if order is None and re.fullmatch(r"[^./\-]+\.[^./\-]+\.\d{4}", text):
            # Day.month.year: dotted dates are never month-first in practice.
            order = DateOrder.DMY
        return _parse_numeric(parts, order, raw)
    except ValueError:
        raise InvalidInputError(f"cannot read {_show(raw)} as a date", field="dob") from None


def _parse_named(parts: list[str], index: int, raw: str) -> PartialDate:
    month = str(_MONTHS[parts[index]])
    rest = parts[:index] + parts[index + 1 :]
    years = [p for p in rest if len(p) == 4 and p.isdigit()]
    others = [p for p in rest if p not in years]
    if len(years) != 1 or len(others) > 1:
        raise InvalidInputError(f"cannot read {_show(raw)} as a date", field="dob")
    return _build(years[0], month, others[0] if others else None)


def _parse_numeric(parts: list[str], order: DateOrder | None, raw: str) -> PartialDate:
    if any(p.isalpha() and not _UNKNOWN_PART.match(p) for p in parts):
        raise InvalidInputError(f"cannot read {_show(raw)} as a date", field="dob")
    if len(parts) == 1:
        return _build(parts[0], None, None)
    if len(parts) == 2:
        # 1980-02 or 02/1980.
        if len(parts[0]) == 4:
            return _build(parts[0], parts[1], None)
        return _build(parts[1], parts[0], None)
    first, middle, last = parts
    if len(first) == 4 and len(last) != 4:
        return _build(first, middle, last)
    if len(last) != 4 and len(first) != 4:
        raise InvalidInputError(
            f"{_show(raw)} has no four-digit year; write the year in full", field="dob"
        )
    orders = [order] if order in (DateOrder.DMY, DateOrder.MDY) else [DateOrder.DMY, DateOrder.MDY]
    readings: dict[PartialDate, DateOrder] = {}
    failure: InvalidInputError | None = None
    for candidate in orders:
        day, month = (first, middle) if candidate is DateOrder.DMY else (middle, first)
        try:
            readings.setdefault(_build(last, month, day), candidate)
        except InvalidInputError as exc:
            failure = failure or exc
    if len(readings) == 1:
        return next(iter(readings))
    if not readings:
        assert failure is not None  # noqa: S101 - at least one order was tried
        raise failure
    raise InvalidInputError(
        f"{_show(raw)} reads as day-month and as month-day; set date_order in the schema",
        field="dob",
    )


# --------------------------------------------------------------------------
# Person keys
# --------------------------------------------------------------------------


def person_keys(
    name: str, dob: str | PartialDate, *, date_order: DateOrder | None = None
) -> tuple[MatchKey, ...]:
    """The person keys of a name and date of birth: the exact key (complete dates
    only) and the phonetic candidate key."""
    date = dob if isinstance(dob, PartialDate) else parse_date(dob, date_order)
    return _person_keys(name, name_tokens(name), date)


def _person_keys(name: str, tokens: tuple[str, ...], date: PartialDate) -> tuple[MatchKey, ...]:
    keys: list[MatchKey] = []
    iso = date.iso()
    if date.is_complete:
        keys.append(MatchKey(KeyType.PERSON, f"{' '.join(sorted(tokens))}|{iso}"))
    keys.extend(
        MatchKey(KeyType.PERSON_PHONETIC, f"{codes}|{iso}")
        for codes in _phonetic_names(tokens, abjad=_ARABIC_LETTER.search(name) is not None)
    )
    return tuple(keys)


# --------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------

_DOC_SEPARATORS: Final = re.compile(r"[\s\-./<]+")


def canonical_issuer(raw: str, field: str = "issuer") -> str:
    """The alpha-3 (or ICAO) code of a document issuer given as alpha-3,
    alpha-2 or an ICAO alias (``D`` -> ``DEU``)."""
    code = unicodedata.normalize("NFKC", raw).strip().upper().replace("<", "")
    if code in ISSUER_CODES:
        return code
    mapped = ICAO_ALIASES.get(code) or ALPHA2_TO_ALPHA3.get(code)
    if mapped is None:
        raise InvalidInputError(
            f"unknown country code {_show(raw)}; use ISO 3166 alpha-3 (DEU) or alpha-2 (DE)",
            field=field,
        )
    return mapped


def _document_key(key_type: KeyType, issuer: str, number: str) -> MatchKey:
    field = key_type.value
    _check_length(number, _MAX_FIELD_CHARS, field)
    canonical = _DOC_SEPARATORS.sub("", unicodedata.normalize("NFKC", number)).upper()
    if not canonical:
        raise InvalidInputError("document number is empty", field=field)
    if not re.fullmatch(r"[A-Z0-9]{1,20}", canonical):
        raise InvalidInputError(
            f"document number {_show(number)} may contain only letters A-Z, digits, "
            "spaces and dashes, at most 20 characters",
            field=field,
        )
    code = canonical_issuer(issuer, field=f"{field}_issuer")
    return MatchKey(key_type, f"{code}|{canonical}")


def passport_key(issuer: str, number: str) -> MatchKey:
    """Passport key ``<ISSUER>|<NUMBER>`` (fields ``passport``, ``passport_issuer``)."""
    return _document_key(KeyType.PASSPORT, issuer, number)


def idcard_key(issuer: str, number: str) -> MatchKey:
    """Identity-card key ``<ISSUER>|<NUMBER>`` (fields ``idcard``, ``idcard_issuer``)."""
    return _document_key(KeyType.IDCARD, issuer, number)


# --------------------------------------------------------------------------
# Phone, e-mail
# --------------------------------------------------------------------------


def phone_key(raw: str, default_region: str | None = None) -> MatchKey:
    """Phone key in E.164.  Numbers without ``+``/``00`` need `default_region`
    (ISO 3166 alpha-2, e.g. ``"DE"``)."""
    _check_length(raw, _MAX_FIELD_CHARS, "phone")
    region = default_region.upper() if default_region else None
    if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidInputError(
            f"unknown phone region {_show(default_region or '')}", field="phone"
        )
    try:
        number = phonenumbers.parse(unicodedata.normalize("NFKC", raw), region)
    except phonenumbers.NumberParseException as exc:
        hint = "" if region else " (no country code and no default phone region)"
        raise InvalidInputError(
            f"cannot read {_show(raw)} as a phone number{hint}", field="phone"
        ) from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidInputError(
            f"{_show(raw)} is not a valid phone number"
            + (f" for region {region}" if region else ""),
            field="phone",
        )
    return MatchKey(
        KeyType.PHONE, phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    )


def email_key(raw: str) -> MatchKey:
    """E-mail key: lower-case local part, lower-case IDNA domain."""
    _check_length(raw, 254, "email")
    text = unicodedata.normalize("NFKC", raw).strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise InvalidInputError(f"{_show(raw)} is not an e-mail address", field="email")
    if any(c.isspace() or not c.isprintable() for c in text) or len(local) > 64:
        raise InvalidInputError(f"{_show(raw)} is not an e-mail address", field="email")
    labels = domain.rstrip(".").lower().split(".")
    try:
        ascii_labels = [label.encode("idna").decode("ascii") for label in labels]
    except UnicodeError:
        raise InvalidInputError(f"invalid domain in {_show(raw)}", field="email") from None
    if len(ascii_labels) < 2 or not all(
        re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", label) for label in ascii_labels
    ):
        raise InvalidInputError(f"invalid domain in {_show(raw)}", field="email")
    return MatchKey(KeyType.EMAIL, f"{local.lower()}@{'.'.join(ascii_labels)}")


# --------------------------------------------------------------------------
# IBAN, VIN
# --------------------------------------------------------------------------

# IBAN length per country (SWIFT IBAN registry).
_IBAN_LENGTHS: Final = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def iban_key(raw: str) -> MatchKey:
    """IBAN key: upper-case, no spaces; registry length and mod-97 checked."""
    _check_length(raw, _MAX_FIELD_CHARS, "iban")
    iban = re.sub(r"[\s\-]+", "", unicodedata.normalize("NFKC", raw)).upper()
    if iban.startswith("IBAN"):
        iban = iban[4:]
    if not re.fullmatch(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{1,30}", iban):
        raise InvalidInputError(
            f"{_show(raw)} is not an IBAN (two letters, two check digits, account)",
            field="iban",
        )
    expected = _IBAN_LENGTHS.get(iban[:2])
    if expected is None:
        raise InvalidInputError(f"{iban[:2]} is not a country of the IBAN registry", field="iban")
    if len(iban) != expected:
        raise InvalidInputError(
            f"an IBAN from {iban[:2]} has {expected} characters, this one {len(iban)}",
            field="iban",
        )
    digits = "".join(str(int(c, 36)) for c in iban[4:] + iban[:4])
    if int(digits) % 97 != 1:
        raise InvalidInputError(f"IBAN {_show(raw)} has wrong check digits", field="iban")
    return MatchKey(KeyType.IBAN, iban)


_VIN_VALUES: Final = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMNPR", (1, 2, 3, 4, 5, 7, 9), strict=True)),
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS: Final = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def _vin_check_digit(vin: str) -> str:
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin, _VIN_WEIGHTS, strict=True))
    remainder = total % 11
    return "X" if remainder == 10 else str(remainder)


def vin_key(raw: str) -> MatchKey:
    """VIN key (ISO 3779, 17 characters, no I, O or Q).

    The 9th character is a check digit where the law requires it: North
    America (49 CFR 565; WMI starting 1-5) and China (GB 16735; WMI starting L).
    Only there is a wrong check digit rejected.  Elsewhere (e.g. Europe) the 9th
    character is free, so validating it would reject genuine vehicles.
    """
    _check_length(raw, _MAX_FIELD_CHARS, "vin")
    vin = re.sub(r"[\s\-]+", "", unicodedata.normalize("NFKC", raw)).upper()
    if len(vin) != 17:
        raise InvalidInputError(
            f"a VIN has 17 characters, {_show(raw)} has {len(vin)}", field="vin"
        )
    if not re.fullmatch(r"[A-HJ-NPR-Z0-9]{17}", vin):
        raise InvalidInputError(
            f"{_show(raw)} contains characters a VIN cannot have (I, O, Q or punctuation)",
            field="vin",
        )
    if vin[0] in "12345L" and vin[8] != _vin_check_digit(vin):
        raise InvalidInputError(
            f"VIN {_show(raw)} has a wrong check digit (position 9 should be "
            f"{_vin_check_digit(vin)})",
            field="vin",
        )
    return MatchKey(KeyType.VIN, vin)


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One record of a bureau: its local id and raw identifier fields.

    Empty or blank fields count as absent.  A passport or ID-card number needs
    its issuer; a name needs a date of birth and vice versa.
    """

    record_id: str
    name: str | None = None
    dob: str | None = None
    passport: str | None = None
    passport_issuer: str | None = None
    idcard: str | None = None
    idcard_issuer: str | None = None
    phone: str | None = None
    email: str | None = None
    iban: str | None = None
    vin: str | None = None


def _present(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None


def _record_keys(
    record: Record, date_order: DateOrder | None, phone_region: str | None
) -> tuple[list[MatchKey], list[InvalidInputError]]:
    keys: list[MatchKey] = []
    errors: list[InvalidInputError] = []

    def attempt(fn: Callable[..., MatchKey], *args: object) -> None:
        try:
            keys.append(fn(*args))
        except InvalidInputError as exc:
            errors.append(exc)

    name, dob = _present(record.name), _present(record.dob)
    if name and dob:
        # Report a bad name and a bad date separately.
        date: PartialDate | None = None
        try:
            date = parse_date(dob, date_order)
        except InvalidInputError as exc:
            errors.append(exc)
        try:
            tokens = name_tokens(name)
        except InvalidInputError as exc:
            errors.append(exc)
        else:
            if date is not None:
                keys.extend(_person_keys(name, tokens, date))
    elif name:
        errors.append(
            InvalidInputError(
                "a name needs a date of birth (a year alone, 1980, is accepted)", field="dob"
            )
        )
    elif dob:
        errors.append(InvalidInputError("a date of birth needs a name", field="name"))

    for key_type in (KeyType.PASSPORT, KeyType.IDCARD):
        field = key_type.value
        number = _present(getattr(record, field))
        issuer = _present(getattr(record, f"{field}_issuer"))
        if number and issuer:
            attempt(_document_key, key_type, issuer, number)
        elif number:
            errors.append(
                InvalidInputError("the issuing country is missing", field=f"{field}_issuer")
            )
        elif issuer:
            errors.append(
                InvalidInputError("an issuing country is given but no document number", field=field)
            )

    for value, fn, args in (
        (record.phone, phone_key, (phone_region,)),
        (record.email, email_key, ()),
        (record.iban, iban_key, ()),
        (record.vin, vin_key, ()),
    ):
        present = _present(value)
        if present:
            attempt(fn, present, *args)
    return keys, errors


_TYPE_ORDER: Final = {t: i for i, t in enumerate(KeyType)}


def match_keys(
    record: Record,
    *,
    date_order: DateOrder | None = None,
    phone_region: str | None = None,
) -> tuple[MatchKey, ...]:
    """All match keys of a record, de-duplicated, sorted by type then value.

    Raises `InvalidRecordError` listing every invalid field; a record with no
    identifier at all is invalid too (it could never match).
    """
    if not record.record_id.strip():
        raise InvalidRecordError([InvalidInputError("record id is empty", field="id")])
    keys, errors = _record_keys(record, date_order, phone_region)
    if errors:
        raise InvalidRecordError(errors)
    if not keys:
        raise InvalidRecordError(
            [InvalidInputError("the record has no identifier to match on", field="record")]
        )
    return tuple(sorted(set(keys), key=lambda k: (_TYPE_ORDER[k.type], k.value)))
