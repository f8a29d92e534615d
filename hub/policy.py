"""The hub's pure domain: small immutable types, validation of what a bureau
sends, the key-type table and what a dataset's policy lets the hub reveal.

No I/O here: the store and the gRPC service are shells around these names.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from hub.errors import LimitExceededError, PermissionDeniedError
from psi.errors import InvalidInputError
from psi.identifiers import KeyType, Strength

__all__ = [
    "HANDLE_LENGTH",
    "KEY_TYPE_CODES",
    "MAX_CATEGORY_LENGTH",
    "MAX_NAME_LENGTH",
    "TAG_LENGTH",
    "DatasetInfo",
    "DatasetPolicy",
    "EnrollResult",
    "EnrollSpec",
    "Hit",
    "HubStats",
    "KeyDigest",
    "MatchAnswer",
    "Notice",
    "QueryResult",
    "QueryTag",
    "Revealed",
    "TaggedKey",
    "UpdateResult",
    "answer",
    "check_category",
    "check_dataset_name",
    "check_epoch",
    "check_request_size",
    "digest_of",
    "key_type_from_code",
    "make_query_tag",
    "make_tagged_key",
    "resolve_dataset",
    "reveal",
]

TAG_LENGTH = 16
HANDLE_LENGTH = 16
MAX_NAME_LENGTH = 100
MAX_CATEGORY_LENGTH = 100

# Key types travel as small integers: on the wire (the numbers of the
# `blindmatch.v1.KeyType` enum), in the enrollment digest (one byte) and on
# disk.  One table keeps the three the same; a test pins it to the proto.
KEY_TYPE_CODES: Mapping[KeyType, int] = {
    KeyType.PASSPORT: 1,
    KeyType.IDCARD: 2,
    KeyType.PERSON: 3,
    KeyType.PERSON_PHONETIC: 4,
    KeyType.PHONE: 5,
    KeyType.EMAIL: 6,
    KeyType.IBAN: 7,
    KeyType.VIN: 8,
}
_KEY_TYPES_BY_CODE: Mapping[int, KeyType] = {code: kt for kt, code in KEY_TYPE_CODES.items()}
_CODE_BYTE: Mapping[KeyType, bytes] = {kt: bytes([code]) for kt, code in KEY_TYPE_CODES.items()}


def key_type_from_code(code: int, *, field: str = "key_type") -> KeyType:
    """The key type of a wire or disk code; 0 (unspecified) and unknown codes are refused."""
    try:
        return _KEY_TYPES_BY_CODE[code]
    except KeyError:
        known = ", ".join(f"{c} ({kt.value})" for c, kt in sorted(_KEY_TYPES_BY_CODE.items()))
        what = "is unspecified" if code == 0 else f"{code} is not a known key type"
        raise InvalidInputError(f"{what}; use one of {known}", field=field) from None


# -- what the caller sends ----------------------------------------------------


# Named tuples rather than dataclasses: an enrollment makes millions of
# these, and a tuple is built in a third of the time.
class TaggedKey(NamedTuple):
    """One enrolled key: a 16-byte tag, the owner's 16-byte handle, its type."""

    tag: bytes
    handle: bytes
    key_type: KeyType

    @property
    def digest_input(self) -> bytes:
        """tag || handle || key type (one byte), what the enrollment digest covers."""
        return self.tag + self.handle + _CODE_BYTE[self.key_type]


class QueryTag(NamedTuple):
    """A tag to look up, with its key type."""

    tag: bytes
    key_type: KeyType


def _check_length(value: bytes, length: int, field: str) -> bytes:
    if len(value) != length:
        raise InvalidInputError(f"must be exactly {length} bytes, got {len(value)}", field=field)
    return bytes(value)


def make_tagged_key(tag: bytes, handle: bytes, key_type: int, *, field: str) -> TaggedKey:
    """A validated `TaggedKey`; errors name `field` (e.g. "batch 3: keys[7]")."""
    return TaggedKey(
        tag=_check_length(tag, TAG_LENGTH, f"{field}.tag"),
        handle=_check_length(handle, HANDLE_LENGTH, f"{field}.handle"),
        key_type=key_type_from_code(key_type, field=f"{field}.key_type"),
    )


