"""The SQL store's logic, shared by SQLite (`hub.store`) and PostgreSQL
(`hub.store_pg`): the transactions that implement the dataset-version,
standing-match, audit and disclosure rules stated in `hub.store`, and
`SqlStore`, the `HubStore` built on them.

SQL here is the subset both databases speak (SQLite >= 3.35, PostgreSQL
>= 13): `?` placeholders, `INSERT ... ON CONFLICT`, `RETURNING`, upserts
that name the target table in their expressions.  Where the two differ the
difference is a method of `Db`, the connection inside one transaction that
each store hands to these functions, and is spelled out there.

Each function here runs inside one transaction that the store opened.
Those that take a `_Written` run as *serialized* writes: at most one at a
time across every hub process sharing the database (SQLite: one writer;
PostgreSQL: a transaction-scoped advisory lock), and they alone append
audit leaves.  `_stage` of a dataset that is not linkable may run
unserialized (`Db.lock_staging` keeps its generation from being dropped
meanwhile).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import functools
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from hub.audit import AuditTree, check_entries_range
from hub.columns import KeyColumns, QueryColumns, concat, key_columns, query_columns
from hub.disclosure import (
    Case,
    Direction,
    DisclosurePage,
    Event,
    Receipt,
    Status,
    Ticket,
    check_decision,
    denied_for,
    next_status,
    role_of,
)
from hub.errors import (
    AlreadyExistsError,
    ConcurrentEnrollmentError,
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
)
from hub.match_ids import KEY_LENGTH, MatchIds
from hub.policy import (
    KEY_TYPE_CODES,
    DatasetInfo,
    DatasetPolicy,
    EnrollResult,
    EnrollSpec,
    Hit,
    HubStats,
    KeyDigest,
    Notice,
    QueryResult,
    QueryTag,
    TaggedKey,
    UpdateResult,
    digest_of,
    key_type_from_code,
    reveal,
)
from psi.audit import EntryKind, encode_entry
from psi.disclosure import DisclosureDecision, DisclosureRequest, Outcome

__all__ = [
    "Db",
    "MatchIdsOf",
    "PlacedRow",
    "Rows",
    "SqlEnrollment",
    "SqlStore",
    "TagRow",
    "place_rows",
]

log = logging.getLogger("blindmatch.hub.store")

T = TypeVar("T")

# (tag, dataset_id, gen, handle, key_type, added, removed_at): a row of
# `tags` as read, with its tombstone's removed_at (None without one).
TagRow = tuple[bytes, int, int, bytes, int, int, int | None]
# (position in a lookup's tags, the row of the tag at that position).
PlacedRow = tuple[int, TagRow]


def insert_statements(
    table: str, columns: Sequence[str], rows: Sequence[Sequence[object]], per_statement: int
) -> Iterator[tuple[str, list[object]]]:
    """`rows` as multi-row `INSERT INTO table (columns) VALUES (?, ...), ...`
    statements of at most `per_statement` rows each, with their flattened
    arguments (`Db.insert`; table and columns are the caller's constants)."""
    row = "(" + ", ".join("?" * len(columns)) + ")"
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        yield head + ", ".join([row] * len(chunk)), [v for r in chunk for v in r]


class Rows(Protocol):
    """What `Db.execute` returns: a DB-API cursor over the statement's result."""

    @property
    def rowcount(self) -> int:
        """Rows changed by an INSERT, UPDATE or DELETE."""
        ...

    def fetchone(self) -> Any:
        """The next row, or None."""
        ...

    def fetchall(self) -> list[Any]:
        """The remaining rows."""
        ...

    def __iter__(self) -> Iterator[Any]:
        """The remaining rows, one at a time."""
        ...


class Db(Protocol):
    """One connection inside one transaction, in the SQL both databases speak.

    The methods beyond `execute` and `executemany` are where SQLite and
    PostgreSQL differ in how (not what) they do it."""

    def execute(self, sql: str, args: Sequence[object] = ()) -> Rows:
        """Run one statement with `?` placeholders."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> int:
        """Run one statement per row of arguments; the total rows changed."""
        ...

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """INSERT `rows` into `table`.  SQLite: multi-row statements
        (`insert_statements`; `executemany` costs a step per row, and the
        writer thread gives up and retakes the GIL at each, waiting for the
        event loop); PostgreSQL: one multi-row statement for a few rows, COPY
        for more."""
        ...

    def tag_rows(self, tags: Sequence[bytes]) -> list[TagRow]:
        """Every row of `tags` whose tag is one of `tags` (any dataset,
        generation or key type) with its tombstone, if any, ordered by (tag,
        dataset_id, gen, handle).  SQLite: one index probe per (dataset,
        generation) that its `hub.locator` names for a tag; PostgreSQL: one
        `= ANY(array)` query."""
        ...

    def query_rows(self, tags: QueryColumns) -> list[PlacedRow]:
        """`tag_rows` of a lookup's tags, each with the position of its tag
        (the rows of a tag asked twice come twice), ordered by (position,
        dataset_id, gen, handle).  SQLite: the locator's candidates already
        carry positions; PostgreSQL: `place_rows`."""
        ...

    def note_tags(self, dataset_id: int, gen: int, tags: Sequence[bytes]) -> None:
        """Called before rows with these tags are written by a statement of
        the shared SQL (`insert_staged` notes its own).  SQLite: adds them
        to the locator; PostgreSQL: nothing."""
        ...

    def sweep_slice(self, after: int | None) -> tuple[str, tuple[object, ...], int] | None:
        """The next slice of `tags` for one sweep transaction, after the one
        `after` named (None: the first): (a condition on `tags` with `?`
        placeholders, its arguments, this slice's name), or None when done.
        SQLite: one dataset; PostgreSQL: 1/256 of the tag range."""
        ...

    def insert_staged(self, dataset_id: int, gen: int, keys: KeyColumns) -> int:
        """Insert a row (added = 0) for each key of (dataset_id, gen), sorted
        by tag, ignoring any already there; how many were new.  SQLite:
        INSERT OR IGNORE; PostgreSQL: a binary COPY, falling back to an INSERT
        ... ON CONFLICT DO NOTHING from a temporary table on a duplicate."""
        ...

    def lock_staging(self, dataset_id: int) -> int | None:
        """The staging generation of `dataset_id` (None when it stages none),
        kept from being dropped or made live until this transaction ends.
        SQLite: a plain read (writes are serialized); PostgreSQL: FOR SHARE."""
        ...

    @property
    def match_ids(self) -> MatchIds:
        """The store's permutation between match sequence numbers and ids
        (`hub.match_ids`), loaded when the store opened."""
        ...


class MatchIdsOf:
    """The `Db.match_ids` both stores' `Db` classes share."""

    def __init__(self, match_ids: MatchIds | None) -> None:
        self._match_ids = match_ids

    @property
    def match_ids(self) -> MatchIds:
        if self._match_ids is None:
            raise StorageError("the hub's match-id key is not loaded yet")
        return self._match_ids


# Keys per write transaction while staging: small enough that other
# bureaus' writes interleave (about 0.1 s each), large enough to amortize
# the commit.
_CHUNK = 20_000

# Queries of at most this many tags are looked up with `_read_small`.
_SMALL_QUERY = 16
# Group commit under load: a group that starts within _GATHER_AFTER_SECONDS of
# the last one waits _GATHER_SECONDS for more queries first (like
# PostgreSQL's commit_delay).  An idle hub answers at once.
_GATHER_AFTER_SECONDS = 0.002
_GATHER_UP_TO = 8
_GATHER_SECONDS = 0.0005

_REVEAL_OWNER, _REVEAL_CATEGORY, _LINKABLE = 1, 2, 4
_QUERY_MATCH, _STANDING_MATCH = 0, 1


def _flags(policy: DatasetPolicy) -> int:
    return (
        (_REVEAL_OWNER if policy.reveal_owner else 0)
        | (_REVEAL_CATEGORY if policy.reveal_category else 0)
        | (_LINKABLE if policy.linkable else 0)
    )


@functools.lru_cache(maxsize=8)  # 3 flag bits; the policy is immutable
def _policy(flags: int) -> DatasetPolicy:
    return DatasetPolicy(
        reveal_owner=bool(flags & _REVEAL_OWNER),
        reveal_category=bool(flags & _REVEAL_CATEGORY),
        linkable=bool(flags & _LINKABLE),
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_MATCH_ID_KEY = "match_ids"


def load_match_ids(db: Db) -> MatchIds:
    """The store's match-id key (made, once, by the first hub to open the
    database), as the permutation it keys."""
    db.execute(
        "INSERT INTO hub_secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        (_MATCH_ID_KEY, secrets.token_bytes(KEY_LENGTH)),
    )
    (key,) = db.execute("SELECT value FROM hub_secrets WHERE name = ?", (_MATCH_ID_KEY,)).fetchone()
    return MatchIds(bytes(key))


def _new_match_ids(db: Db, count: int) -> list[tuple[int, bytes]]:
    """(sequence number, id) for the next `count` matches.  Only serialized
    writes make matches (they also append audit leaves), so the numbers
    after the largest stored one are free."""
    if count == 0:  # most queries: no statement at all
        return []
    (last,) = db.execute("SELECT coalesce(max(seq), 0) FROM matches").fetchone()
    seqs = range(int(last) + 1, int(last) + 1 + count)
    return list(zip(seqs, db.match_ids.ids(seqs), strict=True))


_MATCH_COLUMNS = (
    "kind, requester, requester_dataset_id, requester_handle, owner, dataset_id, handle, "
    "key_type, tag"
)


def _match_row(db: Db, match_id: bytes) -> Any:
    """The stored match `match_id` names (`_MATCH_COLUMNS`), or None: found by
    the sequence number it encrypts, or, for an id made before ids were
    encrypted, through `legacy_match_ids`."""
    seq = db.match_ids.seq_of(match_id)
    if seq is not None:
        row = db.execute(
            f"SELECT {_MATCH_COLUMNS} FROM matches WHERE seq = ? AND match_id = ?",  # noqa: S608
            (seq, match_id),
        ).fetchone()
        if row is not None:
            return row
    return db.execute(
        f"SELECT {_MATCH_COLUMNS} FROM legacy_match_ids l JOIN matches USING (seq) "  # noqa: S608
        "WHERE l.match_id = ?",
        (match_id,),
    ).fetchone()


@dataclass(frozen=True)
class _Staging:
    gen: int
    epoch: int
    flags: int
    category: str
    started_ms: int


@dataclass(frozen=True)
class _Dataset:
    id: int
    owner: str
    name: str
    version: int
    gen: int
    epoch: int
    flags: int
    category: str
    tag_count: int
    updated_ms: int
    staging: _Staging | None

    @property
    def live(self) -> bool:
        return self.version >= 1

    @property
    def policy(self) -> DatasetPolicy:
        return _policy(self.flags)

    @property
    def label(self) -> str:
        return f"{self.owner}/{self.name}"

    def linkable_gens(self, epoch: int) -> set[int]:
        """Generations whose rows may form standing matches under `epoch`."""
        gens = set()
        if self.live and self.flags & _LINKABLE and self.epoch == epoch:
            gens.add(self.gen)
        s = self.staging
        if s is not None and s.flags & _LINKABLE and s.epoch == epoch:
            gens.add(s.gen)
        return gens


_DATASET_COLUMNS = (
    "d.id, d.owner, d.name, d.version, d.gen, d.epoch, d.flags, d.category, d.tag_count, "
    "d.updated_ms, s.gen, s.epoch, s.flags, s.category, s.started_ms"
)


def _dataset_from_row(row: Sequence[Any]) -> _Dataset:
    staging = None
    if row[10] is not None:
        staging = _Staging(row[10], row[11], row[12], row[13], row[14])
    return _Dataset(
        id=row[0],
        owner=row[1],
        name=row[2],
        version=row[3],
        gen=row[4],
        epoch=row[5],
        flags=row[6],
        category=row[7],
        tag_count=row[8],
        updated_ms=row[9],
        staging=staging,
    )


def _load_datasets(db: Db, where: str = "", args: Sequence[object] = ()) -> list[_Dataset]:
    rows = db.execute(
        f"SELECT {_DATASET_COLUMNS} FROM datasets d LEFT JOIN staging s ON s.dataset_id = d.id "  # noqa: S608 - fixed SQL fragments only
        f"{where}",
        tuple(args),
    ).fetchall()
    return [_dataset_from_row(r) for r in rows]


def _find_dataset(db: Db, owner: str, name: str) -> _Dataset | None:
    found = _load_datasets(db, "WHERE d.owner = ? AND d.name = ?", (owner, name))
    return found[0] if found else None


def _row_visible(db: Db, tag: bytes, dataset_id: int, gen: int, handle: bytes) -> bool:
    row = db.execute(
        "SELECT added FROM tags WHERE tag = ? AND dataset_id = ? AND gen = ? AND handle = ?",
        (tag, dataset_id, gen, handle),
    ).fetchone()
    return row is not None and not _tombstoned(db, dataset_id, gen, handle, row[0])


def _hidden(added: int, removed_at: int | None) -> bool:
    """Whether a tombstone (removed_at) hides a row added at `added`."""
    return removed_at is not None and removed_at > added


def _tombstoned(db: Db, dataset_id: int, gen: int, handle: bytes, added: int) -> bool:
    row = db.execute(
        "SELECT removed_at FROM removed WHERE dataset_id = ? AND gen = ? AND handle = ?",
        (dataset_id, gen, handle),
    ).fetchone()
    return row is not None and row[0] > added


class _NameState(enum.Enum):
    ABSENT = "absent"
    LIVE = "live"
    STAGING = "staging"


class _Admit(enum.Enum):
    CREATE = "create"
    STAGE = "stage"
    EXISTS = "exists"
    BUSY = "busy"


# What an Enroll header does, by the state of the name and `replace`.
_ON_ENROLL_HEADER: Mapping[tuple[_NameState, bool], _Admit] = {
    (_NameState.ABSENT, False): _Admit.CREATE,
    (_NameState.ABSENT, True): _Admit.CREATE,
    (_NameState.LIVE, False): _Admit.EXISTS,
    (_NameState.LIVE, True): _Admit.STAGE,
    (_NameState.STAGING, False): _Admit.BUSY,
    (_NameState.STAGING, True): _Admit.BUSY,
}


@dataclass
class _Written:
    """What a write transaction did, for after its COMMIT: the audit entries
    it appended (from leaf `audit_base` on; -1 in an unserialized write,
    which may append none), and what to tell the event loop (published from
    the writer thread right after COMMIT, so that a caller cancelled
    meanwhile cannot lose a wake-up)."""

    audit_base: int
    audit: list[bytes] = field(default_factory=list)
    notices: dict[str, int] = field(default_factory=dict)  # recipient -> last sequence
    cases: dict[str, int] = field(default_factory=dict)  # bureau -> last case sequence
    garbage: bool = False
    new_matches: int = 0
    pending_changed: bool = False
    next_expiry_ms: int | None = None  # of pending cases, when pending_changed
    live_changed: bool = False  # the live datasets changed (see `_LiveCache.changed`)

    @property
    def publishes(self) -> bool:
        return self.garbage or bool(self.notices) or bool(self.cases) or self.pending_changed


class _Wakeups:
    """The latest sequence per recipient and the futures waiting for a later one."""

    def __init__(self) -> None:
        self.latest: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._interrupted = False

    def publish(self, recipient: str, sequence: int) -> None:
        self.latest[recipient] = max(self.latest.get(recipient, 0), sequence)
        for waiter in self._waiters.get(recipient, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, recipient: str, after: int) -> bool:
        loop = asyncio.get_running_loop()
        while not self._interrupted and self.latest.get(recipient, 0) <= after:
            waiter: asyncio.Future[None] = loop.create_future()
            waiters = self._waiters.setdefault(recipient, set())
            waiters.add(waiter)
            try:
                await waiter
            finally:
                waiters.discard(waiter)
                if not waiters:
                    self._waiters.pop(recipient, None)
        return not self._interrupted

    def interrupt(self) -> None:
        self._interrupted = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


# The longest the expiry task sleeps without looking at the clock again.
_MAX_EXPIRY_SLEEP = 3600.0


# -- write transactions ---------------------------------------------------------------


def _mark_garbage(db: Db, written: _Written) -> None:
    """Persist "a sweep is needed" (it survives a crash) and wake the sweeper."""
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('sweep_needed', 1) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    )
    written.garbage = True


def _drop_staging(db: Db, written: _Written, dataset_id: int, gen: int) -> bool:
    deleted = db.execute(
        "DELETE FROM staging WHERE dataset_id = ? AND gen = ?", (dataset_id, gen)
    ).rowcount
    if not deleted:
        return False
    _drop_candidates(db, dataset_id, gen)
    # A dataset that never went live disappears with its first enrollment.
    db.execute("DELETE FROM datasets WHERE id = ? AND version = 0", (dataset_id,))
    _mark_garbage(db, written)
    return True


def _drop_candidates(db: Db, dataset_id: int, gen: int) -> None:
    rows = db.execute(
        "SELECT handle, tag, other_dataset_id, other_gen, other_handle FROM link_candidates "
        "WHERE dataset_id = ? AND gen = ?",
        (dataset_id, gen),
    ).fetchall()
    db.executemany(
        "DELETE FROM link_candidates WHERE dataset_id = ? AND gen = ? AND handle = ? AND tag = ? "
        "AND other_dataset_id = ? AND other_gen = ? AND other_handle = ?",
        [(o, og, oh, tag, dataset_id, gen, h) for h, tag, o, og, oh in rows],
    )
    db.execute("DELETE FROM link_candidates WHERE dataset_id = ? AND gen = ?", (dataset_id, gen))


def _begin(db: Db, owner: str, spec: EnrollSpec) -> tuple[int, int]:
    found = _find_dataset(db, owner, spec.name)
    if found is None:
        state = _NameState.ABSENT
    elif found.staging is not None:
        state = _NameState.STAGING
    else:
        state = _NameState.LIVE if found.live else _NameState.ABSENT
    label = f"{owner}/{spec.name}"
    admit = _ON_ENROLL_HEADER[(state, spec.replace)]
    if admit is _Admit.EXISTS:
        raise AlreadyExistsError(
            f"dataset {label} already exists; enroll with replace to replace it "
            "atomically, or send an update"
        )
    if admit is _Admit.BUSY:
        raise ConcurrentEnrollmentError(
            f"an enrollment of {label} is already in progress; wait for it to finish "
            "(or cancel it) and retry"
        )
    now = _now_ms()
    if found is None:
        (dataset_id,) = db.execute(
            "INSERT INTO datasets (owner, name, version, gen, last_gen, epoch, flags, category, "
            "tag_count, updated_ms) VALUES (?, ?, 0, 0, 0, ?, ?, ?, 0, ?) RETURNING id",
            (owner, spec.name, spec.epoch, _flags(spec.policy), spec.category, now),
        ).fetchone()
    else:
        dataset_id = found.id
    (gen,) = db.execute(
        "UPDATE datasets SET last_gen = last_gen + 1 WHERE id = ? RETURNING last_gen",
        (dataset_id,),
    ).fetchone()
    db.execute(
        "INSERT INTO staging (dataset_id, gen, epoch, flags, category, started_ms) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (dataset_id, gen, spec.epoch, _flags(spec.policy), spec.category, now),
    )
    return dataset_id, gen


def _check_staging(db: Db, owner: str, spec: EnrollSpec, dataset_id: int, gen: int) -> None:
    if db.lock_staging(dataset_id) != gen:
        raise FailedPreconditionError(
            f"the enrollment of {owner}/{spec.name} was aborted (the hub restarted?); enroll again"
        )


def _stage(
    db: Db,
    owner: str,
    spec: EnrollSpec,
    dataset_id: int,
    gen: int,
    keys: KeyColumns,
) -> int:
    _check_staging(db, owner, spec, dataset_id, gen)
    # Sorted by tag, the inserts walk the B-tree in order (fewer page visits).
    # The sort is stable and a row already there is kept, so of two keys with
    # one (tag, handle) the first sent wins.
    stored = db.insert_staged(dataset_id, gen, keys.sorted_by_tag())
    if spec.policy.linkable:
        _probe(db, owner, dataset_id, gen, spec.epoch, keys.keys())
    return stored


def place_rows(tags: QueryColumns, rows: Iterable[TagRow]) -> list[PlacedRow]:
    """`Db.query_rows` from `Db.tag_rows` of the same tags."""
    by_tag = _group_by_tag(rows)
    return [
        (position, row)
        for position in tags.positions_of(by_tag.keys())
        for row in by_tag[tags.tag_at(position)]
    ]


def _group_by_tag(rows: Iterable[TagRow]) -> dict[bytes, list[TagRow]]:
    grouped: dict[bytes, list[TagRow]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row)
    return grouped


def _probe(
    db: Db,
    owner: str,
    dataset_id: int,
    gen: int,
    epoch: int,
    keys: Sequence[TaggedKey],
) -> None:
    """Record a candidate for each equality between `keys` (just written) and
    rows of other bureaus' linkable datasets of `epoch`, live or staging."""
    targets = {
        d.id: gens
        for d in _load_datasets(db)
        if d.owner != owner and (gens := d.linkable_gens(epoch))
    }
    if not targets:
        return
    found = []
    by_tag = _group_by_tag(db.tag_rows([k.tag for k in keys]))
    for key in keys:
        code = KEY_TYPE_CODES[key.key_type]
        for _, other_id, other_gen, other_handle, other_code, _, _ in by_tag.get(key.tag, ()):
            if other_code == code and other_gen in targets.get(other_id, ()):
                found.append(
                    (dataset_id, gen, key.handle, key.tag, other_id, other_gen, other_handle, code)
                )
                found.append(
                    (other_id, other_gen, other_handle, key.tag, dataset_id, gen, key.handle, code)
                )
    db.executemany(
        "INSERT INTO link_candidates (dataset_id, gen, handle, tag, other_dataset_id, "
        "other_gen, other_handle, key_type) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        found,
    )


def _go_live(
    db: Db,
    written: _Written,
    owner: str,
    spec: EnrollSpec,
    dataset_id: int,
    gen: int,
    stored: int,
    sent: int,
    digest: bytes,
) -> EnrollResult:
    """Make the staged generation live; its audit leaf records the keys as
    sent (`sent`, SHA-256 `digest`), before any standing match it creates."""
    _check_staging(db, owner, spec, dataset_id, gen)
    (old_version,) = db.execute(
        "SELECT version FROM datasets WHERE id = ?", (dataset_id,)
    ).fetchone()
    db.execute(
        "UPDATE datasets SET version = version + 1, gen = ?, epoch = ?, flags = ?, category = ?, "
        "tag_count = ?, updated_ms = ? WHERE id = ?",
        (gen, spec.epoch, _flags(spec.policy), spec.category, stored, _now_ms(), dataset_id),
    )
    db.execute("DELETE FROM staging WHERE dataset_id = ?", (dataset_id,))
    db.execute("DELETE FROM removed WHERE dataset_id = ? AND gen < ?", (dataset_id, gen))
    _bump_live_version(db, written)
    if old_version >= 1:
        _mark_garbage(db, written)
    index = _audit(
        db,
        written,
        encode_entry(
            EntryKind.ENROLLMENT,
            time_ms=_now_ms(),
            bureau=owner,
            dataset=spec.name,
            version=old_version + 1,
            count=sent,
            digest=digest,
        ),
    )
    _settle_candidates(db, dataset_id, written)
    return EnrollResult(
        dataset=spec.name,
        version=old_version + 1,
        tag_count=stored,
        new_notices=written.new_matches,
        audit_index=index,
    )


def _update(
    db: Db,
    written: _Written,
    owner: str,
    name: str,
    epoch: int,
    add: Sequence[TaggedKey],
    remove_handles: Sequence[bytes],
) -> UpdateResult:
    d = _find_dataset(db, owner, name)
    if d is not None and d.staging is not None:
        raise ConcurrentEnrollmentError(
            f"an enrollment of {d.label} is in progress; update it after that enrollment ends"
        )
    if d is None or not d.live:
        raise NotFoundError(f"you have no dataset named {name!r}; enroll it first")
    if epoch != d.epoch:
        raise FailedPreconditionError(
            f"dataset {d.label} holds tags of epoch {d.epoch} but this update is for epoch "
            f"{epoch}; re-enroll the dataset with replace to move it to epoch {epoch}"
        )
    version = d.version + 1
    removed = 0
    for handle in dict.fromkeys(remove_handles):
        before = db.execute(
            "SELECT removed_at FROM removed WHERE dataset_id = ? AND gen = ? AND handle = ?",
            (d.id, d.gen, handle),
        ).fetchone()
        db.execute(
            "INSERT INTO removed (dataset_id, gen, handle, removed_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (dataset_id, gen, handle) DO UPDATE SET removed_at = excluded.removed_at",
            (d.id, d.gen, handle, version),
        )
        removed += before is None
    if remove_handles:
        _mark_garbage(db, written)
    # The rows of this generation already on disk for the keys to add:
    # (tag, handle) -> (added, removed_at), kept current as this loop writes.
    on_disk: dict[tuple[bytes, bytes], tuple[int, int | None]] = {
        (tag, handle): (at, removed_at)
        for tag, dataset_id, gen, handle, _, at, removed_at in db.tag_rows([k.tag for k in add])
        if dataset_id == d.id and gen == d.gen
    }
    added: list[TaggedKey] = []
    new_rows: list[tuple[bytes, int, int, bytes, int, int]] = []
    for key in dict.fromkeys(add):
        code = KEY_TYPE_CODES[key.key_type]
        row = on_disk.get((key.tag, key.handle))
        if row is None:
            new_rows.append((key.tag, d.id, d.gen, key.handle, code, version))
        elif _hidden(*row):
            # The row is still on disk (and still counted): make it visible again.
            db.execute(
                "UPDATE tags SET added = ?, key_type = ? WHERE tag = ? AND dataset_id = ? "
                "AND gen = ? AND handle = ?",
                (version, code, key.tag, d.id, d.gen, key.handle),
            )
        else:
            continue
        on_disk[(key.tag, key.handle)] = (version, None)
        added.append(key)
    db.note_tags(d.id, d.gen, [row[0] for row in new_rows])
    db.executemany(
        "INSERT INTO tags (tag, dataset_id, gen, handle, key_type, added) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        new_rows,
    )
    tag_count = d.tag_count + len(new_rows)
    now = _now_ms()
    db.execute(
        "UPDATE datasets SET version = ?, tag_count = ?, updated_ms = ? WHERE id = ?",
        (version, tag_count, now, d.id),
    )
    _bump_live_version(db, written)
    # Counts as the agent sent them: handles named, keys in order.
    index = _audit(
        db,
        written,
        encode_entry(
            EntryKind.REMOVAL,
            time_ms=now,
            bureau=owner,
            dataset=name,
            version=version,
            count=len(dict.fromkeys(remove_handles)),
        ),
    )
    if add:
        _audit(
            db,
            written,
            encode_entry(
                EntryKind.ENROLLMENT,
                time_ms=now,
                bureau=owner,
                dataset=name,
                version=version,
                count=len(add),
                digest=digest_of(add),
            ),
        )
    if d.policy.linkable and added:
        _probe(db, owner, d.id, d.gen, d.epoch, added)
        _settle_candidates(db, d.id, written)
    return UpdateResult(
        dataset=name,
        version=version,
        added=len(added),
        removed=removed,
        tag_count=tag_count,
        new_notices=written.new_matches,
        audit_index=index,
    )


def _settle_candidates(db: Db, dataset_id: int, written: _Written) -> None:
    """Turn the candidates of a dataset whose version just went live into
    matches and notices (see the module docstring)."""
    rows = db.execute(
        "SELECT gen, handle, tag, other_dataset_id, other_gen, other_handle, key_type "
        "FROM link_candidates WHERE dataset_id = ?",
        (dataset_id,),
    ).fetchall()
    if not rows:
        return
    datasets = {d.id: d for d in _load_datasets(db)}
    me = datasets[dataset_id]
    for gen, handle, tag, other_id, other_gen, other_handle, code in rows:
        other = datasets.get(other_id)
        if other is not None and other.staging is not None and other.staging.gen == other_gen:
            continue  # settled when the other side goes live (or dropped if it aborts)
        db.execute(
            "DELETE FROM link_candidates WHERE (dataset_id = ? AND gen = ? AND handle = ? "
            "AND tag = ? AND other_dataset_id = ? AND other_gen = ? AND other_handle = ?) "
            "OR (dataset_id = ? AND gen = ? AND handle = ? AND tag = ? AND other_dataset_id = ? "
            "AND other_gen = ? AND other_handle = ?)",
            (dataset_id, gen, handle, tag, other_id, other_gen, other_handle,
             other_id, other_gen, other_handle, tag, dataset_id, gen, handle),
        )  # fmt: skip
        if (
            other is None
            or gen != me.gen
            or other_gen != other.gen
            or not other.live
            or other.owner == me.owner
            or other.epoch != me.epoch
            or not (me.flags & other.flags & _LINKABLE)
            or not _row_visible(db, tag, dataset_id, gen, handle)
            or not _row_visible(db, tag, other_id, other_gen, other_handle)
        ):
            continue
        side_a, side_b = sorted([(dataset_id, handle), (other_id, other_handle)])
        ((seq, match_id),) = _new_match_ids(db, 1)
        if not db.execute(
            "INSERT INTO links (a_dataset_id, a_handle, b_dataset_id, b_handle, match_id) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (*side_a, *side_b, match_id),
        ).rowcount:
            continue  # this pair of records was notified before
        now = _now_ms()
        db.execute(
            "INSERT INTO matches (seq, match_id, kind, requester, requester_dataset_id, "
            "requester_handle, owner, dataset_id, handle, key_type, created_ms, tag) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, match_id, _STANDING_MATCH, me.owner, dataset_id, handle, other.owner, other_id,
             other_handle, code, now, tag),
        )  # fmt: skip
        _audit(
            db,
            written,
            encode_entry(
                EntryKind.STANDING_MATCH,
                time_ms=now,
                match_id=match_id,
                bureau=me.owner,
                other=other.owner,
            ),
        )
        for mine, my_handle, theirs in ((me, handle, other), (other, other_handle, me)):
            shown = reveal(theirs.policy, theirs.owner, theirs.category)
            (sequence,) = db.execute(
                "INSERT INTO bureaus (code, last_sequence) VALUES (?, 1) ON CONFLICT (code) "
                "DO UPDATE SET last_sequence = bureaus.last_sequence + 1 RETURNING last_sequence",
                (mine.owner,),
            ).fetchone()
            db.execute(
                "INSERT INTO notices (recipient, sequence, match_id, dataset_id, handle, key_type, "
                "other_owner, other_category, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (mine.owner, sequence, match_id, mine.id, my_handle, code, shown.owner,
                 shown.category, now),
            )  # fmt: skip
            written.notices[mine.owner] = sequence
        written.new_matches += 1


