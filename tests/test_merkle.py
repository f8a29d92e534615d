"""RFC 9162 Merkle tree: the transparency-dev known-answer cases, the
incremental log against the RFC's recursive definitions, and tree heads."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import merkle
from psi.errors import DeserializeError, InvalidInputError, VerifyError
from psi.merkle import MerkleLog, TreeHead

HERE = Path(__file__).parent
OWN_COPY = HERE / "vectors" / "rfc9162-merkle"
SHARED_COPY = HERE.parent.parent / "shared" / "vectors" / "rfc9162-merkle"
VECTOR_DIR = SHARED_COPY if SHARED_COPY.exists() else OWN_COPY


# -- the vectors, as typed records --------------------------------------------


@dataclass(frozen=True)
class InclusionCase:
    id: str
    index: int
    size: int
    root: bytes
    leaf: bytes
    proof: list[bytes]
    want_err: bool


@dataclass(frozen=True)
class ConsistencyCase:
    id: str
    size1: int
    size2: int
    root1: bytes
    root2: bytes
    proof: list[bytes]
    want_err: bool


def _case_id(path: Path) -> str:
    return "-".join(path.relative_to(VECTOR_DIR).with_suffix("").parts)


def _proof(raw: list[str] | None) -> list[bytes]:
    return [base64.b64decode(p) for p in raw or []]


def load_inclusion() -> list[InclusionCase]:
    out = []
    for path in sorted((VECTOR_DIR / "inclusion").rglob("*.json")):
        v = json.loads(path.read_text())
        out.append(
            InclusionCase(
                id=_case_id(path),
                index=v["leafIdx"],
                size=v["treeSize"],
                root=base64.b64decode(v["root"]),
                leaf=base64.b64decode(v["leafHash"]),
                proof=_proof(v["proof"]),
                want_err=v["wantErr"],
            )
        )
    return out


def load_consistency() -> list[ConsistencyCase]:
    out = []
    for path in sorted((VECTOR_DIR / "consistency").rglob("*.json")):
        v = json.loads(path.read_text())
        out.append(
            ConsistencyCase(
                id=_case_id(path),
                size1=v["size1"],
                size2=v["size2"],
                root1=base64.b64decode(v["root1"]),
                root2=base64.b64decode(v["root2"]),
                proof=_proof(v["proof"]),
                want_err=v["wantErr"],
            )
        )
    return out


INCLUSION = load_inclusion()
CONSISTENCY = load_consistency()

# The RFC 6962 reference tree the transparency-dev cases are built on.
RFC6962_ENTRIES = [
    bytes.fromhex(h)
    for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
              "606162636465666768696a6b6c6d6e6f")
]  # fmt: skip


def test_every_vector_file_is_loaded() -> None:
    files = list(VECTOR_DIR.rglob("*.json"))
    assert len(files) == len(INCLUSION) + len(CONSISTENCY) == 196
    assert any(not c.want_err for c in INCLUSION) and any(c.want_err for c in INCLUSION)
    assert any(not c.want_err for c in CONSISTENCY) and any(c.want_err for c in CONSISTENCY)


@pytest.mark.skipif(not SHARED_COPY.exists(), reason="shared vectors not beside the checkout")
def test_own_copy_is_identical_to_shared() -> None:
    shared = {p.relative_to(SHARED_COPY): p.read_bytes() for p in SHARED_COPY.rglob("*.json")}
    own = {p.relative_to(OWN_COPY): p.read_bytes() for p in OWN_COPY.rglob("*.json")}
    assert own == shared


@pytest.mark.parametrize("case", INCLUSION, ids=[c.id for c in INCLUSION])
def test_inclusion_vector(case: InclusionCase) -> None:
    if case.want_err:
        with pytest.raises(VerifyError):
            merkle.verify_inclusion(case.leaf, case.index, case.size, case.proof, case.root)
    else:
        merkle.verify_inclusion(case.leaf, case.index, case.size, case.proof, case.root)


@pytest.mark.parametrize("case", CONSISTENCY, ids=[c.id for c in CONSISTENCY])
def test_consistency_vector(case: ConsistencyCase) -> None:
    args = (case.size1, case.size2, case.root1, case.root2, case.proof)
    if case.want_err:
        with pytest.raises(VerifyError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def test_generated_proofs_reproduce_the_happy_path_vectors() -> None:
    log = MerkleLog()
    log.extend(RFC6962_ENTRIES)
    happy = [c for c in INCLUSION if c.id.endswith("happy-path")]
    assert len(happy) == 5
    for c in happy:
        assert log.leaf_hash(c.index) == c.leaf
        assert log.root(c.size) == c.root
        assert log.inclusion_proof(c.index, c.size) == c.proof, c.id
    happy_c = [c for c in CONSISTENCY if c.id.endswith("happy-path")]
    assert len(happy_c) == 5
    for d in happy_c:
        assert (log.root(d.size1), log.root(d.size2)) == (d.root1, d.root2)
        assert log.consistency_proof(d.size1, d.size2) == d.proof, d.id


# -- the RFC's recursive definitions, written out naively ----------------------


def naive_mth(d: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH over leaf hashes."""
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return d[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:])).digest()


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n])."""
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*naive_subproof(m, d[:k], b), naive_mth(d[k:])]
    return [*naive_subproof(m - k, d[k:], False), naive_mth(d[:k])]


def leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [merkle.leaf_hash(salt + i.to_bytes(4, "big")) for i in range(n)]


def test_exhaustive_small_trees_match_the_rfc_definitions() -> None:
    d = leaves(40)
    log = MerkleLog.from_leaf_hashes(d)
    for n in range(1, 41):
        assert log.root(n) == naive_mth(d[:n])
        for i in range(n):
            proof = log.inclusion_proof(i, n)
            assert proof == naive_path(i, d[:n])
            merkle.verify_inclusion(d[i], i, n, proof, log.root(n))
        for m in range(1, n + 1):
            proof = log.consistency_proof(m, n)
            assert proof == (naive_subproof(m, d[:n], True) if m < n else [])
            merkle.verify_consistency(m, n, log.root(m), log.root(n), proof)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


sizes = st.integers(min_value=1, max_value=700)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), n=sizes, salt=st.binary(max_size=8))
def test_inclusion_proofs_equal_recomputation_and_resist_tampering(
    data: st.DataObject, n: int, salt: bytes
) -> None:
    d = leaves(n, salt)
    log = MerkleLog.from_leaf_hashes(d)
    size = data.draw(st.integers(1, n), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = log.inclusion_proof(index, size)
    root = log.root(size)
    assert root == naive_mth(d[:size]) == merkle.root(d[:size])
    assert proof == naive_path(index, d[:size]) == merkle.inclusion_proof(d[:size], index)
    merkle.verify_inclusion(d[index], index, size, proof, root)

    bit = data.draw(st.integers(0, 255), label="bit")
    with pytest.raises(VerifyError):
        merkle.verify_inclusion(flip(d[index], bit), index, size, proof, root)
    with pytest.raises(VerifyError):
        merkle.verify_inclusion(d[index], index, size, proof, flip(root, bit))
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="element")
        bad = [*proof[:at], flip(proof[at], bit), *proof[at + 1 :]]
        with pytest.raises(VerifyError):
            merkle.verify_inclusion(d[index], index, size, bad, root)
        with pytest.raises(VerifyError):
            merkle.verify_inclusion(d[index], index, size, proof[:-1], root)
    with pytest.raises(VerifyError):
        merkle.verify_inclusion(d[index], index, size, [*proof, root], root)
    if size > 1:
        other = data.draw(st.integers(0, size - 2), label="other index")
        other += other >= index
        with pytest.raises(VerifyError):
            merkle.verify_inclusion(d[index], other, size, proof, root)
    # A wrong size, with that size's genuine root (what a signed tree head
    # would vouch for).  With the *same* root a wrong size can verify when
    # the proof shapes coincide (RFC 9162 §2.1.3.2 trusts the size/root pair
    # of a signed tree head), so that is not a property to test.
    candidates = [s for s in range(index + 1, n + 1) if s != size]
    if candidates:
        wrong = data.draw(st.sampled_from(candidates), label="wrong size")
        with pytest.raises(VerifyError):
            merkle.verify_inclusion(d[index], index, wrong, proof, log.root(wrong))


@settings(max_examples=80, deadline=None)
@given(data=st.data(), n=st.integers(min_value=2, max_value=700), salt=st.binary(max_size=8))
def test_consistency_proofs_equal_recomputation_and_resist_tampering(
    data: st.DataObject, n: int, salt: bytes
) -> None:
    d = leaves(n, salt)
    log = MerkleLog.from_leaf_hashes(d)
    new = data.draw(st.integers(2, n), label="new size")
    old = data.draw(st.integers(1, new - 1), label="old size")
    proof = log.consistency_proof(old, new)
    old_root, new_root = log.root(old), log.root(new)
    assert proof == naive_subproof(old, d[:new], True) == merkle.consistency_proof(d[:new], old)
    merkle.verify_consistency(old, new, old_root, new_root, proof)

    bit = data.draw(st.integers(0, 255), label="bit")
    at = data.draw(st.integers(0, len(proof) - 1), label="element")
    bad = [*proof[:at], flip(proof[at], bit), *proof[at + 1 :]]
    with pytest.raises(VerifyError):
        merkle.verify_consistency(old, new, old_root, new_root, bad)
    with pytest.raises(VerifyError):
        merkle.verify_consistency(old, new, flip(old_root, bit), new_root, proof)
    with pytest.raises(VerifyError):
        merkle.verify_consistency(old, new, old_root, flip(new_root, bit), proof)
    with pytest.raises(VerifyError):
        merkle.verify_consistency(old, new, old_root, new_root, proof[:-1])
    with pytest.raises(VerifyError):
        merkle.verify_consistency(old, new, old_root, new_root, [*proof, new_root])
    with pytest.raises(VerifyError):
        merkle.verify_consistency(new, old, new_root, old_root, proof)
    # Wrong sizes, each with its genuine root.
    wrong_old = data.draw(st.sampled_from([s for s in range(1, new + 1) if s != old]))
    with pytest.raises(VerifyError):
        merkle.verify_consistency(wrong_old, new, log.root(wrong_old), new_root, proof)
    candidates = [s for s in range(old + 1, n + 1) if s != new]
    if candidates:
        wrong_new = data.draw(st.sampled_from(candidates), label="wrong new")
        with pytest.raises(VerifyError):
            merkle.verify_consistency(old, wrong_new, old_root, log.root(wrong_new), proof)
    # A forked log: same old prefix, a different leaf after it.
    forked = MerkleLog.from_leaf_hashes([*d[:old], merkle.leaf_hash(b"forged"), *d[old + 1 : new]])
    with pytest.raises(VerifyError):
        merkle.verify_consistency(old, new, old_root, forked.root(), proof)


# -- the incremental structure ---------------------------------------------------


def test_empty_log() -> None:
    log = MerkleLog()
    assert log.size == len(log) == 0
    assert log.root() == merkle.EMPTY_ROOT == merkle.root([])
    with pytest.raises(InvalidInputError):
        log.inclusion_proof(0)
    with pytest.raises(InvalidInputError):
        log.consistency_proof(0, 0)


def test_append_returns_index_and_hashes_the_entry() -> None:
    log = MerkleLog()
    assert log.append(b"first") == 0
    assert log.append_leaf_hash(merkle.leaf_hash(b"second")) == 1
    assert log.leaf_hash(0) == hashlib.sha256(b"\x00first").digest()
    assert log.root() == merkle.node_hash(log.leaf_hash(0), log.leaf_hash(1))
    with pytest.raises(InvalidInputError):
        log.append_leaf_hash(b"short")


def test_out_of_range_requests_are_local_errors() -> None:
    log = MerkleLog.from_leaf_hashes(leaves(5))
    for call in (
        lambda: log.inclusion_proof(5),
        lambda: log.inclusion_proof(0, 6),
        lambda: log.inclusion_proof(-1),
        lambda: log.consistency_proof(0),
        lambda: log.consistency_proof(4, 3),
        lambda: log.consistency_proof(1, 6),
        lambda: log.root(6),
        lambda: log.node(1, 2),
        lambda: log.level_bytes(3),
        lambda: list(log.nodes_since(6)),
    ):
        with pytest.raises(InvalidInputError):
            call()


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 100, 1024, 1025])
def test_levels_persist_and_rebuild(n: int) -> None:
    log = MerkleLog.from_leaf_hashes(leaves(n))
    levels = [log.level_bytes(level) for level in range(log.height)]
    rebuilt = MerkleLog.from_levels(levels)
    assert rebuilt.root() == log.root() and rebuilt.size == n
    rebuilt.append(b"next")
    log.append(b"next")
    assert rebuilt.root() == log.root()


def test_nodes_since_is_what_an_append_adds() -> None:
    log = MerkleLog.from_leaf_hashes(leaves(11))
    stored = {(lv, i): h for lv, i, h in log.nodes_since(0)}
    for i in range(11, 40):
        before = log.size
        log.append(i.to_bytes(4, "big"))
        stored.update({(lv, j): h for lv, j, h in log.nodes_since(before)})
    levels = [b"".join(stored[lv, i] for i in range(log.size >> lv)) for lv in range(log.height)]
    assert MerkleLog.from_levels(levels).root() == log.root()
    assert len(stored) == sum(log.size >> lv for lv in range(log.height))


def test_corrupted_levels_are_refused() -> None:
    log = MerkleLog.from_leaf_hashes(leaves(13))
    levels = [log.level_bytes(level) for level in range(log.height)]
    with pytest.raises(InvalidInputError, match="level 2"):
        MerkleLog.from_levels([*levels[:2], flip(levels[2], 5), *levels[3:]])
    with pytest.raises(InvalidInputError, match="levels"):
        MerkleLog.from_levels(levels[:-1])
    with pytest.raises(InvalidInputError, match="level 1"):
        MerkleLog.from_levels([levels[0], levels[1][:-32], *levels[2:]])
    with pytest.raises(InvalidInputError):
        MerkleLog.from_levels([])
    # Without `verify` only the shape is checked (a trusted, fast restart).
    MerkleLog.from_levels([*levels[:2], flip(levels[2], 5), *levels[3:]], verify=False)


# -- signed tree heads --------------------------------------------------------------


def test_tree_head_encoding_is_the_documented_wire_format() -> None:
    head = TreeHead(size=0x0102, root=bytes(range(32)), timestamp_ms=0x0A0B)
    encoded = head.encode()
    assert encoded == (
        b"blindmatch/v1/tree-head"
        + (0x0102).to_bytes(8, "big")
        + (0x0A0B).to_bytes(8, "big")
        + bytes(range(32))
    )
    assert len(encoded) == merkle.TREE_HEAD_LENGTH == 71
    assert TreeHead.decode(encoded) == head
    for bad in (encoded[:-1], encoded + b"\x00", b"x" + encoded[1:]):
        with pytest.raises(DeserializeError):
            TreeHead.decode(bad)


def test_tree_head_fields_are_validated() -> None:
    with pytest.raises(InvalidInputError, match="root"):
        TreeHead(size=1, root=b"short", timestamp_ms=0)
    with pytest.raises(InvalidInputError, match="size"):
        TreeHead(size=-1, root=bytes(32), timestamp_ms=0)
    with pytest.raises(InvalidInputError, match="timestamp_ms"):
        TreeHead(size=1, root=bytes(32), timestamp_ms=1 << 64)


def test_sign_and_verify_tree_head() -> None:
    key = Ed25519PrivateKey.generate()
    public_raw = key.public_key().public_bytes_raw()
    log = MerkleLog.from_leaf_hashes(leaves(10))
    head = log.tree_head(timestamp_ms=1_700_000_000_000)
    assert head.size == 10 and head.root == log.root()
    signature = merkle.sign_tree_head(key, head)
    merkle.verify_tree_head(public_raw, head, signature)
    merkle.verify_tree_head(key.public_key(), head, signature)
    tampered = [
        TreeHead(size=11, root=head.root, timestamp_ms=head.timestamp_ms),
        TreeHead(size=10, root=flip(head.root, 0), timestamp_ms=head.timestamp_ms),
        TreeHead(size=10, root=head.root, timestamp_ms=head.timestamp_ms + 1),
    ]
    for other in tampered:
        with pytest.raises(VerifyError, match="not signed by the hub"):
            merkle.verify_tree_head(public_raw, other, signature)
    with pytest.raises(VerifyError):
        merkle.verify_tree_head(public_raw, head, flip(signature, 3))
    with pytest.raises(VerifyError):
        merkle.verify_tree_head(public_raw, head, signature[:-1])
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(VerifyError):
        merkle.verify_tree_head(stranger, head, signature)
    with pytest.raises(VerifyError, match="not an Ed25519 public key"):
        merkle.verify_tree_head(b"short", head, signature)


def test_public_names_are_documented() -> None:
    for name in merkle.__all__:
        obj = getattr(merkle, name)
        if callable(obj):
            assert obj.__doc__, name