def make_tagged_keys(keys: Iterable[tuple[bytes, bytes, int]], *, field: str) -> list[TaggedKey]:
    """`make_tagged_key` of each (tag, handle, key type code); an error
    names the item, e.g. "batch 3: keys[7].handle"."""
    types = _KEY_TYPES_BY_CODE
    made = []
    for i, (tag, handle, code) in enumerate(keys):
        key_type = types.get(code)
        if key_type is None or len(tag) != TAG_LENGTH or len(handle) != HANDLE_LENGTH:
            made.append(make_tagged_key(tag, handle, code, field=f"{field}[{i}]"))  # raises
            continue
        made.append(TaggedKey(bytes(tag), bytes(handle), key_type))
    return made


def make_query_tags(tags: Iterable[tuple[bytes, int]], *, field: str) -> list[QueryTag]:
    """`make_query_tag` of each (tag, key type code); an error names the item."""
    types = _KEY_TYPES_BY_CODE
    made = []
    for i, (tag, code) in enumerate(tags):
        key_type = types.get(code)
        if key_type is None or len(tag) != TAG_LENGTH:
            made.append(make_query_tag(tag, code, field=f"{field}[{i}]"))  # raises
            continue
        made.append(QueryTag(bytes(tag), key_type))
    return made


def make_query_tag(tag: bytes, key_type: int, *, field: str) -> QueryTag:
    """A validated `QueryTag`; errors name `field` (e.g. "tags[12]")."""
    return QueryTag(
        tag=_check_length(tag, TAG_LENGTH, f"{field}.tag"),
        key_type=key_type_from_code(key_type, field=f"{field}.key_type"),
    )


def check_request_size(count: int, limit: int, *, field: str) -> None:
    """Refuse more than `limit` items in one message, naming the limit."""
    if count > limit:
        raise LimitExceededError(
            f"{count} items in one request; the hub accepts at most {limit} "
            "(max_tags_per_request); split them into smaller batches",
            field=field,
        )


def check_epoch(epoch: int) -> int:
    """Key epochs are numbered from 1; 0 means the caller forgot to set it."""
    if epoch < 1:
        raise InvalidInputError(
            "must be set to the key epoch the tags were made under", field="epoch"
        )
    return epoch


def _check_text(value: str, limit: int, field: str, *, allow_empty: bool) -> str:
    if not value and not allow_empty:
        raise InvalidInputError("must not be empty", field=field)
    if len(value) > limit:
        raise InvalidInputError(f"is {len(value)} characters; at most {limit} allowed", field=field)
    if not value.isprintable() or value != value.strip():
        raise InvalidInputError(
            "must be printable, without leading or trailing spaces", field=field
        )
    return value


def check_dataset_name(name: str) -> str:
    """A dataset name: 1-100 printable characters without "/" (which separates
    an owner from a name, as in "FRA/watchlist")."""
    _check_text(name, MAX_NAME_LENGTH, "dataset", allow_empty=False)
    if "/" in name:
        raise InvalidInputError('must not contain "/" except after the owner code', field="dataset")
    return name


def check_category(category: str) -> str:
    """A dataset category (e.g. "stolen-passports"): up to 100 printable characters."""
    return _check_text(category, MAX_CATEGORY_LENGTH, "category", allow_empty=True)


def resolve_dataset(caller: str, reference: str) -> str:
    """The caller's own dataset name from "name" or "OWNER/name".

    A bureau acts only on its own datasets: naming another bureau's
    ("DEU/watchlist" from FRA) is refused whether or not it exists, so the
    answer reveals nothing about other bureaus' datasets.
    """
    owner, slash, name = reference.partition("/")
    if not slash:
        return check_dataset_name(reference)
    if owner != caller:
        raise PermissionDeniedError(
            f"dataset {reference!r} belongs to {owner!r}, not to {caller}; "
            "a bureau can only enroll, update and list its own datasets"
        )
    return check_dataset_name(name)