def _recover(db: Db, written: _Written) -> int:
    """Abort every staging generation (a store's startup: no stream survives it)."""
    stagings = db.execute("SELECT dataset_id, gen FROM staging").fetchall()
    for dataset_id, gen in stagings:
        _drop_staging(db, written, dataset_id, gen)
    return len(stagings)


def _take_sweep_flag(db: Db, written: _Written) -> bool:
    row = db.execute("SELECT value FROM meta WHERE key = 'sweep_needed'").fetchone()
    db.execute("DELETE FROM meta WHERE key = 'sweep_needed'")
    return row is not None and row[0] != 0


def _sweep_slice(db: Db, written: _Written, *, after: int | None) -> tuple[int, int | None]:
    """Delete the garbage of one slice of `tags`; (rows deleted, the slice's
    name, None once every slice is done)."""
    found = db.sweep_slice(after)
    if found is None:
        return 0, None
    where, args, name = found
    # Hidden rows of live generations are still counted in tag_count.
    for dataset_id, count in db.execute(
        "SELECT tags.dataset_id, count(*) FROM tags "  # noqa: S608 (`where`: the store's SQL)
        "JOIN datasets d ON d.id = tags.dataset_id AND d.gen = tags.gen "
        "JOIN removed r ON r.dataset_id = tags.dataset_id AND r.gen = tags.gen "
        f"AND r.handle = tags.handle WHERE {where} AND r.removed_at > tags.added "
        "GROUP BY tags.dataset_id",
        args,
    ).fetchall():
        db.execute(
            "UPDATE datasets SET tag_count = tag_count - ? WHERE id = ?", (count, dataset_id)
        )
    deleted = db.execute(
        f"DELETE FROM tags WHERE {where} AND ("  # noqa: S608 (`where`: the store's SQL)
        " (NOT EXISTS (SELECT 1 FROM datasets d WHERE d.id = tags.dataset_id AND d.gen = tags.gen)"
        "  AND NOT EXISTS (SELECT 1 FROM staging s"
        "                  WHERE s.dataset_id = tags.dataset_id AND s.gen = tags.gen))"
        " OR EXISTS (SELECT 1 FROM removed r WHERE r.dataset_id = tags.dataset_id"
        "            AND r.gen = tags.gen AND r.handle = tags.handle"
        "            AND r.removed_at > tags.added))",
        args,
    ).rowcount
    return deleted, name


