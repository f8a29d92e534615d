"""Fuzzing the decoders that take bytes from elsewhere: nothing may raise
anything but the error types each one documents.

* `psi.group.decode_element` / `decode_scalar`: `DeserializeError`.
* `psi.oprf.verify_evaluation_proof` (a custodian's answer): `VerifyError`
  or `DeserializeError` (both `PeerError`).
* `psi.threshold.FeldmanCommitments.decode`: `DeserializeError` or
  `InvalidInputError` (a wrong count).
* `psi.audit.decode_entry`: `DeserializeError`.
* `psi.disclosure.DisclosureRequest.decode` / `DisclosureDecision.decode`:
  `DeserializeError`; `open_record`: `DecryptError` (a `VerifyError`).
* `psi.merkle.verify_inclusion` / `verify_consistency`: `VerifyError`.
* `bureau_agent.ingest.read_rows` over CSV and JSONL files of random bytes and
  enormous fields: every row is `Accepted` or `Rejected` (with a reason), or
  the file as a whole raises `SchemaError`.

Hypothesis draws both random bytes and mutations of valid encodings (a
flipped byte, a truncation, an insertion), which reach deeper than noise.
The number of examples run is printed at the end of the module; atheris, when
installed, runs `scripts/fuzz_decoders.py` for a bounded number of inputs.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bureau_agent import ingest
from psi import audit, disclosure, group, merkle, oprf, threshold
from psi.errors import DeserializeError, InvalidInputError, PeerError, VerifyError
from psi.oprf import Mode

EXAMPLES: Counter[str] = Counter()
ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def report_examples() -> Iterator[None]:
    yield
    print(f"\nfuzz examples: {sum(EXAMPLES.values())} {dict(sorted(EXAMPLES.items()))}")


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` with a byte changed, a tail cut, a byte inserted, or appended noise."""
    raw = bytearray(valid)
    how = draw(st.sampled_from(["flip", "cut", "insert", "append"]))
    if how == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] ^= draw(st.integers(1, 255))
    elif how == "cut":
        del raw[draw(st.integers(0, len(raw))) :]
    elif how == "insert":
        raw.insert(draw(st.integers(0, len(raw))), draw(st.integers(0, 255)))
    else:
        raw += draw(st.binary(min_size=1, max_size=8))
    return bytes(raw)


def either(valid: bytes, max_size: int = 200) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=max_size), mutated(valid))


def only_raises(fn: Callable[[], object], *allowed: type[BaseException]) -> None:
    with contextlib.suppress(*allowed):
        fn()


# -- group ------------------------------------------------------------------------------------

ELEMENT = group.scalar_mult_base(group.random_scalar())
SCALAR = group.random_scalar()


@FUZZ
@given(either(ELEMENT, 40))
def test_decode_element(data: bytes) -> None:
    EXAMPLES["group.decode_element"] += 1
    only_raises(lambda: group.decode_element(data), DeserializeError)


@FUZZ
@given(either(SCALAR, 40))
def test_decode_scalar(data: bytes) -> None:
    EXAMPLES["group.decode_scalar"] += 1
    only_raises(lambda: group.decode_scalar(data), DeserializeError)


# -- a custodian's answer ------------------------------------------------------------------------

_SK, _PK = oprf.generate_key_pair()
_BLINDS, _BLINDED = oprf.blind_batch([b"a", b"b", b"c"], Mode.VOPRF)
_EVALUATED, _PROOF = oprf.verifiable_blind_evaluate_batch(_SK, _PK, _BLINDED)


@FUZZ
@given(
    pk=either(_PK, 40),
    evaluated=st.lists(either(_EVALUATED[0], 40), min_size=0, max_size=4),
    proof=either(_PROOF, 80),
)
def test_verify_evaluation_proof(pk: bytes, evaluated: list[bytes], proof: bytes) -> None:
    EXAMPLES["oprf.verify_evaluation_proof"] += 1
    only_raises(
        lambda: oprf.verify_evaluation_proof(pk, _BLINDED, evaluated, proof, Mode.VOPRF),
        PeerError,
    )


def test_the_valid_answer_verifies() -> None:
    """The fuzzing above starts from an answer that does verify."""
    assert oprf.verify_evaluation_proof(_PK, _BLINDED, _EVALUATED, _PROOF, Mode.VOPRF)


