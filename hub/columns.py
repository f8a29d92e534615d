"""Keys in columns: many tags, handles and key types as three packed arrays.

An enrollment carries millions of keys and a bulk match a million tags.  As
one Python object per key, the hub spent more time building, validating and
taking apart those objects than SQLite spent storing them.  In columns, a
batch is validated with a few array operations and reaches the database as
it arrived; only the keys that need individual attention (hits, standing
matches) are ever unpacked.

The wire form is `blindmatch.v1.TaggedKeyColumns` / `QueryTagColumns`; the
types here are the validated, immutable counterparts.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from hub.locator import packed_prefixes
from hub.policy import (
    HANDLE_LENGTH,
    KEY_TYPE_CODES,
    TAG_LENGTH,
    QueryTag,
    TaggedKey,
    key_type_from_code,
)
from psi.errors import InvalidInputError

__all__ = [
    "KeyColumns",
    "QueryColumns",
    "concat",
    "key_columns",
    "make_key_columns",
    "make_query_columns",
    "query_columns",
    "split",
]

_TYPES = {code: key_type for key_type, code in KEY_TYPE_CODES.items()}
_CODES = np.zeros(256, dtype=bool)
_CODES[list(_TYPES)] = True
# Batches of at most this many tags are searched without arrays.
_FEW = 16


def split(packed: bytes, width: int) -> list[bytes]:
    """The `width`-byte values packed in `packed`, as separate bytes objects."""
    # A void dtype keeps trailing zero bytes (an "S" dtype would strip them).
    return np.frombuffer(packed, dtype=f"V{width}").tolist()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class KeyColumns:
    """`len(self)` enrolled keys: `tags` and `handles` concatenate 16-byte
    values, `codes` holds one key-type code byte per key (the numbers of
    `KEY_TYPE_CODES`).  Build with `make_key_columns` or `key_columns`."""

    tags: bytes
    handles: bytes
    codes: bytes

    def __len__(self) -> int:
        return len(self.codes)

    def keys(self) -> list[TaggedKey]:
        """One `TaggedKey` per key, in order."""
        types = _TYPES
        return [
            TaggedKey(tag, handle, types[code])
            for tag, handle, code in zip(
                split(self.tags, TAG_LENGTH),
                split(self.handles, HANDLE_LENGTH),
                self.codes,
                strict=True,
            )
        ]

    def digest_input(self) -> bytes:
        """tag || handle || key-type byte of every key, in order (what the
        enrollment digest covers), built without a loop over the keys."""
        n = len(self)
        rows = np.empty((n, TAG_LENGTH + HANDLE_LENGTH + 1), dtype=np.uint8)
        rows[:, :TAG_LENGTH] = np.frombuffer(self.tags, dtype=np.uint8).reshape(n, TAG_LENGTH)
        rows[:, TAG_LENGTH:-1] = np.frombuffer(self.handles, dtype=np.uint8).reshape(
            n, HANDLE_LENGTH
        )
        rows[:, -1] = np.frombuffer(self.codes, dtype=np.uint8)
        return rows.tobytes()

    def sorted_by_tag(self) -> KeyColumns:
        """The same keys ordered by tag (bytewise, as SQLite and PostgreSQL
        order blobs); keys with one tag keep their order."""
        order = np.argsort(np.frombuffer(self.tags, dtype=f"S{TAG_LENGTH}"), kind="stable")
        return KeyColumns(
            tags=np.frombuffer(self.tags, dtype=f"V{TAG_LENGTH}")[order].tobytes(),
            handles=np.frombuffer(self.handles, dtype=f"V{HANDLE_LENGTH}")[order].tobytes(),
            codes=np.frombuffer(self.codes, dtype=np.uint8)[order].tobytes(),
        )


@dataclass(frozen=True)
class QueryColumns:
    """`len(self)` tags to look up: `tags` concatenates 16-byte tags, `codes`
    holds one key-type code byte per tag."""

    tags: bytes
    codes: bytes

    def __len__(self) -> int:
        return len(self.codes)

    def tag_list(self) -> list[bytes]:
        """The tags, as separate bytes objects."""
        return split(self.tags, TAG_LENGTH)

    def tag_at(self, position: int) -> bytes:
        """The tag at `position`."""
        return self.tags[position * TAG_LENGTH : (position + 1) * TAG_LENGTH]

    def positions_of(self, wanted: Collection[bytes]) -> list[int]:
        """The positions, ascending, of the tags that are in `wanted`: found
        by an array search of 64-bit prefixes, so a batch of 10,000 tags with
        a few hundred wanted costs no Python loop over the 10,000."""
        if not wanted or not self.tags:
            return []
        if len(self) <= _FEW:  # arrays of a few elements cost more than a loop
            return [i for i, tag in enumerate(self.tag_list()) if tag in wanted]
        here = packed_prefixes(self.tags, TAG_LENGTH)
        joined = b"".join(t for t in wanted if len(t) == TAG_LENGTH)
        sought = np.unique(packed_prefixes(joined, TAG_LENGTH))
        if not sought.shape[0]:
            return []
        at = np.minimum(np.searchsorted(sought, here), sought.shape[0] - 1)
        return [
            i
            for i in np.flatnonzero(sought[at] == here).tolist()
            if self.tag_at(i) in wanted  # two tags may share a prefix
        ]


def concat(parts: Sequence[KeyColumns]) -> KeyColumns:
    """The keys of `parts`, in order, as one `KeyColumns`."""
    if len(parts) == 1:
        return parts[0]
    return KeyColumns(
        tags=b"".join(p.tags for p in parts),
        handles=b"".join(p.handles for p in parts),
        codes=b"".join(p.codes for p in parts),
    )


def _codes(key_types: Sequence[int], count: int, *, field: str) -> bytes:
    if len(key_types) != count:
        raise InvalidInputError(
            f"has {len(key_types)} entries for {count} tags; give one key type per tag",
            field=f"{field}.key_types",
        )
    codes = np.asarray(key_types, dtype=np.int64)
    known = (codes >= 0) & (codes < 256)
    known[known] = _CODES[codes[known]]
    bad = np.flatnonzero(~known)
    if bad.size:
        i = int(bad[0])
        key_type_from_code(int(codes[i]), field=f"{field}.key_types[{i}]")  # raises
    return codes.astype(np.uint8).tobytes()


def _count(packed: bytes, width: int, *, field: str) -> int:
    if len(packed) % width:
        raise InvalidInputError(
            f"is {len(packed)} bytes, not a whole number of {width}-byte values",
            field=field,
        )
    return len(packed) // width


def make_key_columns(
    tags: bytes, handles: bytes, key_types: Sequence[int], *, field: str
) -> KeyColumns:
    """Validated `KeyColumns` from the wire's three columns; an error names
    the column and, where it can, the key (e.g. "batch 3: columns.key_types[7]")."""
    count = _count(tags, TAG_LENGTH, field=f"{field}.tags")
    if _count(handles, HANDLE_LENGTH, field=f"{field}.handles") != count:
        raise InvalidInputError(
            f"holds {len(handles) // HANDLE_LENGTH} handles for {count} tags; "
            "give one handle per tag",
            field=f"{field}.handles",
        )
    return KeyColumns(bytes(tags), bytes(handles), _codes(key_types, count, field=field))


def make_query_columns(tags: bytes, key_types: Sequence[int], *, field: str) -> QueryColumns:
    """Validated `QueryColumns` from the wire's two columns."""
    count = _count(tags, TAG_LENGTH, field=f"{field}.tags")
    return QueryColumns(bytes(tags), _codes(key_types, count, field=field))


def key_columns(keys: Sequence[TaggedKey] | KeyColumns) -> KeyColumns:
    """`keys` in columns (already validated `TaggedKey`s, or columns as they are)."""
    if isinstance(keys, KeyColumns):
        return keys
    codes = KEY_TYPE_CODES
    return KeyColumns(
        tags=b"".join(k.tag for k in keys),
        handles=b"".join(k.handle for k in keys),
        codes=bytes(codes[k.key_type] for k in keys),
    )


def query_columns(tags: Sequence[QueryTag] | QueryColumns) -> QueryColumns:
    """`tags` in columns (already validated `QueryTag`s, or columns as they are)."""
    if isinstance(tags, QueryColumns):
        return tags
    codes = KEY_TYPE_CODES
    return QueryColumns(
        tags=b"".join(t.tag for t in tags), codes=bytes(codes[t.key_type] for t in tags)
    )