# -- lookups (reader snapshot, then the writer) ----------------------------------


class _RawHit(NamedTuple):  # a tuple: one per hit, tens of thousands in a bulk match
    query_index: int
    dataset: _Dataset  # as the lookup's snapshot saw it
    handle: bytes
    key_type: int
    tag: bytes


@dataclass(frozen=True)
class _LiveDatasets:
    """Every live dataset by epoch, as of one value of the `live_version`
    counter (`_go_live` bumps it in the transaction that changes what a
    lookup searches)."""

    version: int
    by_epoch: Mapping[int, tuple[_Dataset, ...]]
    owned: Mapping[tuple[int, str], int]  # (epoch, owner) -> live datasets

    @classmethod
    def of(cls, version: int, datasets: Iterable[_Dataset]) -> _LiveDatasets:
        by_epoch: dict[int, list[_Dataset]] = {}
        owned: dict[tuple[int, str], int] = {}
        for d in datasets:
            by_epoch.setdefault(d.epoch, []).append(d)
            owned[d.epoch, d.owner] = owned.get((d.epoch, d.owner), 0) + 1
        return cls(version, {e: tuple(ds) for e, ds in by_epoch.items()}, owned)

    def searched(self, requester: str, epoch: int, include_own: bool) -> int:
        """How many datasets a lookup searches (`_searched`, counted)."""
        own = 0 if include_own else self.owned.get((epoch, requester), 0)
        return len(self.by_epoch.get(epoch, ())) - own


