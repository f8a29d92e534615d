"""Ingest of bureau files and the `blindmatch check` command, on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bureau_agent.cli import main
from bureau_agent.ingest import Accepted, Rejected, Schema, SchemaError, Summary, read_rows
from psi.identifiers import DateOrder, KeyType

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

CSV_SCHEMA = """
format = "csv"
id = "id"
phone_region = "DE"
date_order = "DMY"
[defaults]
passport_issuer = "DEU"
[fields]
name = ["surname", "given"]
dob = "dob"
passport = "passport"
iban = "iban"
"""
HEADER = "id,surname,given,dob,passport,iban\n"


def schema_of(text: str, tmp_path: Path) -> Schema:
    path = tmp_path / "schema.toml"
    path.write_text(text, encoding="utf-8")
    return Schema.load(path)


def rows_of(
    data: bytes, schema: Schema, tmp_path: Path, name: str = "data.csv"
) -> list[Accepted | Rejected]:
    path = tmp_path / name
    path.write_bytes(data)
    return list(read_rows(path, schema))


def rejections(rows: list[Accepted | Rejected]) -> list[tuple[int, str]]:
    return [(r.line, r.field) for row in rows if isinstance(row, Rejected) for r in row.rejections]


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------


def test_example_schemas_load() -> None:
    schema = Schema.load(EXAMPLES / "schema-watchlist.toml")
    assert schema.format == "csv"
    assert schema.columns["name"] == ("surname", "given_names")
    assert schema.passport_issuer == "DEU"
    assert schema.date_order is DateOrder.DMY
    assert Schema.load(EXAMPLES / "schema-watchlist-jsonl.toml").format == "jsonl"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('format = "xml"\nid = "id"\n[fields]\nname = "n"', "format"),
        ('format = "csv"\n[fields]\nname = "n"', "id must name"),
        ('format = "csv"\nid = "id"', r"\[fields\]"),
        ('format = "csv"\nid = "id"\n[fields]\nshoe_size = "s"', "unknown field 'shoe_size'"),
        ('format = "csv"\nid = "id"\nphone_regoin = "DE"\n[fields]\nname = "n"', "unknown key"),
        ('format = "csv"\nid = "id"\nphone_region = "XX"\n[fields]\nname = "n"', "phone_region"),
        ('format = "csv"\nid = "id"\ndate_order = "DYM"\n[fields]\nname = "n"', "date_order"),
        ('format = "csv"\nid = "id"\nencoding = "klingon"\n[fields]\nname = "n"', "encoding"),
        (
            'format = "csv"\nid = "id"\n[defaults]\npassport_issuer = "XYZ"\n[fields]\nname = "n"',
            "country code",
        ),
        ('format = "csv"\nid = "id"\n[fields]\nphone = ["a", "b"]', "only name"),
        ("format = ", "not valid TOML"),
    ],
)
def test_bad_schemas_are_refused(text: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=message):
        schema_of(text, tmp_path)


def test_missing_column_is_a_schema_error(tmp_path: Path) -> None:
    schema = schema_of(CSV_SCHEMA, tmp_path)
    with pytest.raises(SchemaError, match="lacks column"):
        rows_of(b"id,surname,dob\n1,X,1980\n", schema, tmp_path)


def test_empty_csv_is_a_schema_error(tmp_path: Path) -> None:
    schema = schema_of(CSV_SCHEMA, tmp_path)
    with pytest.raises(SchemaError, match="empty"):
        rows_of(b"\n\n", schema, tmp_path)


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------


def test_example_csv_is_accepted() -> None:
    schema = Schema.load(EXAMPLES / "schema-watchlist.toml")
    rows = list(read_rows(EXAMPLES / "watchlist.csv", schema))
    assert all(isinstance(r, Accepted) for r in rows), rows
    assert [r.line for r in rows] == [2, 3, 4, 5, 6, 7, 8]
    first = rows[0]
    assert isinstance(first, Accepted)
    assert first.record_id == "WL-2024-0001"
    assert {k.type for k in first.keys} == {
        KeyType.PASSPORT, KeyType.PERSON, KeyType.PERSON_PHONETIC, KeyType.PHONE, KeyType.EMAIL,
        KeyType.IBAN,
    }  # fmt: skip


def test_rejected_rows_name_line_and_field(tmp_path: Path) -> None:
    data = (
        HEADER
        + "1,Müller,Hans,13.02.1980,,\n"  # line 2: fine
        + "2,Müller,Hans,31.02.1980,,\n"  # line 3: bad date
        + "\n"  # line 4: blank
        + '3,"Multi\nLine",Anna,1980,,\n'  # lines 5-6: fine (quoted newline)
        + "4,Müller,Hans,1980,,DE88370400440532013000\n"  # line 7: IBAN check digits
        + "5,,,1980,,\n"  # line 8: empty name
        + ",Müller,Hans,1980,,\n"  # line 9: no id
        + "6,Müller,Hans,1980,123\n"  # line 10: too few fields
    ).encode()
    rows = rows_of(data, schema_of(CSV_SCHEMA, tmp_path), tmp_path)
    assert [type(r).__name__ for r in rows] == [
        "Accepted", "Rejected", "Accepted", "Rejected", "Rejected", "Rejected", "Rejected",
    ]  # fmt: skip
    assert rejections(rows) == [(3, "dob"), (7, "iban"), (8, "name"), (9, "id"), (10, "line")]
    bad_date = rows[1]
    assert isinstance(bad_date, Rejected)
    text = str(bad_date.rejections[0])
    assert text.startswith(f"{tmp_path / 'data.csv'}:3: dob (column 'dob'): ")
    assert "does not exist" in text


def test_unknown_issuer_and_default_issuer(tmp_path: Path) -> None:
    text = CSV_SCHEMA.replace(
        'passport = "passport"', 'passport = "passport"\npassport_issuer = "country"'
    )
    schema = schema_of(text, tmp_path)
    header = "id,surname,given,dob,passport,country,iban\n"
    rows = rows_of(
        (header + "1,A,B,1980,X123,QQQ,\n2,A,B,1980,X123,,\n3,A,B,1980,X123,fr,\n").encode(),
        schema,
        tmp_path,
    )
    assert rejections(rows) == [(2, "passport_issuer")]
    assert isinstance(rows[1], Accepted) and isinstance(rows[2], Accepted)
    assert [k.value for k in rows[1].keys if k.type is KeyType.PASSPORT] == ["DEU|X123"]
    assert [k.value for k in rows[2].keys if k.type is KeyType.PASSPORT] == ["FRA|X123"]


def test_bom_and_crlf(tmp_path: Path) -> None:
    data = "\ufeff" + HEADER.replace("\n", "\r\n") + "1,Müller,Hans,1980,,\r\n"
    rows = rows_of(data.encode(), schema_of(CSV_SCHEMA, tmp_path), tmp_path)
    assert len(rows) == 1 and isinstance(rows[0], Accepted)


def test_bad_utf8_rejects_only_its_row(tmp_path: Path) -> None:
    data = HEADER.encode() + b"1,M\xfcller,Hans,1980,,\n2,Meier,Hans,1980,,\n"
    rows = rows_of(data, schema_of(CSV_SCHEMA, tmp_path), tmp_path)
    assert rejections(rows) == [(2, "line")]
    assert isinstance(rows[0], Rejected) and "utf-8" in rows[0].rejections[0].reason
    assert isinstance(rows[1], Accepted)


def test_latin1_file_with_declared_encoding(tmp_path: Path) -> None:
    schema = schema_of(
        CSV_SCHEMA.replace('format = "csv"', 'format = "csv"\nencoding = "latin-1"'), tmp_path
    )
    rows = rows_of(HEADER.encode() + b"1,M\xfcller,Hans,1980,,\n", schema, tmp_path)
    assert isinstance(rows[0], Accepted)


def test_enormous_fields_are_rejected_not_fatal(tmp_path: Path) -> None:
    schema = schema_of(CSV_SCHEMA, tmp_path)
    data = (
        HEADER
        + "1,Müller,"
        + "x" * 5000
        + ",1980,,\n"  # over max_field_chars
        + "2,Müller,"
        + "y" * 300_000
        + ",1980,,\n"  # over the csv module's limit
        + "3,Meier,Hans,1980,,\n"
    ).encode()
    rows = rows_of(data, schema, tmp_path)
    assert rejections(rows) == [(2, "name"), (3, "line")]
    assert isinstance(rows[-1], Accepted) and rows[-1].record_id == "3"


def test_semicolon_delimiter(tmp_path: Path) -> None:
    schema = schema_of(
        CSV_SCHEMA.replace('format = "csv"', 'format = "csv"\ndelimiter = ";"'), tmp_path
    )
    rows = rows_of(b"id;surname;given;dob;passport;iban\n1;A;B;1980;;\n", schema, tmp_path)
    assert isinstance(rows[0], Accepted)


def test_reading_streams(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write(HEADER)
        for i in range(20_000):
            f.write(f"{i},Müller,Hans,{1 + i % 28:02d}.02.1980,,\n")
    size = path.stat().st_size
    seen: list[int] = []
    rows = read_rows(path, schema_of(CSV_SCHEMA, tmp_path), on_progress=seen.append)
    for _ in range(1000):
        next(rows)
    # After 1,000 of 20,000 rows only a small part of the file has been read.
    assert seen and seen[-1] < size // 4
    summary = Summary(str(path))
    for row in rows:
        summary.add(row)
    assert summary.rows == 19_000 and summary.rejected == 0
    assert seen[-1] == size


# --------------------------------------------------------------------------
# JSON Lines
# --------------------------------------------------------------------------

JSONL_SCHEMA = """
format = "jsonl"
id = "id"
max_line_bytes = 2000
[fields]
name = "name"
dob = "dob"
email = "email"
"""


def test_example_jsonl_is_accepted() -> None:
    schema = Schema.load(EXAMPLES / "schema-watchlist-jsonl.toml")
    rows = list(read_rows(EXAMPLES / "watchlist.jsonl", schema))
    assert all(isinstance(r, Accepted) for r in rows) and len(rows) == 3


def test_jsonl_rejections(tmp_path: Path) -> None:
    lines = [
        # A byte-order mark, then "Иван" in UTF-8.
        b'\xef\xbb\xbf{"id": "1", "name": "\xd0\x98\xd0\xb2\xd0\xb0\xd0\xbd", "dob": "1980"}',
        b'{"id": 2, "name": "Anna", "dob": "1980-02-13", "email": null}',
        b"",
        b"[1, 2, 3]",
        b'{"id": "4", "name": "Anna"',
        b'{"id": "5", "name": "M\xfcller", "dob": "1980"}',
        b'{"id": "6", "name": ["A"], "dob": "1980"}',
        b'{"id": "7", "name": "' + b"x" * 3000 + b'", "dob": "1980"}',
        b'{"id": "8", "name": "Anna", "dob": "13/13/1980"}',
        b"   ",
        b'{"id": "9", "name": "Anna", "dob": "1980", "email": "not-an-email"}',
        b'{"id": "10", "name": "Anna", "dob": "1980"}',
    ]
    rows = rows_of(
        b"\n".join(lines) + b"\n", schema_of(JSONL_SCHEMA, tmp_path), tmp_path, "data.jsonl"
    )
    assert rejections(rows) == [
        (4, "line"), (5, "line"), (6, "line"), (7, "line"), (8, "line"), (9, "dob"),
        (11, "email"),
    ]  # fmt: skip
    accepted = [r for r in rows if isinstance(r, Accepted)]
    assert [r.record_id for r in accepted] == ["1", "2", "10"]
    reasons = [r.rejections[0].reason for r in rows if isinstance(r, Rejected)]
    assert "object" in reasons[0] and "JSON" in reasons[1] and "utf-8" in reasons[2]
    assert "longer than 2000 bytes" in reasons[4]


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _bad_file(tmp_path: Path) -> tuple[Path, Path]:
    schema = tmp_path / "schema.toml"
    schema.write_text(CSV_SCHEMA, encoding="utf-8")
    data = tmp_path / "data.csv"
    data.write_text(HEADER + "1,Müller,Hans,1980,,\n2,Müller,Hans,1980-13-01,,\n", encoding="utf-8")
    return data, schema


def test_cli_check_example_ok() -> None:
    result = CliRunner().invoke(
        main,
        ["check", str(EXAMPLES / "watchlist.csv"), "--schema",
         str(EXAMPLES / "schema-watchlist.toml")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "accepted" in result.output and "person_phonetic" in result.output


def test_cli_check_reports_rejections_and_strict_fails(tmp_path: Path) -> None:
    data, schema = _bad_file(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["check", str(data), "--schema", str(schema)])
    assert result.exit_code == 0
    assert f"{data}:3: dob (column 'dob'): month 13 does not exist" in result.output
    strict = runner.invoke(main, ["check", str(data), "--schema", str(schema), "--strict"])
    assert strict.exit_code == 1


def test_cli_check_json(tmp_path: Path) -> None:
    data, schema = _bad_file(tmp_path)
    result = CliRunner().invoke(
        main, ["check", str(data), "--schema", str(schema), "--json", "--strict"]
    )
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["summary"]["rows"] == 2 and out["summary"]["rejected"] == 1
    assert out["summary"]["keys_by_type"] == {"person_phonetic": 1}
    assert out["rejections"] == [
        {"file": str(data), "line": 3, "field": "dob", "column": "dob",
         "reason": "month 13 does not exist"}
    ]  # fmt: skip
    assert out["ok"] is False


def test_cli_check_schema_error_exits_2(tmp_path: Path) -> None:
    data, schema = _bad_file(tmp_path)
    schema.write_text('format = "csv"\nid = "nope"\n[fields]\nname = "surname"\n')
    result = CliRunner().invoke(main, ["check", str(data), "--schema", str(schema)])
    assert result.exit_code == 2
    assert result.stderr.startswith("SchemaError: ") and "lacks column" in result.stderr
    missing = CliRunner().invoke(main, ["check", str(tmp_path / "nope.csv"), "--schema",
                                        str(schema)])  # fmt: skip
    assert missing.exit_code == 2
    assert "SchemaError: cannot open" in missing.stderr


def test_cli_check_as_subprocess(tmp_path: Path) -> None:
    data, schema = _bad_file(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "bureau_agent.cli", "check", str(data), "--schema", str(schema),
         "--json", "--strict"],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["summary"]["accepted"] == 1
