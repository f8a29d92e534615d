# ruff: noqa: RUF001 -- known cases are written in their own scripts
"""Known cases for psi.identifiers: every script, every key type, every refusal."""

from __future__ import annotations

import subprocess
import sys

import pytest

from psi.errors import InvalidInputError
from psi.identifiers import (
    DateOrder,
    InvalidRecordError,
    KeyType,
    MatchKey,
    PartialDate,
    Record,
    Strength,
    canonical_issuer,
    canonical_name,
    email_key,
    iban_key,
    idcard_key,
    match_keys,
    name_tokens,
    parse_date,
    passport_key,
    person_keys,
    phone_key,
    vin_key,
)


def exact(name: str, dob: str = "1980-02-13") -> str:
    return next(k.value for k in person_keys(name, dob) if k.type is KeyType.PERSON)


def fuzzy(name: str, dob: str = "1980-02-13") -> set[str]:
    return {k.value for k in person_keys(name, dob) if k.type is KeyType.PERSON_PHONETIC}


# --------------------------------------------------------------------------
# Key types and the OPRF input
# --------------------------------------------------------------------------


def test_key_type_values_and_strength() -> None:
    assert [t.value for t in KeyType] == [
        "passport", "idcard", "person", "person_phonetic", "phone", "email", "iban", "vin",
    ]  # fmt: skip
    assert KeyType.PERSON_PHONETIC.strength is Strength.CANDIDATE
    assert all(t.strength is Strength.EXACT for t in KeyType if t is not KeyType.PERSON_PHONETIC)


def test_oprf_input_is_prefixed_utf8() -> None:
    key = MatchKey(KeyType.PASSPORT, "DEU|C01X00T47")
    assert key.oprf_input == b"blindmatch/v1|passport|DEU|C01X00T47"


# --------------------------------------------------------------------------
# Names in every script
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variants", "canonical"),
    [
        pytest.param(
            ["Müller, Hans-Peter", "HANS PETER MUELLER", "Mueller Hans Peter", "hans-peter muller"],
            "hans muller peter",
            id="german-umlaut",
        ),
        pytest.param(
            ["François Pérez", "FRANCOIS PEREZ", "Perez, François"], "francois perez", id="french"
        ),
        pytest.param(
            ["Şükrü Çağlar", "SUKRU CAGLAR", "İsmail", "ismail"][:2], "caglar sukru", id="turkish"
        ),
        pytest.param(["Łukasz Wiśniewski", "Lukasz WISNIEWSKI"], "lukasz wisniewski", id="polish"),
        pytest.param(
            ["Nguyễn Văn Thành", "NGUYEN VAN THANH", "Thanh Nguyen Van"],
            "nguyen thanh van",
            id="vietnamese",
        ),
        pytest.param(
            ["Пётр Ильич Чайковский", "PETR ILICH CHAIKOVSKII"],
            "chaikovskii ilich petr",
            id="russian-icao",
        ),
        pytest.param(["Юрий Гагарин", "Gagarin, Iurii"], "gagarin iurii", id="russian-iurii"),
        pytest.param(
            ["Олександр Шевченко", "OLEKSANDR SHEVCHENKO"], "oleksandr shevchenko", id="ukrainian"
        ),
        pytest.param(
            ["Γιώργος Παπαδόπουλος", "GIORGOS PAPADOPOULOS", "ΓΙΩΡΓΟΣ ΠΑΠΑΔΟΠΟΥΛΟΣ"],
            "giorgos papadopoulos",
            id="greek-elot743",
        ),
        pytest.param(["Σταύρος", "Stavros"], "stavros", id="greek-av"),
        pytest.param(
            ["习近平", "Xi Jinping", "XI JINPING", "Jinping Xi", "习 近平"],
            "jinping xi",
            id="chinese-pinyin",
        ),
        pytest.param(["欧阳修", "Ouyang Xiu"], "ouyang xiu", id="chinese-compound-surname"),
        pytest.param(["김정은", "Gim Jeongeun"], "gim jeongeun", id="korean"),
        pytest.param(["مُحَمَّد بن سلمان", "محمد بن سلمان"], "bn mhmd slmn", id="arabic-vocalised"),
        pytest.param(["عبد الرحمن", "عبد ال رحمن"], "al bd rhmn", id="arabic-article"),
        pytest.param(["O'Brien", "OBRIEN", "O’Brien"], "obrien", id="apostrophe"),
        pytest.param(["Ｈａｎｓ", "Hans"], "hans", id="nfkc-fullwidth"),
        pytest.param(
            ["Ludwig van Beethoven", "Beethoven, Ludwig van"],
            "beethoven ludwig van",
            id="particle-kept-in-exact",
        ),
    ],
)
def test_canonical_name(variants: list[str], canonical: str) -> None:
    for variant in variants:
        assert canonical_name(variant) == canonical, variant