@FUZZ
@given(st.lists(either(ELEMENT, 40), min_size=0, max_size=12))
def test_feldman_commitments_decode(points: list[bytes]) -> None:
    EXAMPLES["threshold.FeldmanCommitments.decode"] += 1
    only_raises(
        lambda: threshold.FeldmanCommitments.decode(points), DeserializeError, InvalidInputError
    )


# -- audit entries and proofs --------------------------------------------------------------------

ENTRY = audit.encode_entry(
    audit.EntryKind.QUERY, time_ms=1_700_000_000_000, requester="USA", tags=3, hits=1
)
DECISION_ENTRY = audit.encode_entry(
    audit.EntryKind.DISCLOSURE_REQUEST,
    time_ms=5,
    request_id=b"\x01" * 16,
    match_id=b"\x02" * 16,
    requester="FRA",
    request_digest=b"\x03" * 32,
)


@FUZZ
@given(st.one_of(either(ENTRY, 300), mutated(DECISION_ENTRY)))
def test_decode_audit_entry(data: bytes) -> None:
    EXAMPLES["audit.decode_entry"] += 1
    only_raises(lambda: audit.decode_entry(data), DeserializeError)


_LEAVES = [merkle.leaf_hash(bytes([i])) for i in range(7)]
_ROOT = merkle.root(_LEAVES)


@FUZZ
@given(
    index=st.integers(-2, 10),
    size=st.integers(-2, 10),
    proof=st.lists(st.binary(min_size=0, max_size=40), max_size=5),
    leaf=either(_LEAVES[3], 40),
)
def test_verify_inclusion(index: int, size: int, proof: list[bytes], leaf: bytes) -> None:
    EXAMPLES["merkle.verify_inclusion"] += 1
    only_raises(lambda: merkle.verify_inclusion(leaf, index, size, proof, _ROOT), VerifyError)


@FUZZ
@given(
    old=st.integers(-2, 10),
    new=st.integers(-2, 10),
    proof=st.lists(st.binary(min_size=0, max_size=40), max_size=5),
)
def test_verify_consistency(old: int, new: int, proof: list[bytes]) -> None:
    EXAMPLES["merkle.verify_consistency"] += 1
    only_raises(lambda: merkle.verify_consistency(old, new, _ROOT, _ROOT, proof), VerifyError)


# -- disclosure --------------------------------------------------------------------------------

REQUEST = disclosure.DisclosureRequest(
    request_id=b"\x01" * 16,
    match_id=b"\x02" * 16,
    requester="USA",
    purpose="case 7",
    legal_basis="Art. 7",
    created_ms=1_700_000_000_000,
    expires_ms=1_700_086_400_000,
)
_HPKE = disclosure.generate_hpke_key()
SEALED = disclosure.seal_record(
    {"name": "A B"},
    _HPKE.public_key().raw(),
    request_id=REQUEST.request_id,
    requester="USA",
    owner="FRA",
)
DECISION = disclosure.DisclosureDecision.approve(
    REQUEST, owner="FRA", fields=["name"], sealed=SEALED, decided_ms=1_700_000_100_000
)
DENIAL = disclosure.DisclosureDecision.deny(
    REQUEST, owner="FRA", reason="no", decided_ms=1_700_000_100_000
)


@FUZZ
@given(either(REQUEST.encode(), 300))
def test_decode_disclosure_request(data: bytes) -> None:
    EXAMPLES["disclosure.DisclosureRequest.decode"] += 1
    only_raises(lambda: disclosure.DisclosureRequest.decode(data), DeserializeError)


@FUZZ
@given(st.one_of(either(DECISION.encode(), 300), mutated(DENIAL.encode())))
def test_decode_disclosure_decision(data: bytes) -> None:
    EXAMPLES["disclosure.DisclosureDecision.decode"] += 1
    only_raises(lambda: disclosure.DisclosureDecision.decode(data), DeserializeError)


@settings(max_examples=150, deadline=None)
@given(st.one_of(mutated(SEALED), st.binary(max_size=64)))
def test_open_record(data: bytes) -> None:
    EXAMPLES["disclosure.open_record"] += 1

    def open_it() -> object:
        return disclosure.open_record(
            data, _HPKE, request_id=REQUEST.request_id, requester="USA", owner="FRA"
        )

    only_raises(open_it, disclosure.DecryptError)


