"""The audit log's Merkle tree (RFC 9162 §2.1, Certificate Transparency v2),
its inclusion and consistency proofs, and signed tree heads.

Hashing (RFC 9162 §2.1.1), SHA-256 throughout:

    leaf hash  = SHA-256(0x00 || entry)
    node hash  = SHA-256(0x01 || left || right)
    MTH({})    = SHA-256("")                      (the empty tree)

Proofs are lists of 32-byte hashes, ordered from the leaf (or the older
tree's subtree) upwards, exactly as PATH (§2.1.3.1) and PROOF/SUBPROOF
(§2.1.4.1) define them; the verifiers are the algorithms of §2.1.3.2 and
§2.1.4.2 and raise `VerifyError` with the reason on every invalid proof.
A consistency proof from the empty tree is refused (it proves nothing), as
in the transparency-dev reference verifier.

`MerkleLog` is the incremental form for a log of millions of entries.  It
stores every complete subtree hash, one flat byte string per level: level L
holds nodes 0 .. (size >> L) - 1, node i covering leaves [i*2^L, (i+1)*2^L),
32 bytes each, concatenated.  Appending hashes O(1) nodes amortized; the root
of any earlier size and every proof take O(log n) hashes, because each
subtree a proof names is either stored or the fold of at most log n stored
ones.  The hub persists the levels (`level_bytes`, or the new nodes of each
append from `nodes_since`) and rebuilds with `MerkleLog.from_levels`.

Signed tree head (STH), wire format v1, 71 bytes, integers big-endian:

    b"blindmatch/v1/tree-head" (23 bytes) || size (u64) || timestamp_ms (u64) || root (32)

The hub's audit key signs that byte string with Ed25519 (RFC 8032).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from psi.errors import DeserializeError, InvalidInputError, VerifyError

__all__ = [
    "EMPTY_ROOT",
    "HASH_LENGTH",
    "TREE_HEAD_LABEL",
    "TREE_HEAD_LENGTH",
    "MerkleLog",
    "TreeHead",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "sign_tree_head",
    "verify_consistency",
    "verify_inclusion",
    "verify_tree_head",
]

HASH_LENGTH = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
TREE_HEAD_LABEL = b"blindmatch/v1/tree-head"
_TREE_HEAD_FIXED = struct.Struct(">QQ")
TREE_HEAD_LENGTH = len(TREE_HEAD_LABEL) + _TREE_HEAD_FIXED.size + HASH_LENGTH
_U64_MAX = (1 << 64) - 1
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(entry: bytes) -> bytes:
    """The hash of a log entry: SHA-256(0x00 || entry) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: SHA-256(0x01 || left || right) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split_point(n: int) -> int:
    """The largest power of two smaller than n (n >= 2): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, what: str) -> bytes:
    if len(value) != HASH_LENGTH:
        raise InvalidInputError(f"must be {HASH_LENGTH} bytes, got {len(value)}", field=what)
    return bytes(value)


# -- the incremental log -------------------------------------------------------


class MerkleLog:
    """An append-only Merkle tree that keeps every complete subtree hash
    (level L, node i covers leaves [i*2^L, (i+1)*2^L)); see the module text.

    Pure and in memory; not thread-safe (the hub serializes appends)."""

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    # construction ---------------------------------------------------------

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MerkleLog:
        """A log holding these leaf hashes, in order."""
        log = cls()
        for h in leaf_hashes:
            log.append_leaf_hash(h)
        return log

    @classmethod
    def from_levels(cls, levels: Sequence[bytes], *, verify: bool = True) -> MerkleLog:
        """Rebuild a log from its persisted levels (`level_bytes(0..height-1)`).

        The shape is always checked (level L holds exactly size >> L hashes);
        with `verify` every stored parent is also recomputed from its
        children (size hashes), so a corrupted store is refused with
        `InvalidInputError` instead of producing proofs that fail later."""
        if not levels or len(levels[0]) % HASH_LENGTH:
            raise InvalidInputError("level 0 must be a whole number of hashes", field="levels")
        size = len(levels[0]) // HASH_LENGTH
        height = max(size.bit_length(), 1)
        if len(levels) != height:
            raise InvalidInputError(
                f"a log of {size} leaves has {height} levels, got {len(levels)}", field="levels"
            )
        for level, data in enumerate(levels):
            want = (size >> level) * HASH_LENGTH
            if len(data) != want:
                raise InvalidInputError(
                    f"level {level} must hold {want} bytes for {size} leaves, got {len(data)}",
                    field="levels",
                )
        if verify:
            for level in range(1, height):
                below, here = levels[level - 1], levels[level]
                for i in range(len(here) // HASH_LENGTH):
                    left = below[2 * i * HASH_LENGTH : (2 * i + 1) * HASH_LENGTH]
                    right = below[(2 * i + 1) * HASH_LENGTH : (2 * i + 2) * HASH_LENGTH]
                    stored = here[i * HASH_LENGTH : (i + 1) * HASH_LENGTH]
                    if node_hash(bytes(left), bytes(right)) != stored:
                        raise InvalidInputError(
                            f"node {i} of level {level} is not the hash of its children",
                            field="levels",
                        )
        log = cls()
        log._levels = [bytearray(data) for data in levels]
        log._size = size
        return log

    # growth ---------------------------------------------------------------

    def append(self, entry: bytes) -> int:
        """Hash `entry` as a leaf (RFC 9162 §2.1.1), append it, return its index."""
        return self.append_leaf_hash(hashlib.sha256(_LEAF_PREFIX + entry).digest())

    def append_leaf_hash(self, leaf: bytes) -> int:
        """Append an already hashed leaf; return its index.  O(1) hashes amortized."""
        if len(leaf) != HASH_LENGTH:
            raise InvalidInputError(
                f"must be {HASH_LENGTH} bytes, got {len(leaf)}", field="leaf_hash"
            )
        index = self._size
        levels = self._levels
        levels[0] += leaf
        self._size = index + 1
        # Each odd index closes a complete subtree with its left sibling.
        node, i, level = bytes(leaf), index, 0
        while i & 1:
            start = (i - 1) * HASH_LENGTH
            node = hashlib.sha256(
                _NODE_PREFIX + levels[level][start : start + HASH_LENGTH] + node
            ).digest()
            i >>= 1
            level += 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += node
        return index

    def extend(self, entries: Iterable[bytes]) -> int:
        """Append each entry (hashed as a leaf); return the new size."""
        for entry in entries:
            self.append(entry)
        return self._size

    # reading --------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of leaves."""
        return self._size

    @property
    def height(self) -> int:
        """The number of stored levels (level 0 holds the leaf hashes)."""
        return len(self._levels)

    def __len__(self) -> int:
        return self._size

    def level_bytes(self, level: int) -> bytes:
        """The complete subtree hashes of `level`, concatenated (for persistence)."""
        if not 0 <= level < len(self._levels):
            raise InvalidInputError(f"no level {level} in a log of {self._size}", field="level")
        return bytes(self._levels[level])

    def node(self, level: int, index: int) -> bytes:
        """The stored hash of the complete subtree covering leaves
        [index * 2^level, (index + 1) * 2^level)."""
        if not (0 <= level < len(self._levels) and 0 <= index < self._size >> level):
            raise InvalidInputError(
                f"no complete subtree ({level}, {index}) in a log of {self._size}", field="index"
            )
        start = index * HASH_LENGTH
        return bytes(self._levels[level][start : start + HASH_LENGTH])

    def leaf_hash(self, index: int) -> bytes:
        """The hash of leaf `index`."""
        return self.node(0, index)

    def nodes_since(self, old_size: int) -> Iterator[tuple[int, int, bytes]]:
        """(level, index, hash) of every stored node that growing the log from
        `old_size` leaves to its current size created: what to persist."""
        if not 0 <= old_size <= self._size:
            raise InvalidInputError(
                f"must be between 0 and {self._size}, got {old_size}", field="old_size"
            )
        for level, data in enumerate(self._levels):
            for i in range(old_size >> level, self._size >> level):
                yield level, i, bytes(data[i * HASH_LENGTH : (i + 1) * HASH_LENGTH])

    def _size_or_current(self, size: int | None, field: str) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            raise InvalidInputError(
                f"must be between 0 and the log size {self._size}, got {size}", field=field
            )
        return size

    def _range_hash(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a range the RFC recursion produces: lo is a multiple
        of the smallest power of two >= hi - lo, so the range splits into
        complete stored subtrees of decreasing size, folded right to left."""
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        parts: list[bytes] = []
        pos = lo
        for level in range(n.bit_length() - 1, -1, -1):
            if n >> level & 1:
                start = (pos >> level) * HASH_LENGTH
                parts.append(bytes(self._levels[level][start : start + HASH_LENGTH]))
                pos += 1 << level
        result = parts.pop()
        while parts:
            result = hashlib.sha256(_NODE_PREFIX + parts.pop() + result).digest()
        return result

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (default: all) (RFC 9162 §2.1.1)."""
        return self._range_hash(0, self._size_or_current(size, "size"))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) (RFC 9162 §2.1.3.1), leaf level first."""
        n = self._size_or_current(size, "size")
        if not 0 <= index < n:
            raise InvalidInputError(f"leaf {index} is not in a tree of size {n}", field="index")
        proof: list[bytes] = []
        lo, hi = 0, n
        while hi - lo > 1:
            k = _split_point(hi - lo)
            if index < lo + k:
                proof.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_hash(lo, lo + k))
                lo += k
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) (RFC 9162 §2.1.4.1); empty when the
        sizes are equal.  A proof from the empty tree is meaningless and refused."""
        n = self._size_or_current(new_size, "new_size")
        if not 0 < old_size <= n:
            raise InvalidInputError(f"must be between 1 and {n}, got {old_size}", field="old_size")
        proof: list[bytes] = []
        lo, hi, m, whole = 0, n, old_size, True
        while m != hi - lo:
            k = _split_point(hi - lo)
            if m <= k:
                proof.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_hash(lo, lo + k))
                lo += k
                m -= k
                whole = False
        if not whole:
            proof.append(self._range_hash(lo, hi))
        proof.reverse()
        return proof

    def tree_head(self, timestamp_ms: int, size: int | None = None) -> TreeHead:
        """The (unsigned) tree head of the first `size` leaves (default: all)."""
        n = self._size_or_current(size, "size")
        return TreeHead(size=n, root=self.root(n), timestamp_ms=timestamp_ms)