def _live_version(db: Db) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'live_version'").fetchone()
    return 0 if row is None else int(row[0])


def _bump_live_version(db: Db, written: _Written) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('live_version', 1) "
        "ON CONFLICT (key) DO UPDATE SET value = meta.value + 1"
    )
    written.live_changed = True


class _LiveCache:
    """The live datasets, reloaded only when `live_version` has moved; read
    from any thread (the snapshot is replaced whole).

    A store through which every write of its database passes (SQLite: one
    hub process per file) calls `changed` after each COMMIT that moved the
    version; `settled` then answers, without reading the database, until the
    next such COMMIT.  A store shared by several processes (PostgreSQL) never
    calls `changed` and must not use `settled`."""

    def __init__(self) -> None:
        self._current = _LiveDatasets(-1, {}, {})
        self._changes = 0  # incremented by the one writer thread only
        self._loaded: tuple[int, _LiveDatasets] | None = None  # (changes then, datasets)

    def changed(self) -> None:
        """A COMMIT (already done) moved the live version."""
        self._changes += 1

    @property
    def current(self) -> _LiveDatasets:
        """The live datasets as last loaded (version -1: none yet)."""
        return self._current

    def settled(self) -> _LiveDatasets | None:
        """The live datasets, if loaded since the last `changed`."""
        loaded = self._loaded
        return loaded[1] if loaded is not None and loaded[0] == self._changes else None

    def get(self, db: Db) -> _LiveDatasets:
        # Read before the snapshot's first read: a COMMIT this snapshot may
        # not see calls `changed` after this, so what is loaded is not settled.
        changes = self._changes
        version = _live_version(db)
        current = self._current
        if current.version != version:
            current = _LiveDatasets.of(version, _load_datasets(db, "WHERE d.version >= 1"))
            self._current = current
        self._loaded = (changes, current)
        return current


