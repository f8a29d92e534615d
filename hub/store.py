"""Tag storage: the `HubStore` protocols and their SQLite implementation.

The rules below hold for every implementation: the transactions that carry
them out are shared (`hub._store_sql`), and PostgreSQL's store
(`hub.store_pg`) differs from SQLite's only in connections, bulk writes and
how several hub processes share one database.

Dataset versions (the state machine this module owns)
-----------------------------------------------------
A dataset is (owner bureau, name) with a small integer id that is never
reused.  Its keys are rows of `tags` labelled with a *generation*: the
dataset's `gen` names the live generation, `version` counts commits (0 until
the first enrollment commits) and `last_gen` the highest generation ever
allocated, so that rows of an aborted generation can never come back to life.

    state            event                           next state, effect
    ---------------  ------------------------------  ---------------------------------------
    absent           Enroll header                   NEW + STAGING(g=1)
    LIVE(v, g)       Enroll header, replace          LIVE(v, g) + STAGING(g' = last_gen + 1)
    LIVE(v, g)       Enroll header, no replace       ALREADY_EXISTS
    any + STAGING    Enroll header, UpdateDataset    ABORTED (one writer per dataset)
    STAGING(g')      tag batch                       rows (g', added=0) committed in chunks;
                                                     invisible, as g' is not the live gen
    STAGING(g')      trailer checks out              LIVE(v + 1, g'): one small transaction;
                                                     rows of g become garbage
    STAGING(g')      abort, bad trailer, restart     the state before the header;
                                                     rows of g' become garbage
    LIVE(v, g)       UpdateDataset, same epoch       LIVE(v + 1, g): new rows (g, added=v+1),
                                                     tombstones (g, handle, removed_at=v+1)

A row of dataset d is visible iff d.version >= 1, row.gen == d.gen, and no
tombstone (d, gen, handle) has removed_at > row.added.  Removals apply
before additions within one update, so re-adding a removed handle's key in
the same update makes it visible again.  Garbage (rows of other generations
and rows hidden by tombstones) is deleted by a background sweep over tag
ranges, in small transactions; lookups ignore it meanwhile.  A dataset's
`tag_count` counts its live rows on disk, so the keys of a removed handle
leave the count when the sweep deletes them: without an index by handle
(which would cost ~15 bytes per tag) the hub cannot count them sooner.

Durability: a version is acknowledged only after the transaction that
makes it live has committed (SQLite: WAL with synchronous=FULL), and an
interrupted stream (or `kill -9`) leaves the previous version live.
Startup aborts every staging generation (PostgreSQL: those of hub
processes that are gone; see `hub.store_pg`).

Standing matches: while a linkable dataset stages (or updates), each new row
is probed, in the transaction that writes it, against rows of other bureaus'
linkable datasets of the same epoch, live or staging; each tag equality is
kept as a candidate.  Because these writes are serialized (across hub
processes too), of two rows with the same tag the later one always finds
the earlier.  When a dataset's version goes live its candidates are
settled: those whose other side is live too become a match and two notices,
unless that pair of (dataset, handle) sides was notified before; those
whose other side still stages wait for that side's commit.

Audit log (see `hub.audit`): each transaction that changes what the hub
attests appends its `psi.audit` entries to `audit_leaves` itself (so a leaf
commits with its change or not at all), in this order: an enrollment's
leaf, then one per standing match its commit creates; an update's removal
leaf (always, even of 0 handles), then an enrollment leaf for the keys it
adds (count and SHA-256 as sent; only when it adds), then its standing
matches; one query leaf per lookup; one leaf per disclosure request and per
decision.  Right after COMMIT the writer thread appends the same entries to
the in-memory `AuditTree`, which startup rebuilds from `audit_leaves` (and
which a PostgreSQL store also brings up to date from `audit_leaves`, where
other hub processes append, before it answers for the log).

Disclosure cases (the state machine is `hub.disclosure`'s) live in
`disclosures`; a case's change and its audit leaf share a transaction.  A
task marks pending cases EXPIRED when the hub's clock reaches their
expiry; reads and decisions check first, so they never see a case that
should have expired as pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

from hub._store_sql import (
    _SMALL_QUERY,
    Db,
    MatchIdsOf,
    PlacedRow,
    SqlStore,
    TagRow,
    _next_expiry,
    _RawHit,
    _recover,
    _Written,
    insert_statements,
    load_match_ids,
)
from hub.audit import AuditTree
from hub.columns import KeyColumns, QueryColumns, split
from hub.disclosure import Case, Direction, DisclosurePage, Receipt, Ticket
from hub.errors import StorageError
from hub.locator import Prefixes, TagLocator, packed_prefixes, prefixes_of
from hub.match_ids import MatchIds
from hub.policy import (
    HANDLE_LENGTH,
    TAG_LENGTH,
    DatasetInfo,
    EnrollResult,
    EnrollSpec,
    HubStats,
    Notice,
    QueryResult,
    QueryTag,
    TaggedKey,
    UpdateResult,
)
from psi.disclosure import DisclosureDecision, DisclosureRequest
from psi.merkle import leaf_hash

__all__ = ["AuditStore", "DisclosureStore", "Enrollment", "HubStore", "SqliteTagStore", "TagStore"]

log = logging.getLogger("blindmatch.hub.store")

T = TypeVar("T")


class Enrollment(Protocol):
    """One enrollment stream in progress: stage keys, then commit or abort."""

    @property
    def dataset(self) -> str:
        """The dataset's name."""
        ...

    async def add(self, keys: Sequence[TaggedKey] | KeyColumns) -> None:
        """Stage the next keys of the stream (invisible until commit)."""
        ...

    async def commit(self, tag_count: int, digest: bytes) -> EnrollResult:
        """Check the trailer and make the staged version live atomically; on a
        bad trailer, abort and raise `InvalidInputError`."""
        ...

    async def abort(self) -> None:
        """Drop the staged version (idempotent); the previous one stays live."""
        ...