def test_name_tokens_keep_written_order() -> None:
    assert name_tokens("Hans-Peter Müller") == ("hans", "peter", "muller")


@pytest.mark.parametrize("name", ["", "   ", "---", "'''", ".,;"])
def test_empty_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        name_tokens(name)
    assert info.value.field == "name"


def test_overlong_name_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="too long"):
        name_tokens("a" * 301)


def test_different_people_differ() -> None:
    assert exact("Hans Müller") != exact("Hans Miller")
    assert exact("Hans Müller") != exact("Hans Müller", "1980-02-14")
    assert exact("Ivan Petrov") != exact("Ivan Petrov Sergeevich")


# --------------------------------------------------------------------------
# Fuzzy keys: transliteration variants meet as candidates
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Mohammed Ali", "Muhammad Ali"),
        ("Mohamed Ali", "محمد علي"),
        ("Ahmed Hassan", "أحمد حسن"),
        ("Yusuf Khalid", "Youssef Khaled"),
        ("Fatima Haddad", "Fatimah Hadad"),
        ("Hassan al-Amin", "Hassan Amin"),
        ("Pyotr Tchaikovsky", "Petr Chaikovskii"),
        ("Yuriy Gagarin", "Юрий Гагарин"),
        ("Hanna Kovalenko", "Ганна Коваленко"),
        ("Serhii Bondarenko", "Сергій Бондаренко"),
        ("Yiorgos Papadopoulos", "Γιώργος Παπαδόπουλος"),
        ("Konstadinos Kabouris", "Κωνσταντίνος Καμπούρης"),
        ("Xi Jin Ping", "习近平"),
        ("Jin Ping Xi", "Xi Jinping"),
    ],
)
def test_transliteration_variants_share_a_candidate_key(a: str, b: str) -> None:
    assert fuzzy(a) & fuzzy(b), (fuzzy(a), fuzzy(b))


def test_candidate_keys_need_the_same_date() -> None:
    assert not fuzzy("Mohammed Ali") & fuzzy("Muhammad Ali", "1980-02-14")


def test_fuzzy_keys_separate_chinese_and_vietnamese_vowels() -> None:
    # Metaphone would give these the same code; monosyllabic names keep vowels.
    assert not fuzzy("Li Wei") & fuzzy("Lu Wei")
    assert not fuzzy("Nguyen Van Hung") & fuzzy("Nguyen Van Hang")


# --------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "order", "iso"),
    [
        ("1980-02-13", None, "1980-02-13"),
        ("13.02.1980", None, "1980-02-13"),
        ("13/02/1980", None, "1980-02-13"),
        ("02/13/1980", None, "1980-02-13"),
        ("05/06/1980", DateOrder.DMY, "1980-06-05"),
        ("05/06/1980", DateOrder.MDY, "1980-05-06"),
        ("1980/02/13", None, "1980-02-13"),
        ("19800213", None, "1980-02-13"),
        ("13 Feb 1980", None, "1980-02-13"),
        ("February 13, 1980", None, "1980-02-13"),
        ("13. März 1980", None, "1980-03-13"),
        ("13 février 1980", None, "1980-02-13"),
        ("1980-02-13T00:00:00Z", None, "1980-02-13"),
        ("1980", None, "1980"),
        ("1980-02", None, "1980-02"),
        ("02/1980", None, "1980-02"),
        ("??.02.1980", None, "1980-02"),
        ("XX/XX/1980", None, "1980"),
        ("00.00.1980", None, "1980"),
        ("1980-02-??", None, "1980-02"),
        ("UNK UNK 1980", None, "1980"),
    ],
)
def test_parse_date(raw: str, order: DateOrder | None, iso: str) -> None:
    assert parse_date(raw, order).iso() == iso


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("05/06/1980", "date_order"),
        ("13.02.80", "four-digit year"),
        ("30.02.1980", "does not exist"),
        ("13.13.1980", "month 13"),
        ("15.??.1980", "day without a month"),
        ("??.??.????", "year"),
        ("yesterday", "cannot read"),
        ("", "empty"),
        ("1700-01-01", "outside"),
    ],
)
def test_bad_dates_are_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason) as info:
        parse_date(raw)
    assert info.value.field == "dob"