# -- list conveniences ---------------------------------------------------------


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over these leaf hashes (RFC 9162 §2.1.1)."""
    return MerkleLog.from_leaf_hashes(leaf_hashes).root()


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) over these leaf hashes (RFC 9162 §2.1.3.1)."""
    return MerkleLog.from_leaf_hashes(leaf_hashes).inclusion_proof(index)


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) over these leaf hashes (RFC 9162 §2.1.4.1)."""
    return MerkleLog.from_leaf_hashes(leaf_hashes).consistency_proof(old_size)


# -- verification --------------------------------------------------------------


def _check_proof(proof: Sequence[bytes]) -> None:
    for i, h in enumerate(proof):
        if len(h) != HASH_LENGTH:
            raise VerifyError(f"proof element {i} is {len(h)} bytes, not {HASH_LENGTH}")


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that `leaf_hash` is the hash of leaf `index` of the tree of
    `tree_size` leaves with this root (RFC 9162 §2.1.3.2); raise `VerifyError`."""
    if not 0 <= index < tree_size:
        raise VerifyError(f"leaf index {index} is not in a tree of size {tree_size}")
    if len(leaf_hash) != HASH_LENGTH:
        raise VerifyError(f"leaf hash is {len(leaf_hash)} bytes, not {HASH_LENGTH}")
    _check_proof(proof)
    fn, sn, r = index, tree_size - 1, bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            raise VerifyError(f"inclusion proof is longer than a tree of size {tree_size} allows")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerifyError(f"inclusion proof is shorter than a tree of size {tree_size} needs")
    if not hmac.compare_digest(r, root):
        raise VerifyError(
            f"inclusion proof of leaf {index} does not lead to the root of tree size {tree_size}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of `new_size` leaves extends the tree of `old_size`
    leaves (RFC 9162 §2.1.4.2); raise `VerifyError`.

    Equal sizes need an empty proof and equal roots; a proof from the empty
    tree is refused (every tree extends it, so it proves nothing)."""
    if old_size < 0 or new_size < old_size:
        raise VerifyError(f"tree size went from {old_size} to {new_size}: a log only grows")
    if old_size == 0:
        raise VerifyError("a consistency proof from the empty tree proves nothing")
    if old_size == new_size:
        if proof:
            raise VerifyError("trees of equal size need an empty consistency proof")
        if not hmac.compare_digest(old_root, new_root):
            raise VerifyError(f"two different roots for the same tree size {old_size}")
        return
    if not proof:
        raise VerifyError(f"empty consistency proof from size {old_size} to {new_size}")
    _check_proof(proof)
    path = list(proof)
    # Step 2: a power-of-two old tree is itself a node of the new one.
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerifyError(
                f"consistency proof is longer than sizes {old_size} -> {new_size} allow"
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerifyError(f"consistency proof is shorter than sizes {old_size} -> {new_size} need")
    if not hmac.compare_digest(fr, old_root):
        raise VerifyError(f"consistency proof does not lead to the old root (size {old_size})")
    if not hmac.compare_digest(sr, new_root):
        raise VerifyError(f"consistency proof does not lead to the new root (size {new_size})")


# -- signed tree heads ---------------------------------------------------------


@dataclass(frozen=True)
class TreeHead:
    """A tree head (cf. RFC 9162 §4.9-4.10, without log id or extensions):
    size, root and the hub's timestamp in Unix milliseconds.  `encode()` is
    the signed v1 wire format."""

    size: int
    root: bytes
    timestamp_ms: int

    def __post_init__(self) -> None:
        if not 0 <= self.size <= _U64_MAX:
            raise InvalidInputError("must fit in an unsigned 64-bit integer", field="size")
        if not 0 <= self.timestamp_ms <= _U64_MAX:
            raise InvalidInputError("must fit in an unsigned 64-bit integer", field="timestamp_ms")
        _check_hash(self.root, "root")

    def encode(self) -> bytes:
        """b"blindmatch/v1/tree-head" || size (u64 BE) || timestamp_ms (u64 BE) || root."""
        return TREE_HEAD_LABEL + _TREE_HEAD_FIXED.pack(self.size, self.timestamp_ms) + self.root

    @classmethod
    def decode(cls, data: bytes) -> TreeHead:
        """Parse `encode()`'s output; raise `DeserializeError` on anything else."""
        if len(data) != TREE_HEAD_LENGTH or not data.startswith(TREE_HEAD_LABEL):
            raise DeserializeError(
                f"not a v1 tree head: want {TREE_HEAD_LENGTH} bytes starting with "
                f"{TREE_HEAD_LABEL!r}"
            )
        body = data[len(TREE_HEAD_LABEL) :]
        size, timestamp_ms = _TREE_HEAD_FIXED.unpack(body[: _TREE_HEAD_FIXED.size])
        return cls(size=size, root=bytes(body[_TREE_HEAD_FIXED.size :]), timestamp_ms=timestamp_ms)


def sign_tree_head(key: Ed25519PrivateKey, head: TreeHead) -> bytes:
    """The hub's Ed25519 signature (RFC 8032, 64 bytes) over `head.encode()`."""
    return key.sign(head.encode())


def verify_tree_head(
    public_key: bytes | Ed25519PublicKey, head: TreeHead, signature: bytes
) -> None:
    """Check the hub's signature on a tree head; raise `VerifyError`."""
    if isinstance(public_key, Ed25519PublicKey):
        key = public_key
    else:
        try:
            key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:
            raise VerifyError(
                f"the audit key is not an Ed25519 public key ({len(public_key)} bytes)"
            ) from None
    try:
        key.verify(signature, head.encode())
    except InvalidSignature:
        raise VerifyError(
            f"tree head of size {head.size} (timestamp {head.timestamp_ms}) "
            "is not signed by the hub's audit key"
        ) from None