class TagStore(Protocol):
    """Storage of dataset versions, tags, matches and notices.

    Every method is safe to call concurrently from one event loop; `owner`,
    `requester` and `recipient` are bureau codes the caller has authenticated.
    """

    # Large lookups (bulk-match batches) the store runs at once, over every
    # stream: 1 where a lookup is bound by this process's CPU (in flight
    # together they only take turns), more where it mostly waits for a
    # database server.  Recording a batch's matches is not counted: the next
    # batch's lookup overlaps it.
    bulk_lookups_in_flight: int

    async def begin_enrollment(self, owner: str, spec: EnrollSpec) -> Enrollment:
        """Start staging a new version of `owner`'s dataset `spec.name`."""
        ...

    async def update_dataset(
        self,
        owner: str,
        name: str,
        epoch: int,
        add: Sequence[TaggedKey],
        remove_handles: Sequence[bytes],
    ) -> UpdateResult:
        """Remove handles, then add keys, of the live version in one transaction."""
        ...

    async def query(
        self,
        requester: str,
        epoch: int,
        tags: Sequence[QueryTag] | QueryColumns,
        *,
        include_own: bool,
    ) -> QueryResult:
        """Look up tags in every live dataset of `epoch` (other bureaus' only,
        unless `include_own`); record each hit as a match with a fresh id."""
        ...

    async def list_datasets(self, owner: str) -> list[DatasetInfo]:
        """`owner`'s datasets that have a live version, by name."""
        ...

    async def stats(self) -> HubStats:
        """Totals over live versions."""
        ...

    async def read_notices(self, recipient: str, after: int, limit: int) -> list[Notice]:
        """Up to `limit` stored notices of `recipient` after sequence `after`, in order."""
        ...

    async def wait_for_notices(self, recipient: str, after: int) -> bool:
        """Wait until `recipient` may have a notice after `after`; False when
        the store is shutting down."""
        ...

    async def interrupt_waiters(self) -> None:
        """Wake every `wait_for_notices` with False (shutdown)."""
        ...

    async def sweep(self) -> int:
        """Delete garbage rows now; returns how many were deleted."""
        ...

    async def close(self) -> None:
        """Stop background work and release the database."""
        ...


