"""Streaming ingest of bureau files (CSV, JSON Lines) into match keys.

A `Schema` (TOML) says which column holds which identifier.  `read_rows`
yields one result per data row, in file order, without holding the file in
memory: `Accepted` (line, record id, match keys) or `Rejected` (line, record id
if known, and one `Rejection` per bad field).  Nothing is dropped silently:
every row is either accepted or rejected with a reason a person can act on.

Schema file (every key but ``format``, ``id`` and ``[fields]`` is optional)::

    format = "csv"            # or "jsonl"
    id = "case_no"            # column holding the record id
    encoding = "utf-8"        # a BOM is accepted
    delimiter = ","           # CSV only
    phone_region = "DE"       # region of phone numbers written without +CC
    date_order = "DMY"        # DMY | MDY | YMD, for numeric dates like 05/06/1980
    max_field_chars = 1000    # longer fields are rejected

    [defaults]
    passport_issuer = "DEU"   # when the row has no issuer column or it is empty
    idcard_issuer = "DEU"

    [fields]                  # identifier field = column, or list of columns
    name = ["surname", "given_names"]   # several columns are joined by a space
    dob = "birth_date"
    passport = "passport_no"
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Literal

import phonenumbers

from psi.errors import InvalidInputError, LocalError
from psi.identifiers import (
    DateOrder,
    InvalidRecordError,
    KeyType,
    MatchKey,
    Record,
    canonical_issuer,
    match_keys,
)

__all__ = [
    "FIELDS",
    "Accepted",
    "Rejected",
    "Rejection",
    "Row",
    "Schema",
    "SchemaError",
    "Summary",
    "read_rows",
]

# Identifier fields a schema may map, in the order of `psi.identifiers.Record`.
FIELDS: Final = (
    "name", "dob", "passport", "passport_issuer", "idcard", "idcard_issuer",
    "phone", "email", "iban", "vin",
)  # fmt: skip
_TOP_KEYS: Final = frozenset(
    {"format", "id", "encoding", "delimiter", "phone_region", "date_order",
     "max_field_chars", "max_line_bytes", "defaults", "fields"}
)  # fmt: skip
_DEFAULT_KEYS: Final = frozenset({"passport_issuer", "idcard_issuer"})
_PROGRESS_EVERY: Final = 1000


class SchemaError(LocalError):
    """The schema is missing, malformed, or does not fit the file it describes."""


@dataclass(frozen=True)
class Schema:
    """How to read one bureau file: format, id column, field -> column(s)."""

    format: Literal["csv", "jsonl"]
    id_column: str
    columns: Mapping[str, tuple[str, ...]]
    phone_region: str | None = None
    date_order: DateOrder | None = None
    passport_issuer: str | None = None
    idcard_issuer: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8"
    max_field_chars: int = 1000
    max_line_bytes: int = 1 << 20

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        """Read a schema from a TOML file."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise SchemaError(f"cannot read schema {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SchemaError(f"schema {path} is not valid TOML: {exc}") from None
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], source: str = "schema") -> Schema:
        """Build and validate a schema from parsed TOML."""

        def fail(message: str) -> SchemaError:
            return SchemaError(f"{source}: {message}")

        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            known = ", ".join(sorted(_TOP_KEYS))
            raise fail(f"unknown key(s) {', '.join(unknown)}; known: {known}")
        fmt = data.get("format")
        if fmt not in ("csv", "jsonl"):
            raise fail('format must be "csv" or "jsonl"')
        id_column = data.get("id")
        if not isinstance(id_column, str) or not id_column.strip():
            raise fail("id must name the column that holds the record id")
        raw_fields = data.get("fields")
        if not isinstance(raw_fields, dict) or not raw_fields:
            raise fail("[fields] must map identifier fields to columns")
        columns: dict[str, tuple[str, ...]] = {}
        for name, value in raw_fields.items():
            if name not in FIELDS:
                raise fail(f"unknown field {name!r}; known: {', '.join(FIELDS)}")
            cols = (value,) if isinstance(value, str) else value
            if (
                not isinstance(cols, (list, tuple))
                or not cols
                or not all(isinstance(c, str) and c.strip() for c in cols)
            ):
                raise fail(f"field {name!r} must be a column name or a list of column names")
            if len(cols) > 1 and name != "name":
                raise fail(f"only name may be made of several columns, not {name!r}")
            columns[name] = tuple(c.strip() for c in cols)
        defaults = data.get("defaults", {})
        if not isinstance(defaults, dict) or set(defaults) - _DEFAULT_KEYS:
            raise fail(f"[defaults] may only set {', '.join(sorted(_DEFAULT_KEYS))}")
        issuers: dict[str, str | None] = {}
        for key in sorted(_DEFAULT_KEYS):
            value = defaults.get(key)
            if value is not None:
                if not isinstance(value, str):
                    raise fail(f"defaults.{key} must be a country code")
                try:
                    issuers[key] = canonical_issuer(value, field=key)
                except InvalidInputError as exc:
                    raise fail(f"defaults.{exc}") from None
        region = data.get("phone_region")
        if region is not None and (
            not isinstance(region, str) or region.upper() not in phonenumbers.SUPPORTED_REGIONS
        ):
            raise fail(f"phone_region {region!r} is not a region code like DE or FR")
        order = data.get("date_order")
        if order is not None and order not in {o.value for o in DateOrder}:
            raise fail("date_order must be DMY, MDY or YMD")
        encoding = data.get("encoding", "utf-8")
        try:
            assert isinstance(encoding, str)  # noqa: S101 - narrowed for mypy; checked below
            codecs.lookup(encoding)
        except (LookupError, AssertionError):
            raise fail(f"unknown encoding {encoding!r}") from None
        delimiter = data.get("delimiter", ",")
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
            raise fail("delimiter must be one character (not a quote or newline)")
        limits: dict[str, int] = {}
        for key, default in (("max_field_chars", 1000), ("max_line_bytes", 1 << 20)):
            value = data.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1 << 26:
                raise fail(f"{key} must be a positive integer")
            limits[key] = value
        return cls(
            format=fmt,
            id_column=id_column.strip(),
            columns=columns,
            phone_region=region.upper() if isinstance(region, str) else None,
            date_order=DateOrder(order) if isinstance(order, str) else None,
            passport_issuer=issuers.get("passport_issuer"),
            idcard_issuer=issuers.get("idcard_issuer"),
            delimiter=delimiter,
            encoding=encoding,
            max_field_chars=limits["max_field_chars"],
            max_line_bytes=limits["max_line_bytes"],
        )

    @property
    def needed_columns(self) -> tuple[str, ...]:
        """Every column the schema reads, id first, without repeats."""
        cols = [self.id_column]
        for field_cols in self.columns.values():
            cols.extend(c for c in field_cols if c not in cols)
        return tuple(cols)


