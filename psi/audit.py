"""Audit log entries: what each leaf of the hub's Merkle log (`psi.merkle`) says.

An entry records that something happened, never what it was about: it
holds bureau codes, dataset names, counts, random ids and SHA-256 digests,
and no identifier, tag, handle or free text (a request's purpose or a
denial's reason is covered by its digest, so the signed original can be
checked against the log without the log revealing it).

Wire format v1: canonical JSON, UTF-8 (in fact ASCII), one object with keys
sorted by code point, no whitespace (separators "," and ":"), non-ASCII
escaped as \\uXXXX, integers in decimal without leading zeros, no floats,
booleans or nulls.  Bytes are lowercase hex.  Every entry has

    "v": 1            the format version
    "kind": <kind>    one of the kinds below
    "time_ms": <int>  the hub's clock, Unix milliseconds

and exactly the fields of its kind:

    enrollment           bureau, dataset, version, count, digest
    removal              bureau, dataset, version, count
    query                requester, tags, hits
    standing_match       match_id, bureau, other
    disclosure_request   request_id, match_id, requester, request_digest
    disclosure_decision  request_id, requester, owner, outcome, fields, decision_digest
    quota_refusal        bureau, operation

with bureau/requester/owner/other a three-letter bureau code; dataset a
dataset name (1-100 printable characters, no "/", no surrounding spaces);
version >= 1 and count/tags/hits/fields >= 0 integers below 2^63;
match_id/request_id 16 bytes; digest/request_digest/decision_digest
32 bytes; outcome "approved" or "denied"; operation a lowercase token.
`digest` is the enrollment stream's SHA-256 (tag || handle || key type);
`request_digest` and `decision_digest` are SHA-256 of the signed
encodings in `psi.disclosure`.

`decode_entry` accepts exactly the bytes `encode_entry` produces: it
re-encodes what it parsed and refuses any difference.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from psi.errors import DeserializeError, InvalidInputError

__all__ = [
    "FORMAT_VERSION",
    "MAX_ENTRY_LENGTH",
    "AuditEntry",
    "EntryKind",
    "decode_entry",
    "encode_entry",
]

FORMAT_VERSION: Final = 1
MAX_ENTRY_LENGTH: Final = 4096
_I63: Final = (1 << 63) - 1
_RESERVED = frozenset({"v", "kind", "time_ms"})

FieldValue = str | int | bytes


class EntryKind(enum.Enum):
    """What an audit entry records."""

    ENROLLMENT = "enrollment"
    REMOVAL = "removal"
    QUERY = "query"
    STANDING_MATCH = "standing_match"
    DISCLOSURE_REQUEST = "disclosure_request"
    DISCLOSURE_DECISION = "disclosure_decision"
    QUOTA_REFUSAL = "quota_refusal"


class _Type(enum.Enum):
    CODE = "a three-letter bureau code"
    DATASET = "a dataset name (1-100 printable characters, no '/')"
    VERSION = "an integer from 1 to 2^63-1"
    COUNT = "an integer from 0 to 2^63-1"
    ID = "16 bytes"
    DIGEST = "32 bytes (a SHA-256 digest)"
    OUTCOME = "'approved' or 'denied'"
    OPERATION = "a lowercase token (a-z, 0-9, _; up to 32 characters)"


_SCHEMAS: Final[Mapping[EntryKind, Mapping[str, _Type]]] = {
    EntryKind.ENROLLMENT: {
        "bureau": _Type.CODE,
        "dataset": _Type.DATASET,
        "version": _Type.VERSION,
        "count": _Type.COUNT,
        "digest": _Type.DIGEST,
    },
    EntryKind.REMOVAL: {
        "bureau": _Type.CODE,
        "dataset": _Type.DATASET,
        "version": _Type.VERSION,
        "count": _Type.COUNT,
    },
    EntryKind.QUERY: {"requester": _Type.CODE, "tags": _Type.COUNT, "hits": _Type.COUNT},
    EntryKind.STANDING_MATCH: {"match_id": _Type.ID, "bureau": _Type.CODE, "other": _Type.CODE},
    EntryKind.DISCLOSURE_REQUEST: {
        "request_id": _Type.ID,
        "match_id": _Type.ID,
        "requester": _Type.CODE,
        "request_digest": _Type.DIGEST,
    },
    EntryKind.DISCLOSURE_DECISION: {
        "request_id": _Type.ID,
        "requester": _Type.CODE,
        "owner": _Type.CODE,
        "outcome": _Type.OUTCOME,
        "fields": _Type.COUNT,
        "decision_digest": _Type.DIGEST,
    },
    EntryKind.QUOTA_REFUSAL: {"bureau": _Type.CODE, "operation": _Type.OPERATION},
}

_CODE = re.compile(r"[A-Z]{3}")
_OPERATION = re.compile(r"[a-z][a-z0-9_]{0,31}")
_HEX = re.compile(r"[0-9a-f]*")
_BYTE_LENGTHS = {_Type.ID: 16, _Type.DIGEST: 32}


def _valid(kind: _Type, value: object) -> bool:
    """Whether `value` (a Python value, bytes for ID/DIGEST) is of `kind`."""
    if kind in (_Type.VERSION, _Type.COUNT):
        low = 1 if kind is _Type.VERSION else 0
        return type(value) is int and low <= value <= _I63
    if kind in _BYTE_LENGTHS:
        return isinstance(value, bytes) and len(value) == _BYTE_LENGTHS[kind]
    if not isinstance(value, str):
        return False
    if kind is _Type.CODE:
        return _CODE.fullmatch(value) is not None
    if kind is _Type.OPERATION:
        return _OPERATION.fullmatch(value) is not None
    if kind is _Type.OUTCOME:
        return value in ("approved", "denied")
    return (  # DATASET, as the hub checks dataset names
        0 < len(value) <= 100
        and value.isprintable()
        and value == value.strip()
        and "/" not in value
    )


def _canonical(obj: Mapping[str, object]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


@dataclass(frozen=True)
class AuditEntry:
    """One decoded audit entry: its kind, time and typed fields (codes and
    names as str, counts as int, ids and digests as bytes)."""

    kind: EntryKind
    time_ms: int
    fields: Mapping[str, FieldValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, EntryKind):
            raise InvalidInputError(f"unknown kind {self.kind!r}", field="kind")
        if type(self.time_ms) is not int or not 0 <= self.time_ms <= _I63:
            raise InvalidInputError("must be a Unix time in milliseconds", field="time_ms")
        schema = _SCHEMAS[self.kind]
        missing = sorted(set(schema) - set(self.fields))
        extra = sorted(set(self.fields) - set(schema))
        if missing or extra:
            raise InvalidInputError(
                f"a {self.kind.value} entry has exactly the fields {sorted(schema)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else ""),
                field="fields",
            )
        for name, kind in schema.items():
            if not _valid(kind, self.fields[name]):
                raise InvalidInputError(
                    f"must be {kind.value}, got {self.fields[name]!r}", field=name
                )
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    def __getitem__(self, name: str) -> FieldValue:
        return self.fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __hash__(self) -> int:
        return hash(self.encode())

    def encode(self) -> bytes:
        """The canonical v1 encoding (module docstring): the log leaf's entry."""
        obj: dict[str, object] = {
            "v": FORMAT_VERSION,
            "kind": self.kind.value,
            "time_ms": self.time_ms,
        }
        for name, value in self.fields.items():
            obj[name] = value.hex() if isinstance(value, bytes) else value
        return _canonical(obj)