class AuditStore(Protocol):
    """The audit log that a store appends to with each change it makes."""

    async def audit_head(self) -> tuple[int, bytes]:
        """(size, root) of the log, read together."""
        ...

    async def audit_entries(self, start: int, end: int) -> list[bytes]:
        """Entries [start, end), at most `hub.audit.MAX_ENTRIES_PER_CALL`."""
        ...

    async def audit_inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of a leaf in the tree of `tree_size` leaves."""
        ...

    async def audit_consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof between two sizes."""
        ...

    async def record_quota_refusal(self, bureau: str, operation: str) -> int:
        """Append a quota-refusal leaf (no other state changes); its index."""
        ...


class DisclosureStore(Protocol):
    """Disclosure cases (`hub.disclosure`); callers are authenticated bureau codes."""

    async def request_disclosure(
        self, requester: str, request: DisclosureRequest, signature: bytes
    ) -> Ticket:
        """Store a checked request (`hub.disclosure.check_request`) for a
        match `requester` received; audit it and wake the owner.
        PERMISSION_DENIED for another bureau's match (whether or not it
        exists), ALREADY_EXISTS for a used request id."""
        ...

    async def disclosure_case(self, caller: str, request_id: bytes) -> Case:
        """The case, if `caller` is its requester or owner (else PERMISSION_DENIED)."""
        ...

    async def list_disclosures(
        self, caller: str, direction: Direction, after: int, limit: int
    ) -> DisclosurePage:
        """Up to `limit` cases of `caller` that changed after sequence `after`."""
        ...

    async def decide_disclosure(
        self, owner: str, decision: DisclosureDecision, signature: bytes, sealed: bytes
    ) -> Receipt:
        """Record a checked decision (`hub.disclosure.check_decision`, which
        the store applies again) on a pending case of `owner`, atomically with
        its audit leaf; FAILED_PRECONDITION unless the case is pending and
        unexpired (an expired one is marked EXPIRED)."""
        ...

    async def expire_disclosures(self) -> int:
        """Mark pending cases past their expiry EXPIRED now; how many."""
        ...

    async def wait_for_disclosures(self, recipient: str, after: int) -> bool:
        """Wait until a case of `recipient` may have changed after sequence
        `after`; False when the store is shutting down."""
        ...


class HubStore(TagStore, AuditStore, DisclosureStore, Protocol):
    """Everything the hub keeps: what `hub.server` opens."""


# -- SQLite -------------------------------------------------------------------

# 1: tags, datasets, matches, notices.  2: audit log, disclosures, matches.tag.
# 3: tags keyed by (dataset, gen, tag) instead of (tag, dataset, gen).
# 4: matches keyed by sequence number, ids encrypted from it (`hub.match_ids`).
_SCHEMA_VERSION = 4

# Keyed by sequence number (rows are appended); match_id is the encryption of
# seq (`hub.match_ids`), except for ids made before schema 4, which
# legacy_match_ids maps to their rows.
_MATCHES_TABLE = """
CREATE TABLE IF NOT EXISTS matches (
    seq INTEGER PRIMARY KEY,
    match_id BLOB NOT NULL,
    kind INTEGER NOT NULL,
    requester TEXT NOT NULL,
    requester_dataset_id INTEGER,
    requester_handle BLOB,
    owner TEXT NOT NULL,
    dataset_id INTEGER NOT NULL,
    handle BLOB NOT NULL,
    key_type INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    tag BLOB
);
"""

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

-- AUTOINCREMENT: an id is never reused, so rows left by a deleted (never
-- committed) dataset can never be mistaken for another dataset's.
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    gen INTEGER NOT NULL,
    last_gen INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    category TEXT NOT NULL,
    tag_count INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (owner, name)
);

CREATE TABLE IF NOT EXISTS staging (
    dataset_id INTEGER PRIMARY KEY,
    gen INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    category TEXT NOT NULL,
    started_ms INTEGER NOT NULL
);

-- Keyed by (dataset, generation, tag): an enrollment writes one contiguous
-- region of the B-tree.  A lookup asks the in-memory `hub.locator` which
-- (dataset, generation) may hold a tag, then probes those keys.  Small
-- integers for dataset, generation, key type; `added` is 0 (stored in no
-- bytes) for enrolled rows.
CREATE TABLE IF NOT EXISTS tags (
    tag BLOB NOT NULL,
    dataset_id INTEGER NOT NULL,
    gen INTEGER NOT NULL,
    handle BLOB NOT NULL,
    key_type INTEGER NOT NULL,
    added INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, gen, tag, handle)
) WITHOUT ROWID;