@dataclass(frozen=True)
class Rejection:
    """Why one field (or the whole line) of a row was refused."""

    file: str
    line: int
    field: str
    reason: str
    column: str | None = None

    def __str__(self) -> str:
        where = f"{self.field} (column {self.column!r})" if self.column else self.field
        return f"{self.file}:{self.line}: {where}: {self.reason}"


@dataclass(frozen=True)
class Accepted:
    """A valid row: its first line, record id, match keys and the record itself
    (the agent keeps it locally to show owner officers and to disclose)."""

    line: int
    record_id: str
    keys: tuple[MatchKey, ...]
    record: Record


@dataclass(frozen=True)
class Rejected:
    """A refused row: its first line, record id when readable, and the reasons."""

    line: int
    record_id: str | None
    rejections: tuple[Rejection, ...]


Row = Accepted | Rejected


@dataclass
class Summary:
    """Counts over a file: rows, accepted, rejected, keys by type."""

    file: str
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    rejections: int = 0
    keys_by_type: Counter[KeyType] = field(default_factory=Counter)

    def add(self, row: Row) -> None:
        """Count one row."""
        self.rows += 1
        if isinstance(row, Accepted):
            self.accepted += 1
            self.keys_by_type.update(k.type for k in row.keys)
        else:
            self.rejected += 1
            self.rejections += len(row.rejections)

    @property
    def keys(self) -> int:
        """All keys of accepted rows."""
        return sum(self.keys_by_type.values())

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view (key types in `KeyType` order)."""
        return {
            "file": self.file,
            "rows": self.rows,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejections": self.rejections,
            "keys": self.keys,
            "keys_by_type": {
                t.value: self.keys_by_type[t] for t in KeyType if self.keys_by_type[t]
            },
        }


# --------------------------------------------------------------------------
# Rows -> records
# --------------------------------------------------------------------------


class _RowBuilder:
    """Turns the cells of one row into an `Accepted` or `Rejected` row."""

    def __init__(self, schema: Schema, file: str) -> None:
        self.schema = schema
        self.file = file
        self.column_of = {f: ", ".join(cols) for f, cols in schema.columns.items()}
        self.column_of["id"] = schema.id_column

    def reject(self, line: int, fld: str, reason: str, record_id: str | None = None) -> Rejected:
        return Rejected(
            line, record_id, (Rejection(self.file, line, fld, reason, self.column_of.get(fld)),)
        )

    def build(self, line: int, cells: Mapping[str, str | None]) -> Row:
        schema = self.schema
        cell = cells.get
        rejections: list[Rejection] = []
        record_id = (cell(schema.id_column) or "").strip()
        if not record_id:
            return self.reject(line, "id", "record id is empty")
        if len(record_id) > schema.max_field_chars:
            limit = schema.max_field_chars
            return self.reject(line, "id", f"record id longer than {limit} characters")
        values: dict[str, str | None] = {}
        for fld, cols in schema.columns.items():
            if len(cols) == 1:
                single = cell(cols[0])
                value = (single.strip() or None) if single is not None else None
            else:
                parts = [v for v in (cell(c) for c in cols) if v is not None and v.strip()]
                value = " ".join(p.strip() for p in parts) if parts else None
            if value is not None and len(value) > schema.max_field_chars:
                rejections.append(
                    Rejection(
                        self.file,
                        line,
                        fld,
                        f"longer than {schema.max_field_chars} characters ({len(value)})",
                        self.column_of[fld],
                    )
                )
                value = None
            values[fld] = value
        if rejections:
            # Validating the rest would report the missing long field again.
            return Rejected(line, record_id, tuple(rejections))
        if values.get("passport") and not values.get("passport_issuer"):
            values["passport_issuer"] = schema.passport_issuer
        if values.get("idcard") and not values.get("idcard_issuer"):
            values["idcard_issuer"] = schema.idcard_issuer
        record = Record(record_id, **values)
        try:
            keys = match_keys(
                record, date_order=schema.date_order, phone_region=schema.phone_region
            )
        except InvalidRecordError as exc:
            rejections.extend(
                Rejection(
                    self.file,
                    line,
                    e.field or "record",
                    e.reason,
                    self.column_of.get(e.field or ""),
                )
                for e in exc.errors
            )
            return Rejected(line, record_id, tuple(rejections))
        return Accepted(line, record_id, keys, record)


# --------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------


def read_rows(
    path: str | Path,
    schema: Schema,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[Row]:
    """Yield one `Accepted` or `Rejected` per data row of a CSV or JSONL file.

    Streams: memory does not grow with the file.  `on_progress` receives the
    number of bytes read so far, now and then and at the end.  Raises
    `SchemaError` when the file cannot be opened or its header lacks a column
    the schema needs.
    """
    name = str(path)
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the generator's finally
    except OSError as exc:
        raise SchemaError(f"cannot open {name}: {exc.strerror}") from None
    return _with_file(raw, name, schema, on_progress)


def _with_file(
    raw: BinaryIO, name: str, schema: Schema, on_progress: Callable[[int], None] | None
) -> Iterator[Row]:
    try:
        rows = (
            _csv_rows(raw, name, schema)
            if schema.format == "csv"
            else _jsonl_rows(raw, name, schema)
        )
        for count, row in enumerate(rows, start=1):
            if on_progress is not None and count % _PROGRESS_EVERY == 0:
                on_progress(raw.tell())
            yield row
        if on_progress is not None:
            on_progress(raw.tell())
    finally:
        raw.close()


def _text_encoding(encoding: str) -> str:
    # utf-8-sig reads UTF-8 with or without a byte-order mark.
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


# surrogateescape turns each undecodable byte into U+DC80..U+DCFF.
_UNDECODABLE: Final = re.compile("[\udc80-\udcff]")


def _has_undecodable(text: str) -> bool:
    return _UNDECODABLE.search(text) is not None


def _csv_rows(raw: BinaryIO, name: str, schema: Schema) -> Iterator[Row]:
    builder = _RowBuilder(schema, name)
    text = io.TextIOWrapper(
        raw, encoding=_text_encoding(schema.encoding), errors="surrogateescape", newline=""
    )
    # The csv module's field_size_limit (128 KiB by default) bounds memory per
    # field; a longer field raises csv.Error, reported as a rejection below.  It
    # is process-wide state, so it is deliberately left alone.
    try:
        yield from _csv_records(text, builder, name, schema)
    finally:
        # Detach so that the wrapper, when collected, does not close the file
        # the caller still owns (it reads the position for the progress bar).
        text.detach()


def _csv_records(
    text: io.TextIOWrapper, builder: _RowBuilder, name: str, schema: Schema
) -> Iterator[Row]:
    reader = csv.reader(text, delimiter=schema.delimiter)
    header: list[str] | None = None
    index: dict[str, int] = {}
    previous_end = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            line = previous_end + 1
            previous_end = reader.line_num
            if header is None:
                raise SchemaError(f"{name}:{line}: cannot read the header: {exc}") from None
            yield builder.reject(line, "line", f"unreadable CSV: {exc}")
            continue
        line = previous_end + 1
        previous_end = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue  # blank line
        if header is None:
            header = [c.strip() for c in cells]
            if any(_has_undecodable(c) for c in header):
                raise SchemaError(
                    f"{name}:{line}: header is not valid {schema.encoding}; set encoding"
                )
            missing = [c for c in schema.needed_columns if c not in header]
            if missing:
                raise SchemaError(
                    f"{name}:{line}: header lacks column(s) {', '.join(map(repr, missing))} "
                    f"named in the schema; it has {', '.join(map(repr, header))}"
                )
            dupes = sorted({c for c in schema.needed_columns if header.count(c) > 1})
            if dupes:
                raise SchemaError(f"{name}:{line}: header repeats column(s) {', '.join(dupes)}")
            index = {c: header.index(c) for c in schema.needed_columns}
            continue
        if len(cells) != len(header):
            yield builder.reject(
                line, "line", f"has {len(cells)} fields, the header has {len(header)}"
            )
            continue
        if _has_undecodable("".join(cells)):
            yield builder.reject(
                line, "line", f"not valid {schema.encoding} (check the file's encoding)"
            )
            continue
        yield builder.build(line, {c: cells[i] for c, i in index.items()})
    if header is None:
        raise SchemaError(f"{name}: the file is empty; a CSV file needs a header line")


def _bounded_lines(raw: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """Lines of at most `limit` bytes; None for a longer line (skipped in chunks)."""
    while True:
        line = raw.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while True:
                chunk = raw.readline(1 << 16)
                if not chunk or chunk.endswith(b"\n"):
                    break
            yield None
            continue
        yield line


def _jsonl_rows(raw: BinaryIO, name: str, schema: Schema) -> Iterator[Row]:
    builder = _RowBuilder(schema, name)
    encoding = _text_encoding(schema.encoding)
    for line_no, data in enumerate(_bounded_lines(raw, schema.max_line_bytes), start=1):
        if data is None:
            yield builder.reject(line_no, "line", f"longer than {schema.max_line_bytes} bytes")
            continue
        try:
            # Only the first line may start with a byte-order mark.
            text = data.decode(encoding if line_no == 1 else schema.encoding)
        except UnicodeDecodeError as exc:
            yield builder.reject(
                line_no, "line", f"not valid {schema.encoding} at byte {exc.start + 1}"
            )
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "too deeply nested"
            yield builder.reject(line_no, "line", f"not valid JSON: {reason}")
            continue
        if not isinstance(obj, dict):
            yield builder.reject(
                line_no, "line", f"a JSON {type(obj).__name__} where an object is expected"
            )
            continue
        bad = [c for c in schema.needed_columns if not _json_scalar(obj.get(c))]
        if bad:
            row = builder.reject(
                line_no,
                "line",
                f"key(s) {', '.join(map(repr, bad))} must be strings or integers",
            )
            yield row
            continue
        yield builder.build(line_no, {c: _json_text(obj.get(c)) for c in schema.needed_columns})


def _json_scalar(value: object) -> bool:
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, int) and not isinstance(value, bool))
    )


def _json_text(value: object) -> str | None:
    return None if value is None else str(value)