def _searched(
    live: _LiveDatasets, requester: str, epoch: int, include_own: bool
) -> dict[int, _Dataset]:
    """The datasets a lookup searches, by id."""
    return {d.id: d for d in live.by_epoch.get(epoch, ()) if include_own or d.owner != requester}


def _lookup(
    db: Db,
    live: _LiveCache,
    requester: str,
    epoch: int,
    tags: QueryColumns,
    include_own: bool,
) -> tuple[list[_RawHit], int]:
    searched = _searched(live.get(db), requester, epoch, include_own)
    if not searched:
        return [], 0
    return _hits(searched, tags, db.query_rows(tags)), len(searched)


def _hits(
    searched: Mapping[int, _Dataset], tags: QueryColumns, placed: Iterable[PlacedRow]
) -> list[_RawHit]:
    """The rows (`Db.query_rows` of `tags`, from the snapshot that `searched`
    comes from) that are hits: a searched dataset's live generation, the
    asked key type, not removed."""
    hits: list[_RawHit] = []
    codes = tags.codes
    for index, (tag, dataset_id, gen, handle, row_code, added, removed_at) in placed:
        d = searched.get(dataset_id)
        code = codes[index]
        if row_code != code or d is None or gen != d.gen or _hidden(added, removed_at):
            continue
        hits.append(_RawHit(index, d, handle, code, tag))
    return hits


@dataclass(frozen=True)
class _QueryRecord:
    requester: str
    tag_count: int
    raw: Sequence[_RawHit]


def _record_queries(
    db: Db, written: _Written, *, records: Sequence[_QueryRecord]
) -> list[tuple[list[Hit], int]]:
    """Record each query's hits as matches with fresh ids, and one audit leaf
    per query: one statement for all the matches and one for all the leaves
    (a group commit's queries cost two round trips on PostgreSQL, not two each)."""
    now = _now_ms()
    ids = iter(_new_match_ids(db, sum(len(r.raw) for r in records)))
    rows = []
    answers = []
    entries = []
    for record in records:
        hits = []
        for r, (seq, match_id) in zip(record.raw, ids, strict=False):
            d = r.dataset
            rows.append(
                (seq, match_id, _QUERY_MATCH, record.requester, d.owner, d.id, r.handle, r.key_type,
                 now, r.tag)
            )  # fmt: skip
            hits.append(
                Hit(
                    query_index=r.query_index,
                    match_id=match_id.hex(),
                    key_type=key_type_from_code(r.key_type),
                    owner=d.owner,
                    category=d.category,
                    policy=d.policy,
                )
            )
        answers.append(hits)
        entries.append(
            encode_entry(
                EntryKind.QUERY,
                time_ms=now,
                requester=record.requester,
                tags=record.tag_count,
                hits=len(record.raw),
            )
        )
    db.insert(
        "matches",
        ("seq", "match_id", "kind", "requester", "owner", "dataset_id", "handle", "key_type",
         "created_ms", "tag"),
        rows,
    )  # fmt: skip
    indices = _audit_many(db, written, entries)
    return list(zip(answers, indices, strict=True))


# -- the audit log -------------------------------------------------------------------


def _audit(db: Db, written: _Written, entry: bytes) -> int:
    """Append an audit leaf in the current transaction; its index."""
    (index,) = _audit_many(db, written, [entry])
    return index


def _audit_many(db: Db, written: _Written, entries: Sequence[bytes]) -> list[int]:
    """Append audit leaves in the current transaction, in one statement; their indices."""
    if written.audit_base < 0:
        raise AssertionError("an audit leaf can only be appended by a serialized write")
    first = written.audit_base + len(written.audit)
    indices = list(range(first, first + len(entries)))
    db.insert("audit_leaves", ("idx", "entry"), list(zip(indices, entries, strict=True)))
    written.audit.extend(entries)
    return indices


# -- disclosure cases -------------------------------------------------------------

_CASE_COLUMNS = (
    "c.request_id, c.match_id, c.requester, c.owner, coalesce(d.name, ''), c.handle, "
    "c.key_type, coalesce(d.flags, 0), c.request, c.request_signature, c.status, "
    "c.record_removed, c.decision, c.decision_signature, c.sealed, c.created_ms, c.expires_ms, "
    "c.request_audit_index, c.decision_audit_index, c.requester_sequence, c.owner_sequence"
)


def _case_from_row(row: Sequence[Any]) -> Case:
    return Case(
        request_id=row[0],
        match_id=row[1],
        requester=row[2],
        owner=row[3],
        dataset=row[4],
        handle=row[5],
        key_type=key_type_from_code(row[6]),
        reveal_owner=bool(row[7] & _REVEAL_OWNER),
        request=row[8],
        request_signature=row[9],
        status=Status(row[10]),
        record_removed=bool(row[11]),
        decision=row[12] or b"",
        decision_signature=row[13] or b"",
        sealed=row[14] or b"",
        created_ms=row[15],
        expires_ms=row[16],
        request_audit_index=row[17],
        decision_audit_index=row[18],
        requester_sequence=row[19],
        owner_sequence=row[20],
    )


