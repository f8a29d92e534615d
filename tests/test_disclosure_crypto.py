"""Consent-gated disclosure crypto: signed requests and decisions, and
records sealed with HPKE to the requester."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import disclosure
from psi.disclosure import (
    DecryptError,
    DisclosureDecision,
    DisclosureRequest,
    Outcome,
    Suite,
    open_record,
    seal_record,
)
from psi.errors import DeserializeError, InvalidInputError, VerifyError

SIGNING = {code: Ed25519PrivateKey.generate() for code in ("FRA", "DEU", "ITA")}
SIGNING_PUBLIC = {code: key.public_key().public_bytes_raw() for code, key in SIGNING.items()}
HPKE = {code: disclosure.generate_hpke_key() for code in ("FRA", "DEU", "ITA")}

RID = bytes(range(16))
MID = bytes(range(16, 32))
RECORD = {"name": "Jean Dupont", "passport": "FRA12AB34567", "note": "seen in Lyon\n2024-03-01"}


def make_request(**changes: object) -> DisclosureRequest:
    base = DisclosureRequest(
        request_id=RID,
        match_id=MID,
        requester="FRA",
        purpose="investigation 2024/117, fraud",
        legal_basis="Art. 8 Prüm Decision",
        created_ms=1_700_000_000_000,
        expires_ms=1_700_000_000_000 + 7 * 86_400_000,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def seal(fields: dict[str, str] = RECORD, suite: Suite = Suite.MLKEM768_X25519) -> bytes:
    return seal_record(
        fields,
        HPKE["FRA"].public_key(),
        request_id=RID,
        requester="FRA",
        owner="DEU",
        suite=suite,
    )


def open_(sealed: bytes, suite: Suite = Suite.MLKEM768_X25519, **changes: object) -> dict[str, str]:
    args: dict[str, object] = {"request_id": RID, "requester": "FRA", "owner": "DEU"}
    args.update(changes)
    key = args.pop("key", HPKE["FRA"])
    return open_record(sealed, key, suite=suite, **args)  # type: ignore[arg-type]


# -- the whole exchange ------------------------------------------------------------


def test_request_decision_seal_open_round_trip() -> None:
    # Requester FRA signs; the hub routes to the owner DEU, who checks it.
    request = make_request()
    request_sig = disclosure.sign_request(SIGNING["FRA"], request)
    received = DisclosureRequest.decode(request.encode())
    disclosure.verify_request(SIGNING_PUBLIC["FRA"], received, request_sig)

    # DEU approves two fields, seals them to FRA's directory key, signs.
    chosen = {k: RECORD[k] for k in ("passport", "name")}
    directory_key = HPKE["FRA"].public_key().raw()
    sealed = seal_record(
        chosen, directory_key, request_id=RID, requester=request.requester, owner="DEU"
    )
    decision = DisclosureDecision.approve(
        received, owner="DEU", fields=chosen, sealed=sealed, decided_ms=1_700_000_100_000
    )
    decision_sig = disclosure.sign_decision(SIGNING["DEU"].private_bytes_raw(), decision)

    # FRA fetches, verifies against its own request, opens.
    got = DisclosureDecision.decode(decision.encode())
    assert got == decision and got.fields == ("name", "passport")
    disclosure.verify_decision(
        SIGNING["DEU"].public_key(), got, decision_sig, request=request, sealed=sealed
    )
    assert open_(sealed, fields=got.fields) == chosen


def test_denial_round_trip() -> None:
    request = make_request()
    decision = DisclosureDecision.deny(
        request, owner="DEU", reason="no legal basis for this purpose", decided_ms=5
    )
    assert decision.outcome is Outcome.DENIED and decision.fields == ()
    signature = disclosure.sign_decision(SIGNING["DEU"], decision)
    assert DisclosureDecision.decode(decision.encode()) == decision
    disclosure.verify_decision(SIGNING_PUBLIC["DEU"], decision, signature, request=request)
    with pytest.raises(VerifyError, match="denied"):
        disclosure.verify_decision(
            SIGNING_PUBLIC["DEU"], decision, signature, request=request, sealed=seal()
        )


# -- sealing ---------------------------------------------------------------------


SEALED = seal()
SEALED_FALLBACK = seal(suite=Suite.X25519)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_bit_flip_of_a_sealed_record_is_rejected(data: st.DataObject) -> None:
    sealed = data.draw(st.sampled_from([SEALED, SEALED_FALLBACK]), label="sealed")
    suite = Suite(sealed[1])
    position = data.draw(st.integers(0, len(sealed) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    tampered = bytearray(sealed)
    tampered[position] ^= 1 << bit
    with pytest.raises(DecryptError):
        open_(bytes(tampered), suite)


def test_truncated_or_extended_records_are_rejected() -> None:
    for bad in (b"", SEALED[:1], SEALED[:2], SEALED[:-1], SEALED + b"\x00", SEALED[:40]):
        with pytest.raises(DecryptError):
            open_(bad)


@pytest.mark.parametrize(
    "changes",
    [
        {"request_id": bytes(16)},
        {"requester": "ITA"},
        {"owner": "ITA"},
        {"requester": "DEU", "owner": "FRA"},
        {"key": HPKE["DEU"]},
        {"key": HPKE["ITA"]},
    ],
    ids=["other-request-id", "other-requester", "other-owner", "swapped-bureaus",
         "owners-key", "third-bureaus-key"],
)  # fmt: skip
@pytest.mark.parametrize("suite", list(Suite), ids=[s.name for s in Suite])
def test_wrong_context_or_key_is_rejected(changes: dict[str, object], suite: Suite) -> None:
    sealed = SEALED if suite is Suite.MLKEM768_X25519 else SEALED_FALLBACK
    assert open_(sealed, suite) == RECORD
    with pytest.raises(DecryptError, match="does not open"):
        open_(sealed, suite, **changes)


def test_fallback_suite_round_trips_and_downgrade_is_refused() -> None:
    assert SEALED_FALLBACK[:2] == b"\x01\x02" and SEALED[:2] == b"\x01\x01"
    assert open_(SEALED_FALLBACK, Suite.X25519) == RECORD
    # An opener that requires the hybrid suite refuses an X25519 record ...
    with pytest.raises(DecryptError, match="downgrade"):
        open_(SEALED_FALLBACK, Suite.MLKEM768_X25519)
    # ... and relabelling it as hybrid does not help (info binds the suite id).
    relabelled = b"\x01\x01" + SEALED_FALLBACK[2:]
    with pytest.raises(DecryptError):
        open_(relabelled, Suite.MLKEM768_X25519)
    # The X25519 payload opened under the X25519 suite but a hybrid info fails too.
    with pytest.raises(DecryptError):
        open_(b"\x01\x02" + SEALED[2:], Suite.X25519)
    with pytest.raises(DecryptError, match="suite MLKEM768_X25519"):
        open_(SEALED, Suite.X25519)
    with pytest.raises(DecryptError, match="#9"):
        open_(b"\x01\x09" + SEALED[2:])


def test_opened_fields_must_match_the_decision() -> None:
    assert open_(SEALED, fields=["note", "passport", "name"]) == RECORD
    with pytest.raises(DecryptError, match="decision lists"):
        open_(SEALED, fields=["name"])


field_names = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), min_size=1, max_size=12
)
field_values = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@settings(max_examples=30, deadline=None)
@given(fields=st.dictionaries(field_names, field_values, min_size=1, max_size=6))
def test_any_record_round_trips(fields: dict[str, str]) -> None:
    assert open_(seal(fields, Suite.X25519), Suite.X25519) == fields


def test_record_contents_are_validated() -> None:
    for bad in ({}, {"": "x"}, {" name": "x"}, {"a\nb": "x"}, {"x" * 101: "x"}):
        with pytest.raises(InvalidInputError):
            seal(bad)
    with pytest.raises(InvalidInputError):
        seal({"name": 42})  # type: ignore[dict-item]
    with pytest.raises(InvalidInputError):
        seal({"name": "\ud800"})
    with pytest.raises(InvalidInputError, match="at most"):
        seal({"blob": "x" * disclosure.MAX_RECORD_BYTES})


def test_record_plaintext_layout() -> None:
    plaintext = disclosure._encode_record({"b": "2", "a": "1"})
    assert plaintext == struct.pack(">IIsIsIsIs", 2, 1, b"a", 1, b"1", 1, b"b", 1, b"2")
    assert disclosure._decode_record(plaintext) == {"a": "1", "b": "2"}
    unsorted = struct.pack(">IIsIsIsIs", 2, 1, b"b", 1, b"2", 1, b"a", 1, b"1")
    duplicate = struct.pack(">IIsIsIsIs", 2, 1, b"a", 1, b"1", 1, b"a", 1, b"2")
    for bad in (unsorted, duplicate, plaintext + b"\x00", plaintext[:-1], b"\x00\x00\x00\x00"):
        with pytest.raises(DeserializeError):
            disclosure._decode_record(bad)


def test_hpke_info_layout() -> None:
    info = disclosure.hpke_info(Suite.MLKEM768_X25519, request_id=RID, requester="FRA", owner="DEU")
    label = b"blindmatch/v1/disclosure"
    assert info == (
        struct.pack(">I", len(label)) + label
        + b"\x00\x00\x00\x01\x01"
        + b"\x00\x00\x00\x10" + RID
        + b"\x00\x00\x00\x03FRA"
        + b"\x00\x00\x00\x03DEU"
    )  # fmt: skip


# -- keys ------------------------------------------------------------------------


def test_keys_from_their_stored_forms() -> None:
    key = HPKE["FRA"]
    seed = key.mlkem768.private_bytes_raw()
    assert len(seed) == 64
    again = disclosure.hpke_private_key(seed, key.x25519.private_bytes_raw())
    assert again.public_key().raw() == key.public_key().raw()
    mlkem_raw, x25519_raw = key.public_key().raw()
    assert (len(mlkem_raw), len(x25519_raw)) == (1184, 32)
    public = disclosure.hpke_public_key(mlkem_raw, x25519_raw)
    sealed = seal_record(RECORD, public, request_id=RID, requester="FRA", owner="DEU")
    assert open_record(sealed, again, request_id=RID, requester="FRA", owner="DEU") == RECORD
    assert "redacted" in repr(key) and seed.hex() not in repr(key)
    with pytest.raises(InvalidInputError, match="hpke_mlkem768"):
        disclosure.hpke_public_key(mlkem_raw[:-1], x25519_raw)
    with pytest.raises(InvalidInputError, match="hpke_x25519"):
        disclosure.hpke_public_key(mlkem_raw, x25519_raw[:-1])
    with pytest.raises(InvalidInputError, match="hpke_mlkem768"):
        disclosure.hpke_private_key(seed[:32], key.x25519.private_bytes_raw())
    with pytest.raises(InvalidInputError, match="hpke_x25519"):
        disclosure.hpke_private_key(seed, b"short")


# -- signatures ------------------------------------------------------------------


def test_request_signed_by_another_bureau_is_rejected() -> None:
    request = make_request()
    forged = disclosure.sign_request(SIGNING["DEU"], request)
    with pytest.raises(VerifyError, match=f"request {RID.hex()} is not signed by FRA"):
        disclosure.verify_request(SIGNING_PUBLIC["FRA"], request, forged)
    good = disclosure.sign_request(SIGNING["FRA"], request)
    for changed in (
        make_request(purpose="something else"),
        make_request(match_id=bytes(16)),
        make_request(expires_ms=request.expires_ms + 1),
    ):
        with pytest.raises(VerifyError):
            disclosure.verify_request(SIGNING_PUBLIC["FRA"], changed, good)
    with pytest.raises(VerifyError):
        disclosure.verify_request(SIGNING_PUBLIC["FRA"], request, good[:-1])
    with pytest.raises(VerifyError, match="not an Ed25519 public key"):
        disclosure.verify_request(b"short", request, good)
    with pytest.raises(InvalidInputError):
        disclosure.sign_request(b"short", request)


def test_decision_checks_name_what_failed() -> None:
    request = make_request()
    decision = DisclosureDecision.approve(
        request, owner="DEU", fields=RECORD, sealed=SEALED, decided_ms=9
    )
    by_ita = disclosure.sign_decision(SIGNING["ITA"], decision)
    with pytest.raises(VerifyError, match=f"decision for request {RID.hex()} is not signed by DEU"):
        disclosure.verify_decision(SIGNING_PUBLIC["DEU"], decision, by_ita, request=request)

    good = disclosure.sign_decision(SIGNING["DEU"], decision)
    disclosure.verify_decision(SIGNING_PUBLIC["DEU"], decision, good, request=request)
    with pytest.raises(VerifyError, match="not for request"):
        disclosure.verify_decision(
            SIGNING_PUBLIC["DEU"], decision, good, request=make_request(request_id=bytes(16))
        )
    with pytest.raises(VerifyError, match="different version"):
        disclosure.verify_decision(
            SIGNING_PUBLIC["DEU"], decision, good, request=make_request(purpose="other")
        )
    with pytest.raises(VerifyError, match="not the one DEU approved"):
        disclosure.verify_decision(
            SIGNING_PUBLIC["DEU"], decision, good, request=request, sealed=SEALED_FALLBACK
        )
    # A decision naming another requester (signed by the owner all the same).
    odd = replace(decision, requester="ITA")
    with pytest.raises(VerifyError, match="names requester ITA"):
        disclosure.verify_decision(
            SIGNING_PUBLIC["DEU"], odd, disclosure.sign_decision(SIGNING["DEU"], odd),
            request=request,
        )  # fmt: skip
    # The owner's signature covers every field of the decision.
    for changed in (
        DisclosureDecision.deny(request, owner="DEU", reason="x", decided_ms=9),
        replace(decision, decided_ms=10),
        replace(decision, owner="ITA"),
        replace(decision, fields=("name",)),
        replace(decision, reason="a note"),
    ):
        with pytest.raises(VerifyError, match="not signed"):
            disclosure.verify_decision(SIGNING_PUBLIC["DEU"], changed, good, request=request)


# -- encodings ----------------------------------------------------------------------

# Small alphabets make boundary-shifting collisions ("a"+"ab" vs "aa"+"b") likely
# if the encoding were ambiguous.
tiny_text = st.text(alphabet="ab:", min_size=1, max_size=4)
ids = st.sampled_from([bytes(16), bytes([1]) * 16])
codes = st.sampled_from(["FRA", "DEU"])
times = st.integers(0, 3)

requests = st.builds(
    DisclosureRequest,
    request_id=ids,
    match_id=ids,
    requester=codes,
    purpose=tiny_text,
    legal_basis=tiny_text,
    created_ms=times,
    expires_ms=st.integers(4, 6),
)


@st.composite
def decisions(draw: st.DrawFn) -> DisclosureDecision:
    approved = draw(st.booleans())
    names = draw(st.lists(tiny_text, min_size=1, max_size=3, unique=True)) if approved else []
    return DisclosureDecision(
        request_id=draw(ids),
        request_digest=draw(st.sampled_from([bytes(32), bytes([7]) * 32])),
        requester=draw(codes),
        owner=draw(codes),
        outcome=Outcome.APPROVED if approved else Outcome.DENIED,
        reason=draw(tiny_text | st.just("")) if approved else draw(tiny_text),
        fields=tuple(sorted(names)),
        ciphertext_digest=draw(st.sampled_from([bytes(32), bytes([9]) * 32])) if approved else b"",
        decided_ms=draw(times),
    )


@settings(max_examples=300, deadline=None)
@given(a=requests, b=requests)
def test_request_encoding_is_deterministic_and_unambiguous(
    a: DisclosureRequest, b: DisclosureRequest
) -> None:
    assert a.encode() == replace(a).encode()
    assert DisclosureRequest.decode(a.encode()) == a
    assert (a == b) == (a.encode() == b.encode())


@settings(max_examples=300, deadline=None)
@given(a=decisions(), b=decisions())
def test_decision_encoding_is_deterministic_and_unambiguous(
    a: DisclosureDecision, b: DisclosureDecision
) -> None:
    assert DisclosureDecision.decode(a.encode()) == a
    assert (a == b) == (a.encode() == b.encode())


def test_request_encoding_is_the_documented_wire_format() -> None:
    r = make_request(purpose="p", legal_basis="ü", created_ms=1, expires_ms=2)

    def lp(x: bytes) -> bytes:
        return struct.pack(">I", len(x)) + x

    assert r.encode() == b"".join(
        lp(x)
        for x in (b"blindmatch/v1/disclosure-request", RID, MID, b"FRA", b"p", "ü".encode(),
                  (1).to_bytes(8, "big"), (2).to_bytes(8, "big"))
    )  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_decoders_accept_only_canonical_encodings(data: st.DataObject) -> None:
    request = data.draw(requests)
    decision = data.draw(decisions())
    for encoded, decode in ((request.encode(), DisclosureRequest.decode),
                            (decision.encode(), DisclosureDecision.decode)):  # fmt: skip
        cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
        with pytest.raises(DeserializeError):
            decode(encoded[:cut])
        with pytest.raises(DeserializeError):
            decode(encoded + data.draw(st.binary(min_size=1, max_size=3), label="tail"))
    with pytest.raises(DeserializeError, match="not a v1 disclosure request"):
        DisclosureRequest.decode(decision.encode())
    with pytest.raises(DeserializeError, match="not a v1 disclosure decision"):
        DisclosureDecision.decode(request.encode())


def test_decoder_refuses_well_framed_but_invalid_values() -> None:
    good = make_request().encode()
    bad_code = good.replace(b"\x00\x00\x00\x03FRA", b"\x00\x00\x00\x03fra")
    with pytest.raises(DeserializeError, match="requester"):
        DisclosureRequest.decode(bad_code)
    decision = DisclosureDecision.deny(make_request(), owner="DEU", reason="no", decided_ms=1)
    bad_outcome = decision.encode().replace(b"\x00\x00\x00\x06denied", b"\x00\x00\x00\x06maybe!")
    with pytest.raises(DeserializeError, match="unknown outcome"):
        DisclosureDecision.decode(bad_outcome)


def test_values_are_validated() -> None:
    request_changes: list[dict[str, object]] = [
        {"request_id": b"short"},
        {"match_id": bytes(17)},
        {"requester": "fr"},
        {"requester": "FRAN"},
        {"purpose": ""},
        {"purpose": " padded"},
        {"purpose": "two\nlines"},
        {"legal_basis": "x" * 1001},
        {"expires_ms": 1_700_000_000_000},
        {"created_ms": -1},
        {"expires_ms": 1 << 63},
    ]
    for changes in request_changes:
        with pytest.raises(InvalidInputError):
            make_request(**changes)
    request = make_request()
    approval = DisclosureDecision.approve(
        request, owner="DEU", fields=["a"], sealed=b"x", decided_ms=1
    )
    decision_changes: list[dict[str, object]] = [
        {"fields": ()},
        {"fields": ("b", "a")},
        {"fields": ("a", "a")},
        {"fields": ["a"]},
        {"ciphertext_digest": b""},
        {"request_digest": b"short"},
        {"owner": "deu"},
        {"outcome": "approved"},
        {"outcome": Outcome.DENIED},  # a denial with fields and a digest
    ]
    for changes in decision_changes:
        with pytest.raises(InvalidInputError):
            replace(approval, **changes)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="reason"):
        DisclosureDecision.deny(request, owner="DEU", reason="", decided_ms=1)


def test_request_ids_and_expiry() -> None:
    a, b = disclosure.new_request_id(), disclosure.new_request_id()
    assert len(a) == 16 and a != b
    request = make_request()
    assert not request.is_expired(request.expires_ms - 1)
    assert request.is_expired(request.expires_ms)


def test_public_names_are_documented() -> None:
    for name in disclosure.__all__:
        obj = getattr(disclosure, name)
        assert hasattr(disclosure, name)
        if callable(obj):
            assert obj.__doc__, name