def encode_entry(kind: EntryKind | str, *, time_ms: int, **fields: FieldValue) -> bytes:
    """The canonical encoding of an audit entry; `InvalidInputError` when a
    field is missing, unexpected or of the wrong type."""
    if isinstance(kind, str):
        try:
            kind = EntryKind(kind)
        except ValueError:
            raise InvalidInputError(f"unknown kind {kind!r}", field="kind") from None
    return AuditEntry(kind, time_ms, fields).encode()


def decode_entry(data: bytes) -> AuditEntry:
    """Parse an entry, accepting only the canonical v1 encoding; raise
    `DeserializeError` on anything else."""
    if len(data) > MAX_ENTRY_LENGTH:
        raise DeserializeError(f"audit entry is {len(data)} bytes; at most {MAX_ENTRY_LENGTH}")
    try:
        obj = json.loads(bytes(data).decode("ascii"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise DeserializeError(f"audit entry is not ASCII JSON: {e}") from None
    if not isinstance(obj, dict):
        raise DeserializeError("audit entry is not a JSON object")
    if obj.get("v") != FORMAT_VERSION or type(obj.get("v")) is not int:
        raise DeserializeError(f"audit entry is not format v{FORMAT_VERSION}")
    try:
        kind = EntryKind(obj.get("kind"))
    except ValueError:
        raise DeserializeError(f"unknown audit entry kind {obj.get('kind')!r}") from None
    schema = _SCHEMAS[kind]
    fields: dict[str, FieldValue] = {}
    for name, value in obj.items():
        if name in _RESERVED:
            continue
        kind_of = schema.get(name)
        if kind_of in _BYTE_LENGTHS:
            if not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) % 2:
                raise DeserializeError(f"{name} of a {kind.value} entry is not lowercase hex")
            fields[name] = bytes.fromhex(value)
        else:
            fields[name] = value
    time_ms = obj.get("time_ms")
    if type(time_ms) is not int:
        raise DeserializeError(f"time_ms of a {kind.value} entry is not an integer")
    try:
        entry = AuditEntry(kind, time_ms, fields)
    except InvalidInputError as e:
        raise DeserializeError(f"invalid {kind.value} entry: {e}") from None
    if entry.encode() != data:
        raise DeserializeError("audit entry is not in canonical form (v1 canonical JSON)")
    return entry


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")