def test_partial_date_gives_no_exact_key() -> None:
    for dob in ("1980", "1980-02", "??.02.1980"):
        keys = person_keys("Hans Müller", dob)
        assert [k.type for k in keys] == [KeyType.PERSON_PHONETIC]
        assert keys[0].value.endswith("|" + parse_date(dob).iso())
    # A year-only record never meets a complete date, not even as a candidate.
    assert not {k.value for k in person_keys("Hans Müller", "1980")} & fuzzy("Hans Müller")


def test_partial_date_invariants() -> None:
    assert PartialDate(1980, 2, 13).is_complete
    assert not PartialDate(1980, 2).is_complete
    with pytest.raises(InvalidInputError):
        PartialDate(1980, None, 3)


# --------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "number"),
    [("DEU", "12AB34567"), ("D", "12 AB-34567"), ("de", "12ab34567"), ("DEU", "12AB34567<<"),
     ("DEU", " 12.AB/34567 ")],
)  # fmt: skip
def test_passport_variants(issuer: str, number: str) -> None:
    assert passport_key(issuer, number) == MatchKey(KeyType.PASSPORT, "DEU|12AB34567")


def test_idcard_is_a_separate_type() -> None:
    assert idcard_key("FRA", "X4RTBPFW4") == MatchKey(KeyType.IDCARD, "FRA|X4RTBPFW4")
    assert idcard_key("FRA", "1").oprf_input != passport_key("FRA", "1").oprf_input


@pytest.mark.parametrize(
    ("raw", "code"),
    [("DEU", "DEU"), ("D", "DEU"), ("DE", "DEU"), ("gb", "GBR"), ("UK", "GBR"), ("GBD", "GBD"),
     ("XXA", "XXA"), ("UTO", "UTO"), ("RKS", "RKS"), ("XK", "RKS"), ("EUE", "EUE"),
     ("UNO", "UNO")],
)  # fmt: skip
def test_issuer_codes(raw: str, code: str) -> None:
    assert canonical_issuer(raw) == code


@pytest.mark.parametrize("raw", ["XYZ", "QQ", "Germany", "", "DEUT"])
def test_unknown_issuer_is_refused(raw: str) -> None:
    with pytest.raises(InvalidInputError, match="unknown country code") as info:
        passport_key(raw, "123")
    assert info.value.field == "passport_issuer"


@pytest.mark.parametrize("number", ["", " - ", "AB_123", "ÄB123", "1" * 21])
def test_bad_document_number_is_refused(number: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        passport_key("DEU", number)
    assert info.value.field == "passport"


# --------------------------------------------------------------------------
# Phone, e-mail
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("030 123456", "DE", "+4930123456"),
        ("+49 (30) 123456", None, "+4930123456"),
        ("0049 30 123456", "FR", "+4930123456"),
        ("06 12 34 56 78", "FR", "+33612345678"),
        ("(201) 555-0123", "US", "+12015550123"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("8 (495) 123-45-67", "RU", "+74951234567"),
        ("06-12345678", "NL", "+31612345678"),
    ],
)
def test_phone_national_formats(raw: str, region: str | None, e164: str) -> None:
    assert phone_key(raw, region) == MatchKey(KeyType.PHONE, e164)


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("030 123456", None, "no default phone region"),
        ("12", "DE", "not a valid phone number"),
        ("not a number", "DE", "cannot read"),
        ("+49 30 123456", "ZZ", "unknown phone region"),
    ],
)
def test_bad_phones_are_refused(raw: str, region: str | None, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason) as info:
        phone_key(raw, region)
    assert info.value.field == "phone"


def test_email_canonical() -> None:
    assert email_key(" Hans.Mueller@Example.ORG ").value == "hans.mueller@example.org"
    assert email_key("a@Bücher.de").value == "a@xn--bcher-kva.de"