def _load_cases(db: Db, where: str, args: Sequence[object]) -> list[Case]:
    rows = db.execute(
        f"SELECT {_CASE_COLUMNS} FROM disclosures c LEFT JOIN datasets d ON d.id = c.dataset_id "  # noqa: S608 - fixed SQL fragments only
        f"{where}",
        tuple(args),
    ).fetchall()
    return [_case_from_row(r) for r in rows]


def _load_case(db: Db, request_id: bytes) -> Case | None:
    found = _load_cases(db, "WHERE c.request_id = ?", (request_id,))
    return found[0] if found else None


def _list_cases(
    db: Db, caller: str, direction: Direction, after: int, limit: int
) -> DisclosurePage:
    row = db.execute(
        "SELECT last_sequence FROM disclosure_sequences WHERE code = ?", (caller,)
    ).fetchone()
    last = row[0] if row else 0
    cases: list[tuple[int, Case]] = []
    if direction in (Direction.BOTH, Direction.OUTGOING):
        cases += (
            (c.requester_sequence, c)
            for c in _load_cases(
                db,
                "WHERE c.requester = ? AND c.requester_sequence > ? "
                "ORDER BY c.requester_sequence LIMIT ?",
                (caller, after, limit),
            )
        )
    if direction in (Direction.BOTH, Direction.INCOMING):
        cases += (
            (c.owner_sequence, c)
            for c in _load_cases(
                db,
                "WHERE c.owner = ? AND c.owner_sequence > ? ORDER BY c.owner_sequence LIMIT ?",
                (caller, after, limit),
            )
        )
    cases.sort(key=lambda pair: pair[0])
    page = cases[:limit]
    # A full page may have more after it; otherwise every change up to
    # `last` that this listing covers is in it.
    resume = page[-1][0] if len(page) == limit else max(last, after)
    return DisclosurePage(cases=tuple(c for _, c in page), resume_after=resume)


def _next_expiry(db: Db) -> int | None:
    (due,) = db.execute("SELECT min(expires_ms) FROM disclosures WHERE status = ?", (
        Status.PENDING,
    )).fetchone()  # fmt: skip
    return int(due) if due is not None else None


def _pending_changed(db: Db, written: _Written) -> None:
    written.pending_changed = True
    written.next_expiry_ms = _next_expiry(db)


def _case_sequence(db: Db, written: _Written, code: str) -> int:
    (sequence,) = db.execute(
        "INSERT INTO disclosure_sequences (code, last_sequence) VALUES (?, 1) ON CONFLICT (code) "
        "DO UPDATE SET last_sequence = disclosure_sequences.last_sequence + 1 "
        "RETURNING last_sequence",
        (code,),
    ).fetchone()
    written.cases[code] = sequence
    return int(sequence)


def _owner_side(row: Sequence[Any] | None, requester: str) -> tuple[str, int, bytes] | None:
    """(owner, dataset id, handle) of the record `requester` may ask about
    under this match, or None when the match was not reported to it."""
    if row is None:
        return None
    kind, by, by_dataset, by_handle, owner, dataset_id, handle = row[:7]
    if requester == by:
        return owner, dataset_id, handle
    if kind == _STANDING_MATCH and requester == owner:
        return by, by_dataset, by_handle
    return None


def _still_matches(db: Db, dataset_id: int, handle: bytes, tag: bytes | None) -> bool:
    """Whether the matched key of record `handle` is still live in its dataset."""
    found = _load_datasets(db, "WHERE d.id = ?", (dataset_id,))
    if not found or not found[0].live:
        return False
    d = found[0]
    if tag is None:  # a match made before schema 2: only a tombstone can tell
        return (
            db.execute(
                "SELECT 1 FROM removed WHERE dataset_id = ? AND gen = ? AND handle = ?",
                (d.id, d.gen, handle),
            ).fetchone()
            is None
        )
    return _row_visible(db, tag, d.id, d.gen, handle)


def _request_disclosure(
    db: Db,
    written: _Written,
    requester: str,
    request: DisclosureRequest,
    signature: bytes,
) -> Ticket:
    row = _match_row(db, request.match_id)
    side = _owner_side(row, requester)
    mid = request.match_id.hex()
    if side is None:  # the same answer whether or not the match exists
        raise PermissionDeniedError(
            f"match {mid} was not reported to {requester}; a bureau can only ask for the "
            "record behind a match it received"
        )
    owner, dataset_id, handle = side
    key_type, tag = row[7], row[8]
    if owner == requester:
        raise FailedPreconditionError(
            f"match {mid} is with a record of {requester}'s own; look it up locally"
        )
    rid = request.request_id.hex()
    if db.execute(
        "SELECT 1 FROM disclosures WHERE request_id = ?", (request.request_id,)
    ).fetchone():
        raise AlreadyExistsError(
            f"disclosure request {rid} was already sent; to ask again, sign a new request "
            "(with a new id)"
        )
    removed = not _still_matches(db, dataset_id, handle, tag)
    now = _now_ms()
    index = _audit(
        db,
        written,
        encode_entry(
            EntryKind.DISCLOSURE_REQUEST,
            time_ms=now,
            request_id=request.request_id,
            match_id=request.match_id,
            requester=requester,
            request_digest=request.digest(),
        ),
    )
    db.execute(
        "INSERT INTO disclosures (request_id, match_id, requester, owner, dataset_id, handle, "
        "key_type, request, request_signature, status, record_removed, created_ms, expires_ms, "
        "request_audit_index, requester_sequence, owner_sequence) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (request.request_id, request.match_id, requester, owner, dataset_id, handle, key_type,
         request.encode(), signature, Status.PENDING, int(removed), now, request.expires_ms, index,
         _case_sequence(db, written, requester), _case_sequence(db, written, owner)),
    )  # fmt: skip
    _pending_changed(db, written)
    return Ticket(
        request_id=request.request_id,
        expires_ms=request.expires_ms,
        audit_index=index,
        record_removed=removed,
    )


def _expire_case(db: Db, written: _Written, case: Case) -> None:
    status = next_status(case.status, Event.EXPIRE, case.request_id)
    db.execute(
        "UPDATE disclosures SET status = ?, requester_sequence = ?, owner_sequence = ? "
        "WHERE request_id = ?",
        (status, _case_sequence(db, written, case.requester),
         _case_sequence(db, written, case.owner), case.request_id),
    )  # fmt: skip


def _expire_due(db: Db, written: _Written) -> int:
    due = _load_cases(
        db,
        "WHERE c.status = ? AND c.expires_ms <= ? ORDER BY c.expires_ms",
        (Status.PENDING, _now_ms()),
    )
    for case in due:
        _expire_case(db, written, case)
    _pending_changed(db, written)
    return len(due)


def _decide(
    db: Db,
    written: _Written,
    owner: str,
    decision: DisclosureDecision,
    signature: bytes,
    sealed: bytes,
) -> Receipt | FailedPreconditionError:
    """Record the decision; an expired case is marked so and its error
    returned (not raised), so that the change commits."""
    case = _load_case(db, decision.request_id)
    if case is None:
        raise denied_for(owner, decision.request_id)
    check_decision(case, owner, decision, sealed)
    approved = decision.outcome is Outcome.APPROVED
    event = Event.APPROVE if approved else Event.DENY
    now = _now_ms()
    if case.status is Status.PENDING and now >= case.expires_ms:
        _expire_case(db, written, case)
        _pending_changed(db, written)
        try:
            next_status(Status.EXPIRED, event, case.request_id)
        except FailedPreconditionError as exc:
            return exc
    status = next_status(case.status, event, case.request_id)
    index = _audit(
        db,
        written,
        encode_entry(
            EntryKind.DISCLOSURE_DECISION,
            time_ms=now,
            request_id=case.request_id,
            requester=case.requester,
            owner=owner,
            outcome=decision.outcome.value,
            fields=len(decision.fields),
            decision_digest=hashlib.sha256(decision.encode()).digest(),
        ),
    )
    db.execute(
        "UPDATE disclosures SET status = ?, decision = ?, decision_signature = ?, sealed = ?, "
        "decision_audit_index = ?, requester_sequence = ?, owner_sequence = ? "
        "WHERE request_id = ?",
        (status, decision.encode(), signature, sealed if approved else None, index,
         _case_sequence(db, written, case.requester), _case_sequence(db, written, owner),
         case.request_id),
    )  # fmt: skip
    _pending_changed(db, written)
    return Receipt(request_id=case.request_id, status=status, audit_index=index)