class KeyDigest:
    """The running count and SHA-256 of an enrollment stream (tag || handle ||
    key-type byte of every key, in order), checked against the trailer."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0

    def update(self, keys: Iterable[TaggedKey]) -> None:
        """Account for the next keys of the stream."""
        code = _CODE_BYTE
        chunk = [b"".join((k.tag, k.handle, code[k.key_type])) for k in keys]
        self._hash.update(b"".join(chunk))
        self.count += len(chunk)

    def update_packed(self, digest_input: bytes, count: int) -> None:
        """Account for the next `count` keys, given their tag || handle ||
        key-type byte concatenated (`hub.columns.KeyColumns.digest_input`)."""
        self._hash.update(digest_input)
        self.count += count

    def digest(self) -> bytes:
        """The SHA-256 of the keys so far."""
        return self._hash.digest()

    def verify(self, tag_count: int, digest: bytes) -> None:
        """Raise `InvalidInputError` unless the trailer matches what arrived."""
        if tag_count != self.count:
            raise InvalidInputError(
                f"the trailer announces {tag_count} keys but {self.count} arrived; "
                "nothing was committed, enroll again",
                field="trailer.tag_count",
            )
        if not hmac.compare_digest(digest, self.digest()):
            raise InvalidInputError(
                "SHA-256 over tag || handle || key type of the keys that arrived differs "
                "from the trailer's; nothing was committed, enroll again",
                field="trailer.digest",
            )


def digest_of(keys: Iterable[TaggedKey]) -> bytes:
    """The trailer digest for `keys` (what a client sends)."""
    running = KeyDigest()
    running.update(keys)
    return running.digest()


# -- datasets and policy ------------------------------------------------------


@dataclass(frozen=True)
class DatasetPolicy:
    """What the hub may reveal about a dataset, set by its owner at enrollment."""

    reveal_owner: bool = False
    reveal_category: bool = False
    linkable: bool = False


@dataclass(frozen=True)
class EnrollSpec:
    """The header of an enrollment: which dataset, under which epoch and policy."""

    name: str
    epoch: int
    policy: DatasetPolicy
    category: str = ""
    replace: bool = False


@dataclass(frozen=True)
class Revealed:
    """What a policy lets the hub say about a dataset; None means "not revealed"."""

    owner: str | None
    category: str | None


def reveal(policy: DatasetPolicy, owner: str, category: str) -> Revealed:
    """Mask a dataset's owner and category by its policy (an empty category
    stays unrevealed: there is nothing to say)."""
    return Revealed(
        owner=owner if policy.reveal_owner else None,
        category=category if policy.reveal_category and category else None,
    )


class Hit(NamedTuple):
    """An unmasked lookup hit as the store records it; never sent as is.
    (A tuple: a bulk match makes tens of thousands.)"""

    query_index: int
    match_id: str
    key_type: KeyType
    owner: str
    category: str
    policy: DatasetPolicy


@dataclass(frozen=True)
class MatchAnswer:
    """A hit as the requester may see it."""

    query_index: int
    match_id: str
    key_type: KeyType
    strength: Strength
    category: str | None
    owner: str | None


def answer(hit: Hit) -> MatchAnswer:
    """The answer for a hit: its type and strength, and only what the owning
    dataset's policy reveals.  The dataset's name is never revealed."""
    shown = reveal(hit.policy, hit.owner, hit.category)
    return MatchAnswer(
        query_index=hit.query_index,
        match_id=hit.match_id,
        key_type=hit.key_type,
        strength=hit.key_type.strength,
        category=shown.category,
        owner=shown.owner,
    )


@dataclass(frozen=True)
class QueryResult:
    """Hits of one lookup, how many datasets were searched, and the audit
    leaf that recorded the lookup."""

    hits: tuple[Hit, ...]
    datasets_searched: int
    audit_index: int


@dataclass(frozen=True)
class Notice:
    """A standing-match notice for one owner, already masked by the other
    dataset's policy (as it was when the match was made)."""

    sequence: int
    match_id: str
    dataset: str
    handle: bytes
    key_type: KeyType
    other_owner: str | None
    other_category: str | None
    created_ms: int

    @property
    def strength(self) -> Strength:
        """EXACT or CANDIDATE, by key type."""
        return self.key_type.strength


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset as its owner sees it."""

    name: str
    owner: str
    epoch: int
    version: int
    tag_count: int
    policy: DatasetPolicy
    category: str
    updated_ms: int


@dataclass(frozen=True)
class EnrollResult:
    """The outcome of a committed enrollment; `audit_index` is its audit leaf."""

    dataset: str
    version: int
    tag_count: int
    new_notices: int
    audit_index: int


@dataclass(frozen=True)
class UpdateResult:
    """The outcome of a committed update; `audit_index` is its removal leaf
    (followed, when the update added keys, by an enrollment leaf for them)."""

    dataset: str
    version: int
    added: int
    removed: int
    tag_count: int
    new_notices: int
    audit_index: int


@dataclass(frozen=True)
class HubStats:
    """Totals over the live versions of every dataset."""

    datasets: int
    tags: int
    epochs: tuple[int, ...]