-- Tombstones: read only for hits, so `tags` needs no index by handle.
CREATE TABLE IF NOT EXISTS removed (
    dataset_id INTEGER NOT NULL,
    gen INTEGER NOT NULL,
    handle BLOB NOT NULL,
    removed_at INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, gen, handle)
) WITHOUT ROWID;

-- Standing-match candidates, stored once from each side.
CREATE TABLE IF NOT EXISTS link_candidates (
    dataset_id INTEGER NOT NULL,
    gen INTEGER NOT NULL,
    handle BLOB NOT NULL,
    tag BLOB NOT NULL,
    other_dataset_id INTEGER NOT NULL,
    other_gen INTEGER NOT NULL,
    other_handle BLOB NOT NULL,
    key_type INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, gen, handle, tag, other_dataset_id, other_gen, other_handle)
) WITHOUT ROWID;

-- Pairs of (dataset, handle) sides already notified; (a) < (b).
CREATE TABLE IF NOT EXISTS links (
    a_dataset_id INTEGER NOT NULL,
    a_handle BLOB NOT NULL,
    b_dataset_id INTEGER NOT NULL,
    b_handle BLOB NOT NULL,
    match_id BLOB NOT NULL,
    PRIMARY KEY (a_dataset_id, a_handle, b_dataset_id, b_handle)
) WITHOUT ROWID;

-- Every match the hub has announced.  kind 0: a query hit (requester_* unset);
-- kind 1: a standing match between two owners' records.  `tag` (NULL for
-- matches made before schema 2) tells later whether the record still matches.
"""
    + _MATCHES_TABLE
    + """