@pytest.mark.parametrize("raw", ["no-at-sign", "@example.org", "a@", "a b@example.org",
                                 "a@localhost", "a@-bad-.org"])  # fmt: skip
def test_bad_emails_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        email_key(raw)
    assert info.value.field == "email"


# --------------------------------------------------------------------------
# IBAN, VIN
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "iban"),
    [
        ("DE89 3704 0044 0532 0130 00", "DE89370400440532013000"),
        ("de89370400440532013000", "DE89370400440532013000"),
        ("IBAN GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432"),
        ("FR14 2004 1010 0505 0001 3M02 606", "FR1420041010050500013M02606"),
    ],
)
def test_iban_good(raw: str, iban: str) -> None:
    assert iban_key(raw) == MatchKey(KeyType.IBAN, iban)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("DE88 3704 0044 0532 0130 00", "check digits"),
        ("DE89 3704 0044 0532 0130 01", "check digits"),
        ("DE89 3704 0044 0532 0130 0", "has 22 characters"),
        ("ZZ89 3704 0044 0532 0130 00", "not a country"),
        ("not an iban", "not an IBAN"),
    ],
)
def test_iban_bad(raw: str, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason) as info:
        iban_key(raw)
    assert info.value.field == "iban"


def test_vin_north_american_check_digit() -> None:
    assert vin_key("1M8GDM9AXKP042788").value == "1M8GDM9AXKP042788"
    assert vin_key("1m8-gdm9a xkp042788").value == "1M8GDM9AXKP042788"
    with pytest.raises(InvalidInputError, match="check digit") as info:
        vin_key("1M8GDM9A1KP042788")
    assert info.value.field == "vin"


def test_vin_european_position_9_is_free() -> None:
    # Position 9 of a European VIN is not a check digit: it must be accepted.
    assert vin_key("WVWZZZ1JZXW000001").value == "WVWZZZ1JZXW000001"
    assert vin_key("WDB1240221J123456").value == "WDB1240221J123456"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("1M8GDM9AXKP04278", "17 characters"), ("1M8GDM9AXKP04278O", "cannot have"),
     ("IM8GDM9AXKP042788", "cannot have")],
)  # fmt: skip
def test_vin_bad(raw: str, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        vin_key(raw)


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------


def test_record_yields_all_keys_sorted_and_unique() -> None:
    record = Record(
        "r1",
        name="Hans-Peter Müller",
        dob="13.02.1980",
        passport="12 AB-34567",
        passport_issuer="D",
        phone="030 123456",
        email="hp@example.org",
        iban="DE89370400440532013000",
        vin="WVWZZZ1JZXW000001",
    )
    keys = match_keys(record, phone_region="DE")
    assert [k.type for k in keys] == [
        KeyType.PASSPORT, KeyType.PERSON, KeyType.PERSON_PHONETIC, KeyType.PHONE, KeyType.EMAIL,
        KeyType.IBAN, KeyType.VIN,
    ]  # fmt: skip
    assert len(set(keys)) == len(keys)
    assert match_keys(record, phone_region="DE") == keys


def test_record_reports_every_bad_field() -> None:
    record = Record("r2", name="Hans Müller", dob="31.02.1980", iban="DE00", vin="123")
    with pytest.raises(InvalidRecordError) as info:
        match_keys(record)
    assert [e.field for e in info.value.errors] == ["dob", "iban", "vin"]
    assert isinstance(info.value, InvalidInputError)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (Record("r", name="Hans Müller"), "dob"),
        (Record("r", dob="1980"), "name"),
        (Record("r", passport="123456"), "passport_issuer"),
        (Record("r", idcard_issuer="DEU"), "idcard"),
        (Record("r"), "record"),
        (Record("r", name=" ", dob=""), "record"),
        (Record(" ", email="a@example.org"), "id"),
    ],
)
def test_incomplete_records_are_refused(record: Record, field: str) -> None:
    with pytest.raises(InvalidRecordError) as info:
        match_keys(record)
    assert info.value.errors[0].field == field


def test_error_messages_escape_control_characters() -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_date("\x1b[31m1980")
    assert "\x1b" not in str(info.value)


def test_psi_identifiers_does_no_io() -> None:
    code = (
        "import sys, psi.identifiers; "
        "bad = [m for m in ('click', 'rich', 'grpc', 'sqlite3', 'logging.handlers') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