def test_the_valid_encodings_decode() -> None:
    assert disclosure.DisclosureRequest.decode(REQUEST.encode()) == REQUEST
    assert disclosure.DisclosureDecision.decode(DECISION.encode()) == DECISION
    assert audit.decode_entry(ENTRY).kind is audit.EntryKind.QUERY
    assert disclosure.open_record(
        SEALED, _HPKE, request_id=REQUEST.request_id, requester="USA", owner="FRA"
    ) == {"name": "A B"}


# -- ingest ------------------------------------------------------------------------------------

CSV_SCHEMA = """format = "csv"
id = "id"

[fields]
name = "name"
dob = "dob"
passport = "passport"
passport_issuer = "issuer"
email = "email"
"""
JSONL_SCHEMA = CSV_SCHEMA.replace('format = "csv"', 'format = "jsonl"')
CSV_FILE = b"id,name,dob,passport,issuer,email\nR1,Anna Weber,1980-01-02,12AB34567,FRA,a@b.org\n"
JSONL_FILE = (
    b'{"id": "R1", "name": "Anna Weber", "dob": "1980-01-02", "passport": "12AB34567", '
    b'"issuer": "FRA", "email": "a@b.org"}\n'
)


def _read_all(tmp: Path, schema_text: str, content: bytes) -> int:
    (tmp / "schema.toml").write_text(schema_text)
    path = tmp / "data"
    path.write_bytes(content)
    schema = ingest.Schema.load(tmp / "schema.toml")
    rows = 0
    try:
        for row in ingest.read_rows(path, schema):
            assert isinstance(row, ingest.Accepted | ingest.Rejected), row
            if isinstance(row, ingest.Rejected):
                assert row.rejections and all(r.reason for r in row.rejections)
            rows += 1
    except ingest.SchemaError:
        pass
    return rows


def enormous(base: bytes) -> st.SearchStrategy[bytes]:
    """A valid file with one field blown up to a large size, or a huge line."""
    return st.sampled_from(
        [
            base.replace(b"Anna Weber", b"A" * 300_000),
            base.replace(b"12AB34567", b"9" * 5_000),
            base + b"R2," + b"x" * 2_000_000 + b"\n",
            base + b"\xff\xfe" * 1000 + b"\n",
            base + b"{" * 100_000 + b"\n",
            base.replace(b"\n", b"\r\n") + b'"' + b"q" * 200_000,
        ]
    )


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(content=st.one_of(st.binary(max_size=600), mutated(CSV_FILE), enormous(CSV_FILE)))
def test_ingest_csv_never_raises_anything_else(tmp_path: Path, content: bytes) -> None:
    EXAMPLES["ingest.read_rows csv"] += 1
    _read_all(tmp_path, CSV_SCHEMA, content)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(content=st.one_of(st.binary(max_size=600), mutated(JSONL_FILE), enormous(JSONL_FILE)))
def test_ingest_jsonl_never_raises_anything_else(tmp_path: Path, content: bytes) -> None:
    EXAMPLES["ingest.read_rows jsonl"] += 1
    _read_all(tmp_path, JSONL_SCHEMA, content)


def test_the_valid_files_are_accepted(tmp_path: Path) -> None:
    for schema, content in ((CSV_SCHEMA, CSV_FILE), (JSONL_SCHEMA, JSONL_FILE)):
        (tmp_path / "schema.toml").write_text(schema)
        (tmp_path / "data").write_bytes(content)
        rows = list(
            ingest.read_rows(tmp_path / "data", ingest.Schema.load(tmp_path / "schema.toml"))
        )
        assert [type(r) for r in rows] == [ingest.Accepted]


# -- atheris --------------------------------------------------------------------------------


def test_atheris_run_finds_nothing(tmp_path: Path) -> None:
    """A short, bounded coverage-guided run of scripts/fuzz_decoders.py."""
    pytest.importorskip("atheris")
    runs = int(os.environ.get("BLINDMATCH_ATHERIS_RUNS", "200000"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.fuzz_decoders",
            f"-runs={runs}",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done = re.search(r"Done (\d+) runs", result.stderr)
    assert done is not None, result.stderr[-2000:]
    EXAMPLES["atheris executions"] += int(done.group(1))
    assert int(done.group(1)) == runs