CREATE TABLE IF NOT EXISTS legacy_match_ids (
    match_id BLOB PRIMARY KEY,
    seq INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS hub_secrets (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS bureaus (
    code TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS notices (
    recipient TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    match_id BLOB NOT NULL,
    dataset_id INTEGER NOT NULL,
    handle BLOB NOT NULL,
    key_type INTEGER NOT NULL,
    other_owner TEXT,
    other_category TEXT,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (recipient, sequence)
) WITHOUT ROWID;

-- The audit log's leaves (psi.audit encodings), numbered from 0 without gaps.
CREATE TABLE IF NOT EXISTS audit_leaves (
    idx INTEGER PRIMARY KEY,
    entry BLOB NOT NULL
);

-- Disclosure cases (hub.disclosure).  The owner side is resolved from the
-- match when the request arrives.  `sealed` is HPKE ciphertext only.
CREATE TABLE IF NOT EXISTS disclosures (
    request_id BLOB PRIMARY KEY,
    match_id BLOB NOT NULL,
    requester TEXT NOT NULL,
    owner TEXT NOT NULL,
    dataset_id INTEGER NOT NULL,
    handle BLOB NOT NULL,
    key_type INTEGER NOT NULL,
    request BLOB NOT NULL,
    request_signature BLOB NOT NULL,
    status INTEGER NOT NULL,
    record_removed INTEGER NOT NULL,
    decision BLOB,
    decision_signature BLOB,
    sealed BLOB,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    request_audit_index INTEGER NOT NULL,
    decision_audit_index INTEGER,
    requester_sequence INTEGER NOT NULL,
    owner_sequence INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS disclosures_by_requester
    ON disclosures (requester, requester_sequence);
CREATE INDEX IF NOT EXISTS disclosures_by_owner ON disclosures (owner, owner_sequence);
CREATE INDEX IF NOT EXISTS disclosures_pending ON disclosures (expires_ms) WHERE status = 1;

-- Per-bureau counters of disclosure case changes (separate from notices').
CREATE TABLE IF NOT EXISTS disclosure_sequences (
    code TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL
) WITHOUT ROWID;
"""
)


# (dataset, gen, tag) probes per lookup statement: 3 variables each, well
# under SQLite's limit of 32,766.
_PROBES_PER_STATEMENT = 2000
# Rows per multi-row INSERT: at most 4,500 variables for the widest table.
_ROWS_PER_INSERT = 500


class _SqliteDb(MatchIdsOf):
    """`Db` on a sqlite3 connection, with the store's `TagLocator`."""

    def __init__(
        self, conn: sqlite3.Connection, locator: TagLocator, match_ids: MatchIds | None
    ) -> None:
        super().__init__(match_ids)
        self._conn = conn
        self._locator = locator

    def execute(self, sql: str, args: Sequence[object] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> int:
        return self._conn.executemany(sql, rows).rowcount

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        for sql, args in insert_statements(table, columns, rows, _ROWS_PER_INSERT):
            self._conn.execute(sql, args)

    def tag_rows(self, tags: Sequence[bytes]) -> list[TagRow]:
        probes = {(c.dataset_id, c.gen, tags[c.position]) for c in self._locator.candidates(tags)}
        found = self._probe(probes)
        found.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
        return found

    def query_rows(self, tags: QueryColumns) -> list[PlacedRow]:
        # Only the locator's candidates are unpacked: a bulk batch's 10,000
        # tags are mostly misses.
        needles = packed_prefixes(tags.tags, TAG_LENGTH)
        candidates = [(c, tags.tag_at(c.position)) for c in self._locator.candidates_of(needles)]
        rows: dict[tuple[int, int, bytes], list[TagRow]] = {}
        for row in self._probe({(c.dataset_id, c.gen, tag) for c, tag in candidates}):
            rows.setdefault((row[1], row[2], row[0]), []).append(row)
        placed = [
            (c.position, row)
            for c, tag in candidates
            for row in rows.get((c.dataset_id, c.gen, tag), ())
        ]
        placed.sort(key=lambda p: (p[0], p[1][1], p[1][2], p[1][3]))
        return placed

    def _probe(self, probes: Collection[tuple[int, int, bytes]]) -> list[TagRow]:
        """The rows of each (dataset_id, gen, tag), in no particular order."""
        ordered = sorted(probes)  # neighbouring keys: B-tree pages still in the cache
        found: list[TagRow] = []
        # One statement per chunk of probes: the key lookups run in SQLite's loop.
        for start in range(0, len(ordered), _PROBES_PER_STATEMENT):
            chunk = ordered[start : start + _PROBES_PER_STATEMENT]
            values = ", ".join(["(?, ?, ?)"] * len(chunk))
            found += self._conn.execute(
                f"WITH c (dataset_id, gen, tag) AS (VALUES {values}) "  # noqa: S608 (placeholders)
                "SELECT t.tag, t.dataset_id, t.gen, t.handle, t.key_type, t.added, r.removed_at "
                "FROM c CROSS JOIN tags t ON t.dataset_id = c.dataset_id AND t.gen = c.gen "
                "AND t.tag = c.tag LEFT JOIN removed r ON r.dataset_id = t.dataset_id "
                "AND r.gen = t.gen AND r.handle = t.handle",
                [value for probe in chunk for value in probe],
            ).fetchall()
        return found

    def note_tags(self, dataset_id: int, gen: int, tags: Sequence[bytes]) -> None:
        self._locator.note(dataset_id, gen, tags)

    def insert_staged(self, dataset_id: int, gen: int, keys: KeyColumns) -> int:
        self._locator.note_prefixes(dataset_id, gen, packed_prefixes(keys.tags, TAG_LENGTH))
        # The rows are made as SQLite's executemany asks for them, from
        # columns split in C: no Python loop over the keys.
        rows = zip(
            split(keys.tags, TAG_LENGTH),
            itertools.repeat(dataset_id),
            itertools.repeat(gen),
            split(keys.handles, HANDLE_LENGTH),
            keys.codes,  # iterating bytes yields the codes as ints
        )
        return self._conn.executemany(
            "INSERT OR IGNORE INTO tags (tag, dataset_id, gen, handle, key_type, added) "
            "VALUES (?, ?, ?, ?, ?, 0)",
            rows,
        ).rowcount

    def lock_staging(self, dataset_id: int) -> int | None:
        row = self._conn.execute(
            "SELECT gen FROM staging WHERE dataset_id = ?", (dataset_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def sweep_slice(self, after: int | None) -> tuple[str, tuple[object, ...], int] | None:
        # One dataset at a time: its rows are one region of the key.
        row = self._conn.execute(
            "SELECT dataset_id FROM tags WHERE dataset_id > ? ORDER BY dataset_id LIMIT 1",
            (-1 if after is None else after,),
        ).fetchone()
        if row is None:
            return None
        return "tags.dataset_id = ?", (row[0],), int(row[0])


def _scan_prefixes(conn: sqlite3.Connection) -> Iterator[tuple[int, int, Prefixes]]:
    """(dataset, gen, tag prefixes) of every row, in key order."""
    cursor = conn.execute("SELECT dataset_id, gen, substr(tag, 1, 8) FROM tags")
    while rows := cursor.fetchmany(65536):
        for (dataset_id, gen), group in itertools.groupby(rows, key=lambda r: (r[0], r[1])):
            yield dataset_id, gen, prefixes_of([r[2] for r in group])


def _migrate(conn: sqlite3.Connection, path: Path) -> tuple[int, int]:
    """Create or upgrade the schema; (version before, version after)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version not in (0, 1, 2, 3, _SCHEMA_VERSION):
        raise StorageError(f"{path} has schema version {version}; this hub knows {_SCHEMA_VERSION}")
    if version in (1, 2):
        _rekey_tags(conn)
    conn.executescript(_SCHEMA)
    # Schema 1 -> 2: new tables (above) and the tag of each match.
    if "tag" not in {row[1] for row in conn.execute("PRAGMA table_info(matches)")}:
        conn.execute("ALTER TABLE matches ADD COLUMN tag BLOB")
    if "seq" not in {row[1] for row in conn.execute("PRAGMA table_info(matches)")}:
        _resequence_matches(conn)
    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
    return version, _SCHEMA_VERSION


def _resequence_matches(conn: sqlite3.Connection) -> None:
    """Schema 3 -> 4: number the stored matches in the order they were made,
    keep their (random) ids reachable through `legacy_match_ids`; one transaction."""
    columns = (
        "match_id, kind, requester, requester_dataset_id, requester_handle, owner, "
        "dataset_id, handle, key_type, created_ms, tag"
    )
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("ALTER TABLE matches RENAME TO matches_v3")
        conn.execute(_MATCHES_TABLE)
        conn.execute(
            f"INSERT INTO matches ({columns}) SELECT {columns} FROM matches_v3 "  # noqa: S608
            "ORDER BY created_ms, match_id"
        )
        conn.execute(
            "INSERT INTO legacy_match_ids (match_id, seq) SELECT match_id, seq FROM matches"
        )
        conn.execute("DROP TABLE matches_v3")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _rekey_tags(conn: sqlite3.Connection) -> None:
    """Schema 2 -> 3: copy `tags` into a table keyed by (dataset, gen, tag),
    in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE tags_v3 (tag BLOB NOT NULL, dataset_id INTEGER NOT NULL, "
            "gen INTEGER NOT NULL, handle BLOB NOT NULL, key_type INTEGER NOT NULL, "
            "added INTEGER NOT NULL, PRIMARY KEY (dataset_id, gen, tag, handle)) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO tags_v3 (tag, dataset_id, gen, handle, key_type, added) "
            "SELECT tag, dataset_id, gen, handle, key_type, added FROM tags "
            "ORDER BY dataset_id, gen, tag, handle"
        )
        conn.execute("DROP TABLE tags")
        conn.execute("ALTER TABLE tags_v3 RENAME TO tags")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# Seconds without a new tag noted before the locator's runs are merged into one.
COMPACT_IDLE_SECONDS = 2.0


class SqliteTagStore(SqlStore):
    """`HubStore` on one SQLite file: one writer connection on its own thread
    (writes are serialized, each a short transaction) and reader connections
    on a small pool (lookups run concurrently with writes, thanks to WAL).
    One hub process per file."""

    # The lookups run in this process (1M tags in 3M through gRPC, two paired
    # runs: 1.23 / 1.18 s with one in flight against 1.40 / 1.50 s with four).
    bulk_lookups_in_flight = 1

    def __init__(self, path: Path, *, readers: int, auto_sweep: bool) -> None:
        super().__init__(auto_sweep=auto_sweep)
        self._path = path
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="hub-db-writer")
        self._reader_pool = ThreadPoolExecutor(max(1, readers), thread_name_prefix="hub-db-reader")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._loop_reader: sqlite3.Connection | None = None
        self._locator = TagLocator()
        self._match_ids: MatchIds | None = None
        self._swept_since_rebuild = 0
        self._compactor: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path, *, readers: int = 4, auto_sweep: bool = True) -> SqliteTagStore:
        """Open (creating or upgrading if needed) the database at `path`,
        rebuild the audit tree, abort every enrollment a previous process left
        staging, and start the sweeper and the disclosure expiry task."""
        store = cls(path, readers=readers, auto_sweep=auto_sweep)
        try:
            await store._run_writer(store._setup)
            aborted = await store._write(_recover)
        except BaseException:
            await store.close()
            raise
        if aborted:
            log.warning("aborted %d enrollment(s) left unfinished by a previous run", aborted)
        store._start_background()
        return store

    @staticmethod
    def migrate(path: Path) -> tuple[int, int]:
        """Create or upgrade the schema of the database at `path` (idempotent);
        (schema version before, after), 0 before for a new database."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            return _migrate(conn, path)
        except sqlite3.Error as exc:
            raise StorageError(f"{path}: cannot migrate the hub's database ({exc})") from exc
        finally:
            conn.close()

    # -- connections and transactions ----------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA query_only = 1")
        # No memory map (PRAGMA mmap_size): the probes of one connection ran
        # 12-20% faster through it, but every reader thread maps the file on
        # its own and faults its pages in again; 1M tags against 10M took
        # 1.45 s instead of 1.09-1.19.
        return conn

    def _setup(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        # Random tags touch pages all over the B-tree; a larger page cache
        # keeps staging fast once the table outgrows the default 2 MB.
        conn.execute("PRAGMA cache_size = -65536")
        self._writer = conn
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StorageError(f"{self._path}: SQLite refused WAL mode (got {mode!r})")
        _migrate(conn, self._path)
        for code, sequence in conn.execute("SELECT code, last_sequence FROM bureaus"):
            self._notices.latest[code] = sequence
        for code, sequence in conn.execute("SELECT code, last_sequence FROM disclosure_sequences"):
            self._cases.latest[code] = sequence
        self._match_ids = load_match_ids(self._db(conn))
        self._next_expiry_ms = _next_expiry(self._db(conn))
        self._audit = AuditTree(self._stored_leaf_hashes(conn))
        started = time.monotonic()
        self._locator.install(_scan_prefixes(conn))
        log.info(
            "indexed %d tags in %.1f s (%d MB in memory)",
            self._locator.size,
            time.monotonic() - started,
            self._locator.size * 12 // 1_000_000,
        )

    def _start_background(self) -> None:
        super()._start_background()
        self._compactor = asyncio.create_task(self._compact_when_idle(), name="hub-compactor")

    async def _stop_background(self) -> None:
        if self._compactor is not None:
            self._compactor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._compactor
        await super()._stop_background()

    async def _compact_when_idle(self) -> None:
        """Merge the locator's runs into one once nothing has been noted for
        `COMPACT_IDLE_SECONDS` (after an ingest: 7 runs at 10 million tags,
        searched in twice the time of one).  Never during an ingest, where
        the runs' binary-counter merges are what keeps noting cheap."""
        seen = -1
        while True:
            await asyncio.sleep(COMPACT_IDLE_SECONDS)
            notes = self._locator.notes
            if notes == seen and self._locator.runs > 1:
                started = time.monotonic()
                if await asyncio.to_thread(self._locator.compact):
                    log.info(
                        "merged the tag index into one run: %d tags in %.2f s",
                        self._locator.size,
                        time.monotonic() - started,
                    )
            seen = notes

    async def _after_sweep(self, deleted: int) -> None:
        # Deleted rows stay in the locator as false candidates (one wasted
        # probe each); rebuild once they are a quarter of it.
        self._swept_since_rebuild += deleted
        if self._swept_since_rebuild * 4 < max(self._locator.size, 1):
            return
        self._swept_since_rebuild = 0
        await self._run_writer(self._locator.start_journal)

        def scan() -> list[tuple[int, int, Prefixes]]:
            conn = self._reader()
            conn.execute("BEGIN")
            try:
                return list(_scan_prefixes(conn))
            finally:
                conn.execute("COMMIT")

        loop = asyncio.get_running_loop()
        scanned = await loop.run_in_executor(self._reader_pool, scan)
        await self._run_writer(lambda: self._locator.install(scanned))
        log.info("rebuilt the tag index: %d tags", self._locator.size)

    def _stored_leaf_hashes(self, conn: sqlite3.Connection) -> Iterator[bytes]:
        for expected, (index, entry) in enumerate(
            conn.execute("SELECT idx, entry FROM audit_leaves ORDER BY idx")
        ):
            if index != expected:
                raise StorageError(
                    f"{self._path}: audit leaf {expected} is missing (the next one stored is "
                    f"{index}); the audit log is damaged, restore the database from a backup"
                )
            yield leaf_hash(entry)

    def _db(self, conn: sqlite3.Connection) -> _SqliteDb:
        return _SqliteDb(conn, self._locator, self._match_ids)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect_reader()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def _run_writer(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StorageError("the hub's store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._writer_pool, fn)
        except sqlite3.OperationalError as exc:
            raise StorageError(f"the hub's database failed ({exc}); retry later") from exc

    async def _write(self, fn: Callable[[Db, _Written], T], *, serialized: bool = True) -> T:
        """Run `fn` in one IMMEDIATE transaction on the writer connection (so
        every write is serialized); after COMMIT, add the audit entries it
        appended to the tree."""
        loop = asyncio.get_running_loop()

        def transaction() -> T:
            conn = self._writer
            if conn is None:  # _setup failed or close() ran
                raise StorageError("the hub's store is not open")
            # Only this thread appends, so the tree's size is the next leaf's index.
            written = _Written(audit_base=self._audit.size)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db(conn), written)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if written.live_changed:
                self._live.changed()
            if written.audit:
                self._audit.extend(written.audit, first_index=written.audit_base)
            if written.publishes:
                loop.call_soon_threadsafe(self._publish, written)
            return result

        return await self._run_writer(transaction)

    async def _read(self, fn: Callable[[Db], T]) -> T:
        """Run `fn` on a reader connection inside one snapshot."""
        if self._closed:
            raise StorageError("the hub's store is closed")

        def snapshot() -> T:
            conn = self._reader()
            conn.execute("BEGIN")
            try:
                return fn(self._db(conn))
            finally:
                conn.execute("COMMIT")

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader_pool, snapshot)
        except sqlite3.OperationalError as exc:
            raise StorageError(f"the hub's database failed ({exc}); retry later") from exc

    async def _quick_lookup(
        self, requester: str, epoch: int, tags: QueryColumns, include_own: bool
    ) -> tuple[list[_RawHit], int] | None:
        """A small lookup whose tags the locator has never seen (most queries
        miss) hits nothing in any snapshot: answered from memory, without a
        read of the database, if the live datasets are settled (every write
        passes through this process)."""
        if len(tags) > _SMALL_QUERY:
            return None
        live = self._live.settled()
        if live is None or self._locator.candidates(tags.tag_list()):
            return None
        return [], live.searched(requester, epoch, include_own)

    async def _read_small(self, fn: Callable[[Db], T]) -> T:
        """Run `fn` inside one snapshot on the event loop's own connection: a
        few index probes cost less than handing them to a reader thread and
        back (WAL readers never wait for the writer)."""
        if self._closed:
            raise StorageError("the hub's store is closed")
        conn = self._loop_reader
        if conn is None:
            conn = self._loop_reader = self._connect_reader()
        try:
            conn.execute("BEGIN")
            try:
                return fn(self._db(conn))
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StorageError(f"the hub's database failed ({exc}); retry later") from exc

    async def _close_database(self) -> None:
        # Let queued work finish before the connections go away.
        await asyncio.to_thread(self._writer_pool.shutdown, True)
        await asyncio.to_thread(self._reader_pool.shutdown, True)
        with self._readers_lock:
            readers, self._readers = self._readers, []
        if self._loop_reader is not None:
            readers.append(self._loop_reader)
            self._loop_reader = None
        for conn in readers:
            conn.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
