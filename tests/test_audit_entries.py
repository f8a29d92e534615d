"""Audit log entries: canonical v1 JSON, strict decoding, no identifiers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import audit, merkle
from psi.audit import AuditEntry, EntryKind, decode_entry, encode_entry
from psi.errors import DeserializeError, InvalidInputError, VerifyError

D32 = bytes(range(32))
I16 = bytes(range(100, 116))

EXAMPLES: dict[EntryKind, dict[str, object]] = {
    EntryKind.ENROLLMENT: {
        "bureau": "FRA", "dataset": "passeports volés", "version": 3, "count": 120_000,
        "digest": D32,
    },
    EntryKind.REMOVAL: {"bureau": "FRA", "dataset": "watchlist", "version": 4, "count": 2},
    EntryKind.QUERY: {"requester": "DEU", "tags": 12, "hits": 1},
    EntryKind.STANDING_MATCH: {"match_id": I16, "bureau": "FRA", "other": "ITA"},
    EntryKind.DISCLOSURE_REQUEST: {
        "request_id": I16, "match_id": bytes(16), "requester": "DEU", "request_digest": D32,
    },
    EntryKind.DISCLOSURE_DECISION: {
        "request_id": I16, "requester": "DEU", "owner": "FRA", "outcome": "denied",
        "fields": 0, "decision_digest": D32,
    },
    EntryKind.QUOTA_REFUSAL: {"bureau": "ITA", "operation": "query"},
}  # fmt: skip


def test_every_kind_has_an_example() -> None:
    assert set(EXAMPLES) == set(EntryKind)


@pytest.mark.parametrize("kind", list(EntryKind), ids=[k.value for k in EntryKind])
def test_round_trip(kind: EntryKind) -> None:
    encoded = encode_entry(kind, time_ms=1_700_000_000_123, **EXAMPLES[kind])  # type: ignore[arg-type]
    entry = decode_entry(encoded)
    assert entry.kind is kind and entry.time_ms == 1_700_000_000_123
    assert dict(entry.fields) == EXAMPLES[kind]
    assert entry.encode() == encoded
    assert encode_entry(kind.value, time_ms=entry.time_ms, **entry.fields) == encoded
    assert encoded.isascii() and b", " not in encoded and b": " not in encoded


def test_documented_wire_format() -> None:
    encoded = encode_entry(EntryKind.QUERY, time_ms=5, requester="FRA", tags=3, hits=1)
    assert encoded == b'{"hits":1,"kind":"query","requester":"FRA","tags":3,"time_ms":5,"v":1}'
    enrollment = encode_entry(
        "enrollment", time_ms=1, bureau="FRA", dataset="é", version=1, count=0, digest=D32
    )
    assert b'"dataset":"\\u00e9"' in enrollment
    assert f'"digest":"{D32.hex()}"'.encode() in enrollment


def test_entries_carry_no_free_text_or_identifiers() -> None:
    # Only codes, dataset names, counts, ids, digests, outcomes and operation
    # tokens: nothing a person's identifier or a tag could be written into.
    allowed = {"CODE", "DATASET", "VERSION", "COUNT", "ID", "DIGEST", "OUTCOME", "OPERATION"}
    for schema in audit._SCHEMAS.values():
        assert {t.name for t in schema.values()} <= allowed
        assert not {"tag", "tags_list", "handle", "purpose", "reason", "identifier"} & set(schema)


def entries() -> st.SearchStrategy[AuditEntry]:
    codes = st.sampled_from(["FRA", "DEU", "ITA"])
    counts = st.integers(0, (1 << 63) - 1)
    values: dict[str, st.SearchStrategy[str | int | bytes]] = {
        "CODE": codes,
        "DATASET": st.text(
            st.characters(codec="utf-8", categories=["L", "N", "P", "S"], exclude_characters="/"),
            min_size=1,
            max_size=20,
        ),
        "VERSION": st.integers(1, (1 << 63) - 1),
        "COUNT": counts,
        "ID": st.binary(min_size=16, max_size=16),
        "DIGEST": st.binary(min_size=32, max_size=32),
        "OUTCOME": st.sampled_from(["approved", "denied"]),
        "OPERATION": st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True),
    }

    @st.composite
    def build(draw: st.DrawFn) -> AuditEntry:
        kind = draw(st.sampled_from(list(EntryKind)))
        fields = {n: draw(values[t.name]) for n, t in audit._SCHEMAS[kind].items()}
        return AuditEntry(kind, draw(counts), fields)

    return build()


@settings(max_examples=300, deadline=None)
@given(a=entries(), b=entries())
def test_encoding_is_canonical_and_unambiguous(a: AuditEntry, b: AuditEntry) -> None:
    assert decode_entry(a.encode()) == a
    assert (a == b) == (a.encode() == b.encode())
    assert json.loads(a.encode())["v"] == 1


GOOD = encode_entry(EntryKind.QUERY, time_ms=5, requester="FRA", tags=3, hits=1)


@pytest.mark.parametrize(
    "bad",
    [
        b'{"hits":1, "kind":"query","requester":"FRA","tags":3,"time_ms":5,"v":1}',
        b'{"kind":"query","hits":1,"requester":"FRA","tags":3,"time_ms":5,"v":1}',
        b'{"hits":1,"kind":"query","requester":"FRA","tags":3,"time_ms":5,"v":1}\n',
        b'{"hits":1,"hits":1,"kind":"query","requester":"FRA","tags":3,"time_ms":5,"v":1}',
        b'{"hits":1,"kind":"query","requester":"FRA","tags":3,"time_ms":5,"v":2}',
        b'{"hits":1,"kind":"query","requester":"FRA","tags":3,"time_ms":5,"v":true}',
        b'{"hits":1,"kind":"query","requester":"FRA","tags":3,"time_ms":5}',
        b'{"hits":1,"kind":"lookup","requester":"FRA","tags":3,"time_ms":5,"v":1}',
        b'{"hits":1,"kind":"query","requester":"FRA","tags":3,"time_ms":5.0,"v":1}',
        b'{"hits":1,"kind":"query","requester":"FRA","tags":3,"time_ms":"5","v":1}',
        b'{"hits":1,"kind":"query","requester":"FRA","tags":3,"time_ms":-5,"v":1}',
        b'{"hits":true,"kind":"query","requester":"FRA","tags":3,"time_ms":5,"v":1}',
        b'{"hits":1.0,"kind":"query","requester":"FRA","tags":3,"time_ms":5,"v":1}',
        b'{"hits":NaN,"kind":"query","requester":"FRA","tags":3,"time_ms":5,"v":1}',
        b'{"hits":1,"kind":"query","requester":"fra","tags":3,"time_ms":5,"v":1}',
        b'{"hits":1,"kind":"query","requester":"FRA","time_ms":5,"v":1}',
        b'{"handle":"00","hits":1,"kind":"query","requester":"FRA","tags":3,"time_ms":5,"v":1}',
        b'{"hits":1,"kind":"query","requester":"FRA","tags":[3],"time_ms":5,"v":1}',
        b'[{"hits":1,"kind":"query","requester":"FRA","tags":3,"time_ms":5,"v":1}]',
        b'{"bureau":"FRA","operation":"Query","kind":"quota_refusal","time_ms":5,"v":1}',
        b"\xff",
        b"",
        b"{" + b" " * audit.MAX_ENTRY_LENGTH + b"}",
    ],
)
def test_non_canonical_or_invalid_entries_are_refused(bad: bytes) -> None:
    assert decode_entry(GOOD)  # the canonical form decodes
    with pytest.raises(DeserializeError):
        decode_entry(bad)


def test_hex_fields_must_be_canonical() -> None:
    good = encode_entry(
        EntryKind.STANDING_MATCH, time_ms=1, match_id=bytes([0xAB]) * 16, bureau="FRA", other="DEU"
    )
    decode_entry(good)
    for bad in (good.replace(b"abab", b"ABAB", 1), good.replace(b"abab", b"ab", 1)):
        with pytest.raises(DeserializeError):
            decode_entry(bad)
    with pytest.raises(DeserializeError):
        decode_entry(good.replace(b'"abab', b'"zzab', 1))
    raw_utf8 = encode_entry(
        EntryKind.REMOVAL, time_ms=1, bureau="FRA", dataset="é", version=1, count=0
    ).replace(b"\\u00e9", "é".encode())
    with pytest.raises(DeserializeError):
        decode_entry(raw_utf8)


@pytest.mark.parametrize(
    ("kind", "fields", "field"),
    [
        ("query", {"requester": "FRA", "tags": 1}, "fields"),
        ("query", {"requester": "FRA", "tags": 1, "hits": 0, "tag": "x"}, "fields"),
        ("query", {"requester": "FRA", "tags": True, "hits": 0}, "tags"),
        ("query", {"requester": "FRA", "tags": -1, "hits": 0}, "tags"),
        ("query", {"requester": "FRA", "tags": 1 << 63, "hits": 0}, "tags"),
        ("query", {"requester": "FRA", "tags": "1", "hits": 0}, "tags"),
        ("query", {"requester": "France", "tags": 1, "hits": 0}, "requester"),
        ("removal", {"bureau": "FRA", "dataset": "a/b", "version": 1, "count": 0}, "dataset"),
        ("removal", {"bureau": "FRA", "dataset": " a", "version": 1, "count": 0}, "dataset"),
        ("removal", {"bureau": "FRA", "dataset": "", "version": 1, "count": 0}, "dataset"),
        ("removal", {"bureau": "FRA", "dataset": "x" * 101, "version": 1, "count": 0}, "dataset"),
        ("removal", {"bureau": "FRA", "dataset": "a", "version": 0, "count": 0}, "version"),
        ("standing_match", {"match_id": bytes(15), "bureau": "FRA", "other": "DEU"}, "match_id"),
        ("standing_match", {"match_id": "00" * 16, "bureau": "FRA", "other": "DEU"}, "match_id"),
        ("quota_refusal", {"bureau": "FRA", "operation": "Query"}, "operation"),
        ("disclosure_decision", {"request_id": I16, "requester": "DEU", "owner": "FRA",
                                 "outcome": "maybe", "fields": 0, "decision_digest": D32},
         "outcome"),
        ("lookup", {}, "kind"),
    ],
)  # fmt: skip
def test_encode_refuses_bad_fields(kind: str, fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        encode_entry(kind, time_ms=1, **fields)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_time_is_validated() -> None:
    for bad in (-1, 1 << 63, True):
        with pytest.raises(InvalidInputError, match="time_ms"):
            encode_entry("query", time_ms=bad, requester="FRA", tags=0, hits=0)


def test_entries_are_immutable_and_hashable() -> None:
    entry = decode_entry(GOOD)
    with pytest.raises(TypeError):
        entry.fields["hits"] = 2  # type: ignore[index]
    assert entry["hits"] == 1 and set(entry) == {"requester", "tags", "hits"}
    assert len({entry, decode_entry(GOOD)}) == 1


def test_entries_as_log_leaves() -> None:
    log = merkle.MerkleLog()
    encoded = [
        encode_entry(kind, time_ms=i, **EXAMPLES[kind])  # type: ignore[arg-type]
        for i, kind in enumerate(EntryKind)
    ]
    for e in encoded:
        log.append(e)
    for i, e in enumerate(encoded):
        proof = log.inclusion_proof(i)
        merkle.verify_inclusion(merkle.leaf_hash(e), i, log.size, proof, log.root())
        with pytest.raises(VerifyError):
            merkle.verify_inclusion(
                merkle.leaf_hash(e.replace(b'"v":1', b'"v":2')), i, log.size, proof, log.root()
            )


def test_public_names_are_documented() -> None:
    for name in audit.__all__:
        obj = getattr(audit, name)
        if callable(obj):
            assert obj.__doc__, name