# -- the store, apart from its database ---------------------------------------------


class SqlStore(abc.ABC):
    """A `HubStore` (see `hub.store`) over the transactions above.

    A subclass owns the connections: `_write` runs a function in one write
    transaction and, after COMMIT, adds the audit entries it appended to
    `self._audit` and calls `_publish` on the event loop; `_read` runs one in
    a read-only snapshot."""

    bulk_lookups_in_flight: int  # see `TagStore`

    def __init__(self, *, auto_sweep: bool) -> None:
        self._auto_sweep = auto_sweep
        self._sweep_wanted = asyncio.Event()
        self._sweep_lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._notices = _Wakeups()
        self._cases = _Wakeups()
        self._audit = AuditTree()
        self._next_expiry_ms: int | None = None
        self._expiry_changed = asyncio.Event()
        self._expirer: asyncio.Task[None] | None = None
        self._live = _LiveCache()
        self._unrecorded: list[tuple[_QueryRecord, asyncio.Future[tuple[list[Hit], int]]]] = []
        self._recorder: asyncio.Task[None] | None = None
        self._recorded_at = -math.inf  # when the last group committed (monotonic)
        self._large_lookups = asyncio.Semaphore(self.bulk_lookups_in_flight)
        self._closed = False

    # -- what a database provides ----------------------------------------------

    @abc.abstractmethod
    async def _write(self, fn: Callable[[Db, _Written], T], *, serialized: bool = True) -> T:
        """Run `fn` in one write transaction (see the module docstring for
        `serialized`)."""

    @abc.abstractmethod
    async def _read(self, fn: Callable[[Db], T]) -> T:
        """Run `fn` inside one read-only snapshot."""

    async def _read_small(self, fn: Callable[[Db], T]) -> T:
        """`_read` for a few index probes (a store may run it inline)."""
        return await self._read(fn)

    @abc.abstractmethod
    async def _close_database(self) -> None:
        """Release every connection (background tasks have stopped)."""

    async def _sync_audit(self) -> None:
        """Bring `self._audit` up to every leaf committed so far (a store
        whose database has other writers catches up here)."""
        return None

    async def _due_expiry(self) -> int | None:
        """When the first pending disclosure case expires, if any."""
        return self._next_expiry_ms

    # -- background work ----------------------------------------------------------

    def _start_background(self) -> None:
        if self._auto_sweep:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="hub-sweeper")
            self._sweep_wanted.set()
        self._expirer = asyncio.create_task(self._expire_forever(), name="hub-expirer")

    def _publish(self, written: _Written) -> None:
        """Tell the sweeper, the expiry task and the waiters what a committed
        write changed."""
        if written.garbage:
            self._sweep_wanted.set()
        for recipient, sequence in written.notices.items():
            self._notices.publish(recipient, sequence)
        for recipient, sequence in written.cases.items():
            self._cases.publish(recipient, sequence)
        if written.pending_changed:
            self._next_expiry_ms = written.next_expiry_ms
            self._expiry_changed.set()

    async def _sweep_forever(self) -> None:
        while True:
            await self._sweep_wanted.wait()
            self._sweep_wanted.clear()
            try:
                if await self._write(_take_sweep_flag):
                    deleted = await self.sweep()
                    log.info("sweep deleted %d garbage rows", deleted)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed; retrying in 60 s")
                await asyncio.sleep(60)
                self._sweep_wanted.set()

    async def sweep(self) -> int:
        """Delete rows of dead generations and rows hidden by tombstones, one
        slice of `tags` per transaction so that other writes interleave."""
        deleted = 0
        async with self._sweep_lock:
            after: int | None = None
            while True:
                count, after = await self._write(functools.partial(_sweep_slice, after=after))
                deleted += count
                if after is None:
                    break
            await self._after_sweep(deleted)
        return deleted

    async def _after_sweep(self, deleted: int) -> None:
        """A sweep deleted `deleted` rows (a store with an index of tags
        catches up here)."""
        return None

    # -- enrollment -----------------------------------------------------------

    async def begin_enrollment(self, owner: str, spec: EnrollSpec) -> SqlEnrollment:
        """Allocate a staging generation for `owner`'s dataset `spec.name`."""
        dataset_id, gen = await self._write(lambda db, _: _begin(db, owner, spec))
        return SqlEnrollment(self, owner, spec, dataset_id, gen)

    async def update_dataset(
        self,
        owner: str,
        name: str,
        epoch: int,
        add: Sequence[TaggedKey],
        remove_handles: Sequence[bytes],
    ) -> UpdateResult:
        """Remove handles, then add keys, in one transaction (see the module rules)."""
        return await self._write(
            lambda db, written: _update(db, written, owner, name, epoch, add, remove_handles)
        )

    # -- lookups --------------------------------------------------------------

    async def query(
        self,
        requester: str,
        epoch: int,
        tags: Sequence[QueryTag] | QueryColumns,
        *,
        include_own: bool,
    ) -> QueryResult:
        """Find hits on a read snapshot, then record them as matches, with
        the query's audit leaf (see `_record`)."""
        columns = query_columns(tags)

        def lookup(db: Db) -> tuple[list[_RawHit], int]:
            return _lookup(db, self._live, requester, epoch, columns, include_own)

        found = await self._quick_lookup(requester, epoch, columns, include_own)
        if found is None and len(columns) <= _SMALL_QUERY:
            found = await self._read_small(lookup)
        elif found is None:
            async with self._large_lookups:
                found = await self._read(lookup)
        raw, searched = found
        hits, index = await self._record(_QueryRecord(requester, len(tags), raw))
        return QueryResult(hits=tuple(hits), datasets_searched=searched, audit_index=index)

    async def _quick_lookup(
        self, requester: str, epoch: int, tags: QueryColumns, include_own: bool
    ) -> tuple[list[_RawHit], int] | None:
        """A small lookup's answer by a way cheaper than a read transaction,
        or None when there is none (always, unless a store knows one)."""
        return None

    async def _record(self, record: _QueryRecord) -> tuple[list[Hit], int]:
        """Record a lookup's matches and audit leaf.  Queries that arrive
        while a group is committing share the next transaction (group
        commit): one fsync for many queries, each with its own leaf.  The
        answer is sent only after its group has committed."""
        done: asyncio.Future[tuple[list[Hit], int]] = asyncio.get_running_loop().create_future()
        self._unrecorded.append((record, done))
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_groups(), name="hub-recorder")
        return await done

    async def _record_groups(self) -> None:
        while self._unrecorded:
            if (
                len(self._unrecorded) < _GATHER_UP_TO
                and time.monotonic() - self._recorded_at < _GATHER_AFTER_SECONDS
            ):
                # Busy: let the queries about to arrive share this commit.
                try:
                    await asyncio.sleep(_GATHER_SECONDS)
                except BaseException:
                    for _, done in self._unrecorded:
                        done.cancel()
                    self._unrecorded = []
                    raise
            group, self._unrecorded = self._unrecorded, []
            try:
                results = await self._write(
                    functools.partial(_record_queries, records=[record for record, _ in group])
                )
            except Exception as exc:
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            except BaseException:
                for _, done in group:
                    done.cancel()
                raise
            for (_, done), result in zip(group, results, strict=True):
                if not done.done():
                    done.set_result(result)
            self._recorded_at = time.monotonic()

    async def list_datasets(self, owner: str) -> list[DatasetInfo]:
        """`owner`'s live datasets, by name."""
        found = await self._read(
            lambda db: _load_datasets(
                db, "WHERE d.owner = ? AND d.version >= 1 ORDER BY d.name", (owner,)
            )
        )
        return [
            DatasetInfo(
                name=d.name,
                owner=d.owner,
                epoch=d.epoch,
                version=d.version,
                tag_count=d.tag_count,
                policy=d.policy,
                category=d.category,
                updated_ms=d.updated_ms,
            )
            for d in found
        ]

    async def stats(self) -> HubStats:
        """Datasets, keys and epochs over live versions."""

        def read(db: Db) -> HubStats:
            count, tags = db.execute(
                "SELECT count(*), coalesce(sum(tag_count), 0) FROM datasets WHERE version >= 1"
            ).fetchone()
            epochs = db.execute(
                "SELECT DISTINCT epoch FROM datasets WHERE version >= 1 ORDER BY epoch"
            ).fetchall()
            # int(): PostgreSQL's sum of bigints is a numeric.
            return HubStats(datasets=count, tags=int(tags), epochs=tuple(e for (e,) in epochs))

        return await self._read_small(read)

    # -- notices --------------------------------------------------------------

    async def read_notices(self, recipient: str, after: int, limit: int) -> list[Notice]:
        """Stored notices of `recipient` after sequence `after`, oldest first."""

        def read(db: Db) -> list[Notice]:
            rows = db.execute(
                "SELECT n.sequence, n.match_id, coalesce(d.name, ''), n.handle, n.key_type, "
                "n.other_owner, n.other_category, n.created_ms "
                "FROM notices n LEFT JOIN datasets d ON d.id = n.dataset_id "
                "WHERE n.recipient = ? AND n.sequence > ? ORDER BY n.sequence LIMIT ?",
                (recipient, after, limit),
            ).fetchall()
            return [
                Notice(
                    sequence=r[0],
                    match_id=r[1].hex(),
                    dataset=r[2],
                    handle=r[3],
                    key_type=key_type_from_code(r[4]),
                    other_owner=r[5],
                    other_category=r[6],
                    created_ms=r[7],
                )
                for r in rows
            ]

        return await self._read(read)

    async def wait_for_notices(self, recipient: str, after: int) -> bool:
        """Sleep (no polling) until a commit creates a notice for `recipient`
        after `after`; False when interrupted for shutdown."""
        return await self._notices.wait(recipient, after)

    async def interrupt_waiters(self) -> None:
        """End every `wait_for_notices` and `wait_for_disclosures` (shutdown)."""
        self._notices.interrupt()
        self._cases.interrupt()

    # -- audit log ------------------------------------------------------------

    async def audit_head(self) -> tuple[int, bytes]:
        """(size, root) of the committed log."""
        await self._sync_audit()
        return self._audit.head()

    async def audit_entries(self, start: int, end: int) -> list[bytes]:
        """Stored entries [start, end) of the committed log."""
        await self._sync_audit()
        check_entries_range(start, end, self._audit.size)
        rows = await self._read(
            lambda db: db.execute(
                "SELECT entry FROM audit_leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            ).fetchall()
        )
        return [bytes(entry) for (entry,) in rows]

    async def audit_inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        """RFC 9162 §2.1.3.1 inclusion proof."""
        await self._sync_audit()
        return self._audit.inclusion_proof(leaf_index, tree_size)

    async def audit_consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 §2.1.4.1 consistency proof."""
        await self._sync_audit()
        return self._audit.consistency_proof(old_size, new_size)

    async def record_quota_refusal(self, bureau: str, operation: str) -> int:
        """Append a quota-refusal leaf; its index."""
        entry = encode_entry(
            EntryKind.QUOTA_REFUSAL, time_ms=_now_ms(), bureau=bureau, operation=operation
        )
        return await self._write(lambda db, written: _audit(db, written, entry))

    # -- disclosure -----------------------------------------------------------

    async def request_disclosure(
        self, requester: str, request: DisclosureRequest, signature: bytes
    ) -> Ticket:
        """Store a request (see `DisclosureStore`)."""
        return await self._write(
            lambda db, written: _request_disclosure(db, written, requester, request, signature)
        )

    async def disclosure_case(self, caller: str, request_id: bytes) -> Case:
        """The case, if `caller` is a party of it."""
        await self._expire_if_due()
        case = await self._read(lambda db: _load_case(db, request_id))
        if case is None:
            raise denied_for(caller, request_id)
        role_of(case, caller)
        return case

    async def list_disclosures(
        self, caller: str, direction: Direction, after: int, limit: int
    ) -> DisclosurePage:
        """Cases of `caller` that changed after sequence `after`, by sequence."""
        await self._expire_if_due()
        return await self._read(lambda db: _list_cases(db, caller, direction, after, limit))

    async def decide_disclosure(
        self, owner: str, decision: DisclosureDecision, signature: bytes, sealed: bytes
    ) -> Receipt:
        """Record a decision (see `DisclosureStore`)."""
        outcome = await self._write(
            lambda db, written: _decide(db, written, owner, decision, signature, sealed)
        )
        if isinstance(outcome, FailedPreconditionError):
            raise outcome  # the case expired: that change is committed
        return outcome

    async def expire_disclosures(self) -> int:
        """Mark every pending case past its expiry EXPIRED."""
        return await self._write(_expire_due)

    async def wait_for_disclosures(self, recipient: str, after: int) -> bool:
        """Sleep until a commit changes a case of `recipient` after sequence
        `after`; False when interrupted for shutdown."""
        return await self._cases.wait(recipient, after)

    async def _expire_if_due(self) -> None:
        due = await self._due_expiry()
        if due is not None and _now_ms() >= due:
            await self.expire_disclosures()

    async def _expire_forever(self) -> None:
        while True:
            due = self._next_expiry_ms
            if due is None:
                await self._expiry_changed.wait()
            else:
                delay = min((due - _now_ms()) / 1000, _MAX_EXPIRY_SLEEP)
                if delay > 0:
                    # Not asyncio.wait_for: before Python 3.12 it can swallow a
                    # cancellation that arrives as the event is set (close() hangs).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._expiry_changed.wait()
            self._expiry_changed.clear()
            try:
                await self._expire_if_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("expiring disclosure requests failed; retrying in 60 s")
                await asyncio.sleep(60)

    async def _stop_background(self) -> None:
        for task in (self._sweeper, self._expirer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def close(self) -> None:
        """Stop the background tasks, wake waiters, close every connection."""
        if self._closed:
            return
        if self._recorder is not None:
            await self._recorder  # answers queries already looked up
        await self._stop_background()
        await self.interrupt_waiters()
        self._closed = True
        await self._close_database()


class SqlEnrollment:
    """An enrollment stream staging into a `SqlStore`."""

    def __init__(
        self, store: SqlStore, owner: str, spec: EnrollSpec, dataset_id: int, gen: int
    ) -> None:
        self._store = store
        self._owner = owner
        self._spec = spec
        self._dataset_id = dataset_id
        self._gen = gen
        self._digest = KeyDigest()
        self._pending: list[KeyColumns] = []
        self._pending_count = 0
        self._stored = 0
        self._finished = False

    @property
    def dataset(self) -> str:
        """The dataset's name."""
        return self._spec.name

    def _check_open(self) -> None:
        if self._finished:
            raise FailedPreconditionError(
                f"the enrollment of {self._owner}/{self._spec.name} has already ended"
            )

    async def add(self, keys: Sequence[TaggedKey] | KeyColumns) -> None:
        """Buffer keys and stage them a chunk at a time."""
        self._check_open()
        columns = key_columns(keys)
        self._digest.update_packed(columns.digest_input(), len(columns))
        self._pending.append(columns)
        self._pending_count += len(columns)
        if self._pending_count >= _CHUNK:
            await self._flush()

    async def _flush(self) -> None:
        pending, self._pending, self._pending_count = self._pending, [], 0
        keys = concat(pending)
        if len(keys):
            # Only a linkable dataset's rows are probed for standing matches,
            # which needs the writes serialized (see `hub.store`).
            self._stored += await self._store._write(
                lambda db, _: _stage(
                    db, self._owner, self._spec, self._dataset_id, self._gen, keys
                ),
                serialized=self._spec.policy.linkable,
            )

    async def commit(self, tag_count: int, digest: bytes) -> EnrollResult:
        """Verify the trailer, stage what is left, and go live in one small transaction."""
        self._check_open()
        try:
            self._digest.verify(tag_count, digest)
            await self._flush()
            result = await self._store._write(
                lambda db, written: _go_live(
                    db,
                    written,
                    self._owner,
                    self._spec,
                    self._dataset_id,
                    self._gen,
                    self._stored,
                    tag_count,
                    digest,
                )
            )
        except BaseException:
            await self.abort()
            raise
        self._finished = True
        return result

    async def abort(self) -> None:
        """Drop the staged generation; safe to call more than once."""
        if self._finished:
            return
        self._finished = True
        self._pending = []
        await self._store._write(
            lambda db, written: _drop_staging(db, written, self._dataset_id, self._gen)
        )
