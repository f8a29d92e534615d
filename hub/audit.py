"""The hub's audit log, apart from its storage: the in-memory Merkle tree
shared by the writer thread and the readers, the checks of what a reader may
ask for, and signed tree heads.

Every state change the hub makes (an enrollment, an update, a query, a
standing match, a disclosure request or decision) appends `psi.audit`
entries in the same database transaction as the change itself; the store
appends them to its `AuditTree` right after that transaction commits, on the
writer thread, so the tree never holds a leaf the database lost, and the
database never holds a leaf the tree will not get (the tree is rebuilt from
the stored leaves at startup).  Entries name bureaus, dataset names, counts,
random ids and digests, never an identifier, tag or handle.  Even so, a
bureau reads in full only the entries of its own actions (`readable_by`):
the rest would tell it other bureaus' dataset names and sizes, query
volumes, and owners that their policy hides.  Everyone gets every leaf
hash, which is all that inclusion and consistency proofs need.

Tree heads are signed lazily: the first reader of a new size gets a head
signed with the hub's clock, later readers of the same size the same head.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.errors import FailedPreconditionError, LimitExceededError
from psi.audit import EntryKind, decode_entry
from psi.errors import DeserializeError, InvalidInputError
from psi.merkle import MerkleLog, TreeHead, leaf_hash, sign_tree_head

__all__ = [
    "MAX_ENTRIES_PER_CALL",
    "AuditTree",
    "SignedTreeHead",
    "TreeHeadSigner",
    "check_consistency_sizes",
    "check_entries_range",
    "check_inclusion_args",
    "readable_by",
]

MAX_ENTRIES_PER_CALL = 1000


def check_entries_range(start: int, end: int, size: int) -> None:
    """Entries [start, end) of a log of `size` leaves, at most 1,000 at a time."""
    if end > size:
        raise InvalidInputError(f"is {end}, beyond the log size {size}", field="end")
    if start > end:
        raise InvalidInputError(f"is {start}, after end {end}", field="start")
    if end - start > MAX_ENTRIES_PER_CALL:
        raise LimitExceededError(
            f"asks for {end - start} entries; at most {MAX_ENTRIES_PER_CALL} per call, "
            "read the log in pages",
            field="end",
        )


def check_inclusion_args(leaf_index: int, tree_size: int, size: int) -> None:
    """An inclusion proof of `leaf_index` in a tree of `tree_size` <= `size` leaves."""
    if not 1 <= tree_size <= size:
        raise InvalidInputError(
            f"must be between 1 and the log size {size}, got {tree_size}", field="tree_size"
        )
    if leaf_index >= tree_size:
        raise InvalidInputError(
            f"is {leaf_index}, not a leaf of a tree of size {tree_size}", field="leaf_index"
        )


def check_consistency_sizes(old_size: int, new_size: int, size: int) -> None:
    """A consistency proof between 1 <= `old_size` <= `new_size` <= `size`."""
    if new_size > size:
        raise InvalidInputError(f"is {new_size}, beyond the log size {size}", field="new_size")
    if not 1 <= old_size <= new_size:
        raise InvalidInputError(
            f"must be between 1 and new_size {new_size}, got {old_size} (a proof from the "
            "empty tree proves nothing)",
            field="old_size",
        )


# Which field of an entry names the bureau whose action it records.
_ACTOR = {
    EntryKind.ENROLLMENT: "bureau",
    EntryKind.REMOVAL: "bureau",
    EntryKind.QUOTA_REFUSAL: "bureau",
    EntryKind.QUERY: "requester",
    EntryKind.DISCLOSURE_REQUEST: "requester",
    EntryKind.DISCLOSURE_DECISION: "owner",
}


def readable_by(entry: bytes, caller: str) -> bool:
    """True when `caller` may read `entry` in full: it names `caller` as the
    bureau that acted.  Standing-match entries name two bureaus whose
    policies may hide each from the other, so nobody reads them."""
    try:
        decoded = decode_entry(entry)
    except DeserializeError:
        return False
    actor = _ACTOR.get(decoded.kind)
    return actor is not None and decoded[actor] == caller


class AuditTree:
    """A `psi.merkle.MerkleLog` behind a lock: the store's writer thread
    appends committed leaves, the event loop reads roots and proofs."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._log = MerkleLog.from_leaf_hashes(leaf_hashes)
        self._lock = threading.Lock()

    @classmethod
    def from_entries(cls, entries: Iterable[bytes]) -> AuditTree:
        """The tree over these entries, in leaf order (a store's startup)."""
        return cls(leaf_hash(e) for e in entries)

    @property
    def size(self) -> int:
        """The number of committed leaves."""
        with self._lock:
            return self._log.size

    def extend(self, entries: Sequence[bytes], *, first_index: int) -> None:
        """Append committed entries whose first leaf index is `first_index`."""
        with self._lock:
            if first_index != self._log.size:
                raise AssertionError(
                    f"audit leaf {first_index} committed, but the tree has {self._log.size}"
                )
            for entry in entries:
                self._log.append(entry)

    def head(self) -> tuple[int, bytes]:
        """(size, root) of the whole tree, read together."""
        with self._lock:
            return self._log.size, self._log.root()

    def root(self, size: int) -> bytes:
        """The root of the first `size` leaves."""
        with self._lock:
            return self._log.root(size)

    def inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        """RFC 9162 §2.1.3.1 PATH; arguments checked against the current size."""
        with self._lock:
            check_inclusion_args(leaf_index, tree_size, self._log.size)
            return self._log.inclusion_proof(leaf_index, tree_size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 §2.1.4.1 PROOF; arguments checked against the current size."""
        with self._lock:
            check_consistency_sizes(old_size, new_size, self._log.size)
            return self._log.consistency_proof(old_size, new_size)


@dataclass(frozen=True)
class SignedTreeHead:
    """A tree head and the hub's Ed25519 signature over `head.encode()`."""

    head: TreeHead
    signature: bytes


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class TreeHeadSigner:
    """Signs tree heads with the hub's audit key, once per size.

    Timestamps never go backwards, even if the hub's clock does."""

    def __init__(
        self, key: Ed25519PrivateKey | None, *, clock: Callable[[], int] = _now_ms
    ) -> None:
        self._key = key
        self._clock = clock
        self._latest: SignedTreeHead | None = None
        self._lock = threading.Lock()

    def sign(self, size: int, root: bytes) -> SignedTreeHead:
        """The signed head for the tree of `size` leaves with this root."""
        if self._key is None:
            raise FailedPreconditionError(
                "this hub has no audit signing key (audit_key in its configuration, by default "
                "audit-signing.key beside tls.crt); its tree heads cannot be verified"
            )
        with self._lock:
            latest = self._latest
            if latest is not None and latest.head.size == size and latest.head.root == root:
                return latest
            timestamp = self._clock()
            if latest is not None:
                timestamp = max(timestamp, latest.head.timestamp_ms)
            head = TreeHead(size=size, root=root, timestamp_ms=timestamp)
            signed = SignedTreeHead(head, sign_tree_head(self._key, head))
            if latest is None or size >= latest.head.size:
                self._latest = signed
            return signed
