"""Tag storage: the `TagStore` protocol and its SQLite implementation.

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

Durability: WAL with synchronous=FULL; a version is acknowledged only after
the transaction that makes it live has committed, and an interrupted stream
(or `kill -9`) leaves the previous version live.  Startup aborts every
staging generation.

Standing matches: while a linkable dataset stages (or updates), each new row
is probed, in the transaction that writes it, against rows of other bureaus'
linkable datasets of the same epoch, live or staging; each tag equality is
kept as a candidate.  Because writes are serialized, of two rows with the
same tag the later one always finds the earlier.  When a dataset's version
goes live its candidates are settled: those whose other side is live too
become a match and two notices, unless that pair of (dataset, handle) sides
was notified before; those whose other side still stages wait for that
side's commit.

Audit log (see `hub.audit`): each transaction that changes what the hub
attests appends its `psi.audit` entries to `audit_leaves` itself (so a leaf
commits with its change or not at all), in this order: an enrollment's
leaf, then one per standing match its commit creates; an update's removal
leaf (always, even of 0 handles), then an enrollment leaf for the keys it
adds (count and SHA-256 as sent; only when it adds), then its standing
matches; one query leaf per lookup; one leaf per disclosure request and per
decision.  Right after COMMIT the writer thread appends the same entries to
the in-memory `AuditTree`, which startup rebuilds from `audit_leaves`.

Disclosure cases (the state machine is `hub.disclosure`'s) live in
`disclosures`; a case's change and its audit leaf share a transaction.  A
task marks pending cases EXPIRED when the hub's clock reaches their
expiry; reads and decisions check first, so they never see a case that
should have expired as pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import hashlib
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hub.audit import AuditTree, check_entries_range
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

    async def add(self, keys: Sequence[TaggedKey]) -> None:
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
        self, requester: str, epoch: int, tags: Sequence[QueryTag], *, include_own: bool
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
_SCHEMA_VERSION = 2

_SCHEMA = """
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

-- Keyed by tag: a lookup is one index probe.  Small integers for dataset,
-- generation, key type; `added` is 0 (stored in no bytes) for enrolled rows.
CREATE TABLE IF NOT EXISTS tags (
    tag BLOB NOT NULL,
    dataset_id INTEGER NOT NULL,
    gen INTEGER NOT NULL,
    handle BLOB NOT NULL,
    key_type INTEGER NOT NULL,
    added INTEGER NOT NULL,
    PRIMARY KEY (tag, dataset_id, gen, handle)
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
CREATE TABLE IF NOT EXISTS matches (
    match_id BLOB PRIMARY KEY,
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

# Keys per write transaction while staging: small enough that other
# bureaus' writes interleave, large enough to amortize the fsync.
_CHUNK = 5000
# Sweep in 256 transactions, one per first byte of the tag: tags are
# uniformly random, so each covers about 1/256 of the table.
_SWEEP_RANGES = 256

_REVEAL_OWNER, _REVEAL_CATEGORY, _LINKABLE = 1, 2, 4
_QUERY_MATCH, _STANDING_MATCH = 0, 1


def _flags(policy: DatasetPolicy) -> int:
    return (
        (_REVEAL_OWNER if policy.reveal_owner else 0)
        | (_REVEAL_CATEGORY if policy.reveal_category else 0)
        | (_LINKABLE if policy.linkable else 0)
    )


def _policy(flags: int) -> DatasetPolicy:
    return DatasetPolicy(
        reveal_owner=bool(flags & _REVEAL_OWNER),
        reveal_category=bool(flags & _REVEAL_CATEGORY),
        linkable=bool(flags & _LINKABLE),
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _new_match_id() -> bytes:
    return secrets.token_bytes(16)


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


def _load_datasets(
    conn: sqlite3.Connection, where: str = "", args: Sequence[object] = ()
) -> list[_Dataset]:
    rows = conn.execute(
        f"SELECT {_DATASET_COLUMNS} FROM datasets d LEFT JOIN staging s ON s.dataset_id = d.id "  # noqa: S608 - fixed SQL fragments only
        f"{where}",
        tuple(args),
    ).fetchall()
    return [_dataset_from_row(r) for r in rows]


def _find_dataset(conn: sqlite3.Connection, owner: str, name: str) -> _Dataset | None:
    found = _load_datasets(conn, "WHERE d.owner = ? AND d.name = ?", (owner, name))
    return found[0] if found else None


def _row_visible(
    conn: sqlite3.Connection, tag: bytes, dataset_id: int, gen: int, handle: bytes
) -> bool:
    row = conn.execute(
        "SELECT added FROM tags WHERE tag = ? AND dataset_id = ? AND gen = ? AND handle = ?",
        (tag, dataset_id, gen, handle),
    ).fetchone()
    return row is not None and not _tombstoned(conn, dataset_id, gen, handle, row[0])


def _tombstoned(
    conn: sqlite3.Connection, dataset_id: int, gen: int, handle: bytes, added: int
) -> bool:
    row = conn.execute(
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
    it appended (from leaf `audit_base` on), and what to tell the event loop
    (published from the writer thread right after COMMIT, so that a caller
    cancelled meanwhile cannot lose a wake-up)."""

    audit_base: int
    audit: list[bytes] = field(default_factory=list)
    notices: dict[str, int] = field(default_factory=dict)  # recipient -> last sequence
    cases: dict[str, int] = field(default_factory=dict)  # bureau -> last case sequence
    garbage: bool = False
    new_matches: int = 0
    pending_changed: bool = False
    next_expiry_ms: int | None = None  # of pending cases, when pending_changed

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


class SqliteTagStore:
    """`HubStore` on one SQLite file: one writer connection on its own thread
    (writes are serialized, each a short transaction) and reader connections
    on a small pool (lookups run concurrently with writes, thanks to WAL)."""

    def __init__(self, path: Path, *, readers: int, auto_sweep: bool) -> None:
        self._path = path
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="hub-db-writer")
        self._reader_pool = ThreadPoolExecutor(max(1, readers), thread_name_prefix="hub-db-reader")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
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
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, readers: int = 4, auto_sweep: bool = True) -> SqliteTagStore:
        """Open (creating or upgrading if needed) the database at `path`,
        rebuild the audit tree, abort every enrollment a previous process left
        staging, and start the sweeper and the disclosure expiry task."""
        store = cls(path, readers=readers, auto_sweep=auto_sweep)
        try:
            await store._run_writer(store._setup)
            aborted = await store._write(store._recover)
        except BaseException:
            await store.close()
            raise
        if aborted:
            log.warning("aborted %d enrollment(s) left unfinished by a previous run", aborted)
        if auto_sweep:
            store._sweeper = asyncio.create_task(store._sweep_forever(), name="hub-sweeper")
            store._sweep_wanted.set()
        store._expirer = asyncio.create_task(store._expire_forever(), name="hub-expirer")
        return store

    # -- connections and transactions ----------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = FULL")
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
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, _SCHEMA_VERSION):
            raise StorageError(
                f"{self._path} has schema version {version}; this hub knows {_SCHEMA_VERSION}"
            )
        conn.executescript(_SCHEMA)
        # Schema 1 -> 2: new tables (above) and the tag of each match.
        if "tag" not in {row[1] for row in conn.execute("PRAGMA table_info(matches)")}:
            conn.execute("ALTER TABLE matches ADD COLUMN tag BLOB")
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        for code, sequence in conn.execute("SELECT code, last_sequence FROM bureaus"):
            self._notices.latest[code] = sequence
        for code, sequence in conn.execute("SELECT code, last_sequence FROM disclosure_sequences"):
            self._cases.latest[code] = sequence
        self._next_expiry_ms = _next_expiry(conn)
        self._audit = AuditTree(self._stored_leaf_hashes(conn))

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

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
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

    async def _write(self, fn: Callable[[sqlite3.Connection, _Written], T]) -> T:
        """Run `fn` in one IMMEDIATE transaction on the writer connection;
        after COMMIT, add the audit entries it appended to the tree."""
        loop = asyncio.get_running_loop()

        def transaction() -> T:
            conn = self._writer
            if conn is None:  # _setup failed or close() ran
                raise StorageError("the hub's store is not open")
            # Only this thread appends, so the tree's size is the next leaf's index.
            written = _Written(audit_base=self._audit.size)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, written)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if written.audit:
                self._audit.extend(written.audit, first_index=written.audit_base)
            if written.publishes:
                loop.call_soon_threadsafe(self._publish, written)
            return result

        return await self._run_writer(transaction)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on a reader connection inside one snapshot."""
        if self._closed:
            raise StorageError("the hub's store is closed")

        def snapshot() -> T:
            conn = self._reader()
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader_pool, snapshot)
        except sqlite3.OperationalError as exc:
            raise StorageError(f"the hub's database failed ({exc}); retry later") from exc

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

    # -- recovery and garbage -------------------------------------------------

    @staticmethod
    def _recover(conn: sqlite3.Connection, written: _Written) -> int:
        stagings = conn.execute("SELECT dataset_id, gen FROM staging").fetchall()
        for dataset_id, gen in stagings:
            _drop_staging(conn, written, dataset_id, gen)
        return len(stagings)

    @staticmethod
    def _take_sweep_flag(conn: sqlite3.Connection, written: _Written) -> bool:
        row = conn.execute("SELECT value FROM meta WHERE key = 'sweep_needed'").fetchone()
        conn.execute("DELETE FROM meta WHERE key = 'sweep_needed'")
        return row is not None and row[0] != 0

    async def _sweep_forever(self) -> None:
        while True:
            await self._sweep_wanted.wait()
            self._sweep_wanted.clear()
            try:
                if await self._write(self._take_sweep_flag):
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
        tag range per transaction so that other writes interleave."""
        deleted = 0
        async with self._sweep_lock:
            for index in range(_SWEEP_RANGES):
                deleted += await self._write(functools.partial(_sweep_range, index=index))
        return deleted

    # -- enrollment -----------------------------------------------------------

    async def begin_enrollment(self, owner: str, spec: EnrollSpec) -> SqliteEnrollment:
        """Allocate a staging generation for `owner`'s dataset `spec.name`."""
        dataset_id, gen = await self._write(lambda conn, _: _begin(conn, owner, spec))
        return SqliteEnrollment(self, owner, spec, dataset_id, gen)

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
            lambda conn, written: _update(conn, written, owner, name, epoch, add, remove_handles)
        )

    # -- lookups --------------------------------------------------------------

    async def query(
        self, requester: str, epoch: int, tags: Sequence[QueryTag], *, include_own: bool
    ) -> QueryResult:
        """Find hits on a reader snapshot, then record them as matches, with
        the query's audit leaf, in one transaction."""
        raw, searched = await self._read(
            lambda conn: _lookup(conn, requester, epoch, tags, include_own)
        )
        hits, index = await self._write(
            lambda conn, written: _record_query(conn, written, requester, len(tags), raw)
        )
        return QueryResult(hits=tuple(hits), datasets_searched=searched, audit_index=index)

    async def list_datasets(self, owner: str) -> list[DatasetInfo]:
        """`owner`'s live datasets, by name."""
        found = await self._read(
            lambda conn: _load_datasets(
                conn, "WHERE d.owner = ? AND d.version >= 1 ORDER BY d.name", (owner,)
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

        def read(conn: sqlite3.Connection) -> HubStats:
            count, tags = conn.execute(
                "SELECT count(*), coalesce(sum(tag_count), 0) FROM datasets WHERE version >= 1"
            ).fetchone()
            epochs = conn.execute(
                "SELECT DISTINCT epoch FROM datasets WHERE version >= 1 ORDER BY epoch"
            ).fetchall()
            return HubStats(datasets=count, tags=tags, epochs=tuple(e for (e,) in epochs))

        return await self._read(read)

    # -- notices --------------------------------------------------------------

    async def read_notices(self, recipient: str, after: int, limit: int) -> list[Notice]:
        """Stored notices of `recipient` after sequence `after`, oldest first."""

        def read(conn: sqlite3.Connection) -> list[Notice]:
            rows = conn.execute(
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
        return self._audit.head()

    async def audit_entries(self, start: int, end: int) -> list[bytes]:
        """Stored entries [start, end) of the committed log."""
        check_entries_range(start, end, self._audit.size)
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT entry FROM audit_leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            ).fetchall()
        )
        return [bytes(entry) for (entry,) in rows]

    async def audit_inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        """RFC 9162 §2.1.3.1 inclusion proof."""
        return self._audit.inclusion_proof(leaf_index, tree_size)

    async def audit_consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 §2.1.4.1 consistency proof."""
        return self._audit.consistency_proof(old_size, new_size)

    async def record_quota_refusal(self, bureau: str, operation: str) -> int:
        """Append a quota-refusal leaf; its index."""
        entry = encode_entry(
            EntryKind.QUOTA_REFUSAL, time_ms=_now_ms(), bureau=bureau, operation=operation
        )
        return await self._write(lambda conn, written: _audit(conn, written, entry))

    # -- disclosure -----------------------------------------------------------

    async def request_disclosure(
        self, requester: str, request: DisclosureRequest, signature: bytes
    ) -> Ticket:
        """Store a request (see `DisclosureStore`)."""
        return await self._write(
            lambda conn, written: _request_disclosure(conn, written, requester, request, signature)
        )

    async def disclosure_case(self, caller: str, request_id: bytes) -> Case:
        """The case, if `caller` is a party of it."""
        await self._expire_if_due()
        case = await self._read(lambda conn: _load_case(conn, request_id))
        if case is None:
            raise denied_for(caller, request_id)
        role_of(case, caller)
        return case

    async def list_disclosures(
        self, caller: str, direction: Direction, after: int, limit: int
    ) -> DisclosurePage:
        """Cases of `caller` that changed after sequence `after`, by sequence."""
        await self._expire_if_due()
        return await self._read(lambda conn: _list_cases(conn, caller, direction, after, limit))

    async def decide_disclosure(
        self, owner: str, decision: DisclosureDecision, signature: bytes, sealed: bytes
    ) -> Receipt:
        """Record a decision (see `DisclosureStore`)."""
        outcome = await self._write(
            lambda conn, written: _decide(conn, written, owner, decision, signature, sealed)
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
        due = self._next_expiry_ms
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

    async def close(self) -> None:
        """Stop the background tasks, wake waiters, close every connection."""
        if self._closed:
            return
        for task in (self._sweeper, self._expirer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.interrupt_waiters()
        self._closed = True
        # Let queued work finish before the connections go away.
        await asyncio.to_thread(self._writer_pool.shutdown, True)
        await asyncio.to_thread(self._reader_pool.shutdown, True)
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class SqliteEnrollment:
    """An enrollment stream staging into a `SqliteTagStore`."""

    def __init__(
        self, store: SqliteTagStore, owner: str, spec: EnrollSpec, dataset_id: int, gen: int
    ) -> None:
        self._store = store
        self._owner = owner
        self._spec = spec
        self._dataset_id = dataset_id
        self._gen = gen
        self._digest = KeyDigest()
        self._pending: list[TaggedKey] = []
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

    async def add(self, keys: Sequence[TaggedKey]) -> None:
        """Buffer keys and stage them a chunk at a time."""
        self._check_open()
        self._digest.update(keys)
        self._pending.extend(keys)
        if len(self._pending) >= _CHUNK:
            await self._flush()

    async def _flush(self) -> None:
        keys, self._pending = self._pending, []
        if keys:
            self._stored += await self._store._write(
                lambda conn, _: _stage(
                    conn, self._owner, self._spec, self._dataset_id, self._gen, keys
                )
            )

    async def commit(self, tag_count: int, digest: bytes) -> EnrollResult:
        """Verify the trailer, stage what is left, and go live in one small transaction."""
        self._check_open()
        try:
            self._digest.verify(tag_count, digest)
            await self._flush()
            result = await self._store._write(
                lambda conn, written: _go_live(
                    conn,
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
            lambda conn, written: _drop_staging(conn, written, self._dataset_id, self._gen)
        )


# -- transactions (run on the writer thread) ------------------------------------


def _mark_garbage(conn: sqlite3.Connection, written: _Written) -> None:
    """Persist "a sweep is needed" (it survives a crash) and wake the sweeper."""
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('sweep_needed', 1)")
    written.garbage = True


def _drop_staging(conn: sqlite3.Connection, written: _Written, dataset_id: int, gen: int) -> bool:
    deleted = conn.execute(
        "DELETE FROM staging WHERE dataset_id = ? AND gen = ?", (dataset_id, gen)
    ).rowcount
    if not deleted:
        return False
    _drop_candidates(conn, dataset_id, gen)
    # A dataset that never went live disappears with its first enrollment.
    conn.execute("DELETE FROM datasets WHERE id = ? AND version = 0", (dataset_id,))
    _mark_garbage(conn, written)
    return True


def _drop_candidates(conn: sqlite3.Connection, dataset_id: int, gen: int) -> None:
    rows = conn.execute(
        "SELECT handle, tag, other_dataset_id, other_gen, other_handle FROM link_candidates "
        "WHERE dataset_id = ? AND gen = ?",
        (dataset_id, gen),
    ).fetchall()
    conn.executemany(
        "DELETE FROM link_candidates WHERE dataset_id = ? AND gen = ? AND handle = ? AND tag = ? "
        "AND other_dataset_id = ? AND other_gen = ? AND other_handle = ?",
        [(o, og, oh, tag, dataset_id, gen, h) for h, tag, o, og, oh in rows],
    )
    conn.execute("DELETE FROM link_candidates WHERE dataset_id = ? AND gen = ?", (dataset_id, gen))


def _begin(conn: sqlite3.Connection, owner: str, spec: EnrollSpec) -> tuple[int, int]:
    found = _find_dataset(conn, owner, spec.name)
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
        dataset_id = conn.execute(
            "INSERT INTO datasets (owner, name, version, gen, last_gen, epoch, flags, category, "
            "tag_count, updated_ms) VALUES (?, ?, 0, 0, 0, ?, ?, ?, 0, ?)",
            (owner, spec.name, spec.epoch, _flags(spec.policy), spec.category, now),
        ).lastrowid
        if dataset_id is None:
            raise StorageError("SQLite returned no id for a new dataset")
    else:
        dataset_id = found.id
    (gen,) = conn.execute(
        "UPDATE datasets SET last_gen = last_gen + 1 WHERE id = ? RETURNING last_gen",
        (dataset_id,),
    ).fetchone()
    conn.execute(
        "INSERT INTO staging (dataset_id, gen, epoch, flags, category, started_ms) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (dataset_id, gen, spec.epoch, _flags(spec.policy), spec.category, now),
    )
    return dataset_id, gen


def _stage(
    conn: sqlite3.Connection,
    owner: str,
    spec: EnrollSpec,
    dataset_id: int,
    gen: int,
    keys: Sequence[TaggedKey],
) -> int:
    staged = conn.execute("SELECT gen FROM staging WHERE dataset_id = ?", (dataset_id,)).fetchone()
    if staged is None or staged[0] != gen:
        raise FailedPreconditionError(
            f"the enrollment of {owner}/{spec.name} was aborted (the hub restarted?); enroll again"
        )
    # Sorted by tag, the inserts walk the B-tree in order (fewer page visits).
    rows = sorted((k.tag, dataset_id, gen, k.handle, KEY_TYPE_CODES[k.key_type]) for k in keys)
    stored = conn.executemany(
        "INSERT OR IGNORE INTO tags (tag, dataset_id, gen, handle, key_type, added) "
        "VALUES (?, ?, ?, ?, ?, 0)",
        rows,
    ).rowcount
    if spec.policy.linkable:
        _probe(conn, owner, dataset_id, gen, spec.epoch, keys)
    return stored


def _probe(
    conn: sqlite3.Connection,
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
        for d in _load_datasets(conn)
        if d.owner != owner and (gens := d.linkable_gens(epoch))
    }
    if not targets:
        return
    found = []
    for key in keys:
        code = KEY_TYPE_CODES[key.key_type]
        for other_id, other_gen, other_handle in conn.execute(
            "SELECT dataset_id, gen, handle FROM tags WHERE tag = ? AND key_type = ?",
            (key.tag, code),
        ):
            if other_gen in targets.get(other_id, ()):
                found.append(
                    (dataset_id, gen, key.handle, key.tag, other_id, other_gen, other_handle, code)
                )
                found.append(
                    (other_id, other_gen, other_handle, key.tag, dataset_id, gen, key.handle, code)
                )
    conn.executemany(
        "INSERT OR IGNORE INTO link_candidates (dataset_id, gen, handle, tag, other_dataset_id, "
        "other_gen, other_handle, key_type) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        found,
    )


def _go_live(
    conn: sqlite3.Connection,
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
    staged = conn.execute("SELECT gen FROM staging WHERE dataset_id = ?", (dataset_id,)).fetchone()
    if staged is None or staged[0] != gen:
        raise FailedPreconditionError(
            f"the enrollment of {owner}/{spec.name} was aborted (the hub restarted?); enroll again"
        )
    (old_version,) = conn.execute(
        "SELECT version FROM datasets WHERE id = ?", (dataset_id,)
    ).fetchone()
    conn.execute(
        "UPDATE datasets SET version = version + 1, gen = ?, epoch = ?, flags = ?, category = ?, "
        "tag_count = ?, updated_ms = ? WHERE id = ?",
        (gen, spec.epoch, _flags(spec.policy), spec.category, stored, _now_ms(), dataset_id),
    )
    conn.execute("DELETE FROM staging WHERE dataset_id = ?", (dataset_id,))
    conn.execute("DELETE FROM removed WHERE dataset_id = ? AND gen < ?", (dataset_id, gen))
    if old_version >= 1:
        _mark_garbage(conn, written)
    index = _audit(
        conn,
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
    _settle_candidates(conn, dataset_id, written)
    return EnrollResult(
        dataset=spec.name,
        version=old_version + 1,
        tag_count=stored,
        new_notices=written.new_matches,
        audit_index=index,
    )


def _update(
    conn: sqlite3.Connection,
    written: _Written,
    owner: str,
    name: str,
    epoch: int,
    add: Sequence[TaggedKey],
    remove_handles: Sequence[bytes],
) -> UpdateResult:
    d = _find_dataset(conn, owner, name)
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
        before = conn.execute(
            "SELECT removed_at FROM removed WHERE dataset_id = ? AND gen = ? AND handle = ?",
            (d.id, d.gen, handle),
        ).fetchone()
        conn.execute(
            "INSERT OR REPLACE INTO removed (dataset_id, gen, handle, removed_at) "
            "VALUES (?, ?, ?, ?)",
            (d.id, d.gen, handle, version),
        )
        removed += before is None
    if remove_handles:
        _mark_garbage(conn, written)
    added: list[TaggedKey] = []
    inserted = 0
    for key in dict.fromkeys(add):
        row = conn.execute(
            "SELECT added FROM tags WHERE tag = ? AND dataset_id = ? AND gen = ? AND handle = ?",
            (key.tag, d.id, d.gen, key.handle),
        ).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO tags (tag, dataset_id, gen, handle, key_type, added) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key.tag, d.id, d.gen, key.handle, KEY_TYPE_CODES[key.key_type], version),
            )
            inserted += 1
            added.append(key)
        elif _tombstoned(conn, d.id, d.gen, key.handle, row[0]):
            # The row is still on disk (and still counted): make it visible again.
            conn.execute(
                "UPDATE tags SET added = ?, key_type = ? WHERE tag = ? AND dataset_id = ? "
                "AND gen = ? AND handle = ?",
                (version, KEY_TYPE_CODES[key.key_type], key.tag, d.id, d.gen, key.handle),
            )
            added.append(key)
    tag_count = d.tag_count + inserted
    now = _now_ms()
    conn.execute(
        "UPDATE datasets SET version = ?, tag_count = ?, updated_ms = ? WHERE id = ?",
        (version, tag_count, now, d.id),
    )
    # Counts as the agent sent them: handles named, keys in order.
    index = _audit(
        conn,
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
            conn,
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
        _probe(conn, owner, d.id, d.gen, d.epoch, added)
        _settle_candidates(conn, d.id, written)
    return UpdateResult(
        dataset=name,
        version=version,
        added=len(added),
        removed=removed,
        tag_count=tag_count,
        new_notices=written.new_matches,
        audit_index=index,
    )


def _settle_candidates(conn: sqlite3.Connection, dataset_id: int, written: _Written) -> None:
    """Turn the candidates of a dataset whose version just went live into
    matches and notices (see the module docstring)."""
    rows = conn.execute(
        "SELECT gen, handle, tag, other_dataset_id, other_gen, other_handle, key_type "
        "FROM link_candidates WHERE dataset_id = ?",
        (dataset_id,),
    ).fetchall()
    if not rows:
        return
    datasets = {d.id: d for d in _load_datasets(conn)}
    me = datasets[dataset_id]
    for gen, handle, tag, other_id, other_gen, other_handle, code in rows:
        other = datasets.get(other_id)
        if other is not None and other.staging is not None and other.staging.gen == other_gen:
            continue  # settled when the other side goes live (or dropped if it aborts)
        conn.execute(
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
            or not _row_visible(conn, tag, dataset_id, gen, handle)
            or not _row_visible(conn, tag, other_id, other_gen, other_handle)
        ):
            continue
        side_a, side_b = sorted([(dataset_id, handle), (other_id, other_handle)])
        match_id = _new_match_id()
        if not conn.execute(
            "INSERT OR IGNORE INTO links (a_dataset_id, a_handle, b_dataset_id, b_handle, "
            "match_id) VALUES (?, ?, ?, ?, ?)",
            (*side_a, *side_b, match_id),
        ).rowcount:
            continue  # this pair of records was notified before
        now = _now_ms()
        conn.execute(
            "INSERT INTO matches (match_id, kind, requester, requester_dataset_id, "
            "requester_handle, owner, dataset_id, handle, key_type, created_ms, tag) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (match_id, _STANDING_MATCH, me.owner, dataset_id, handle, other.owner, other_id,
             other_handle, code, now, tag),
        )  # fmt: skip
        _audit(
            conn,
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
            (sequence,) = conn.execute(
                "INSERT INTO bureaus (code, last_sequence) VALUES (?, 1) ON CONFLICT (code) "
                "DO UPDATE SET last_sequence = last_sequence + 1 RETURNING last_sequence",
                (mine.owner,),
            ).fetchone()
            conn.execute(
                "INSERT INTO notices (recipient, sequence, match_id, dataset_id, handle, key_type, "
                "other_owner, other_category, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (mine.owner, sequence, match_id, mine.id, my_handle, code, shown.owner,
                 shown.category, now),
            )  # fmt: skip
            written.notices[mine.owner] = sequence
        written.new_matches += 1


def _sweep_range(conn: sqlite3.Connection, written: _Written, *, index: int) -> int:
    low = bytes([index])
    high = bytes([index + 1]) if index + 1 < _SWEEP_RANGES else b"\xff" * 17
    # Hidden rows of live generations are still counted in tag_count.
    for dataset_id, count in conn.execute(
        "SELECT t.dataset_id, count(*) FROM tags t "
        "JOIN datasets d ON d.id = t.dataset_id AND d.gen = t.gen "
        "JOIN removed r ON r.dataset_id = t.dataset_id AND r.gen = t.gen AND r.handle = t.handle "
        "WHERE t.tag >= ? AND t.tag < ? AND r.removed_at > t.added GROUP BY t.dataset_id",
        (low, high),
    ).fetchall():
        conn.execute(
            "UPDATE datasets SET tag_count = tag_count - ? WHERE id = ?", (count, dataset_id)
        )
    return conn.execute(
        "DELETE FROM tags WHERE tag >= ? AND tag < ? AND ("
        " (NOT EXISTS (SELECT 1 FROM datasets d WHERE d.id = tags.dataset_id AND d.gen = tags.gen)"
        "  AND NOT EXISTS (SELECT 1 FROM staging s"
        "                  WHERE s.dataset_id = tags.dataset_id AND s.gen = tags.gen))"
        " OR EXISTS (SELECT 1 FROM removed r WHERE r.dataset_id = tags.dataset_id"
        "            AND r.gen = tags.gen AND r.handle = tags.handle"
        "            AND r.removed_at > tags.added))",
        (low, high),
    ).rowcount


# -- lookups (reader snapshot, then the writer) ----------------------------------


@dataclass(frozen=True)
class _RawHit:
    query_index: int
    dataset: _Dataset  # as the lookup's snapshot saw it
    handle: bytes
    key_type: int
    tag: bytes


def _lookup(
    conn: sqlite3.Connection,
    requester: str,
    epoch: int,
    tags: Sequence[QueryTag],
    include_own: bool,
) -> tuple[list[_RawHit], int]:
    searched = {
        d.id: d
        for d in _load_datasets(conn, "WHERE d.version >= 1 AND d.epoch = ?", (epoch,))
        if include_own or d.owner != requester
    }
    hits: list[_RawHit] = []
    if not searched:
        return hits, 0
    for index, query in enumerate(tags):
        code = KEY_TYPE_CODES[query.key_type]
        for dataset_id, gen, handle, added in conn.execute(
            "SELECT dataset_id, gen, handle, added FROM tags WHERE tag = ? AND key_type = ?",
            (query.tag, code),
        ).fetchall():
            d = searched.get(dataset_id)
            if d is None or gen != d.gen or _tombstoned(conn, dataset_id, gen, handle, added):
                continue
            hits.append(_RawHit(index, d, handle, code, query.tag))
    return hits, len(searched)


def _record_query(
    conn: sqlite3.Connection,
    written: _Written,
    requester: str,
    tag_count: int,
    raw: Sequence[_RawHit],
) -> tuple[list[Hit], int]:
    """Record each hit as a match with a fresh id, and the query's audit leaf."""
    now = _now_ms()
    hits = []
    rows = []
    for r in raw:
        d = r.dataset
        match_id = _new_match_id()
        rows.append(
            (match_id, _QUERY_MATCH, requester, d.owner, d.id, r.handle, r.key_type, now, r.tag)
        )
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
    conn.executemany(
        "INSERT INTO matches (match_id, kind, requester, owner, dataset_id, handle, key_type, "
        "created_ms, tag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    index = _audit(
        conn,
        written,
        encode_entry(
            EntryKind.QUERY, time_ms=now, requester=requester, tags=tag_count, hits=len(raw)
        ),
    )
    return hits, index


# -- the audit log (run on the writer thread) -------------------------------------


def _audit(conn: sqlite3.Connection, written: _Written, entry: bytes) -> int:
    """Append an audit leaf in the current transaction; its index."""
    index = written.audit_base + len(written.audit)
    conn.execute("INSERT INTO audit_leaves (idx, entry) VALUES (?, ?)", (index, entry))
    written.audit.append(entry)
    return index


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


def _load_cases(conn: sqlite3.Connection, where: str, args: Sequence[object]) -> list[Case]:
    rows = conn.execute(
        f"SELECT {_CASE_COLUMNS} FROM disclosures c LEFT JOIN datasets d ON d.id = c.dataset_id "  # noqa: S608 - fixed SQL fragments only
        f"{where}",
        tuple(args),
    ).fetchall()
    return [_case_from_row(r) for r in rows]


def _load_case(conn: sqlite3.Connection, request_id: bytes) -> Case | None:
    found = _load_cases(conn, "WHERE c.request_id = ?", (request_id,))
    return found[0] if found else None


def _list_cases(
    conn: sqlite3.Connection, caller: str, direction: Direction, after: int, limit: int
) -> DisclosurePage:
    row = conn.execute(
        "SELECT last_sequence FROM disclosure_sequences WHERE code = ?", (caller,)
    ).fetchone()
    last = row[0] if row else 0
    cases: list[tuple[int, Case]] = []
    if direction in (Direction.BOTH, Direction.OUTGOING):
        cases += (
            (c.requester_sequence, c)
            for c in _load_cases(
                conn,
                "WHERE c.requester = ? AND c.requester_sequence > ? "
                "ORDER BY c.requester_sequence LIMIT ?",
                (caller, after, limit),
            )
        )
    if direction in (Direction.BOTH, Direction.INCOMING):
        cases += (
            (c.owner_sequence, c)
            for c in _load_cases(
                conn,
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


def _next_expiry(conn: sqlite3.Connection) -> int | None:
    (due,) = conn.execute("SELECT min(expires_ms) FROM disclosures WHERE status = ?", (
        Status.PENDING,
    )).fetchone()  # fmt: skip
    return int(due) if due is not None else None


def _pending_changed(conn: sqlite3.Connection, written: _Written) -> None:
    written.pending_changed = True
    written.next_expiry_ms = _next_expiry(conn)


def _case_sequence(conn: sqlite3.Connection, written: _Written, code: str) -> int:
    (sequence,) = conn.execute(
        "INSERT INTO disclosure_sequences (code, last_sequence) VALUES (?, 1) ON CONFLICT (code) "
        "DO UPDATE SET last_sequence = last_sequence + 1 RETURNING last_sequence",
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


def _still_matches(
    conn: sqlite3.Connection, dataset_id: int, handle: bytes, tag: bytes | None
) -> bool:
    """Whether the matched key of record `handle` is still live in its dataset."""
    found = _load_datasets(conn, "WHERE d.id = ?", (dataset_id,))
    if not found or not found[0].live:
        return False
    d = found[0]
    if tag is None:  # a match made before schema 2: only a tombstone can tell
        return (
            conn.execute(
                "SELECT 1 FROM removed WHERE dataset_id = ? AND gen = ? AND handle = ?",
                (d.id, d.gen, handle),
            ).fetchone()
            is None
        )
    return _row_visible(conn, tag, d.id, d.gen, handle)


def _request_disclosure(
    conn: sqlite3.Connection,
    written: _Written,
    requester: str,
    request: DisclosureRequest,
    signature: bytes,
) -> Ticket:
    row = conn.execute(
        "SELECT kind, requester, requester_dataset_id, requester_handle, owner, dataset_id, "
        "handle, key_type, tag FROM matches WHERE match_id = ?",
        (request.match_id,),
    ).fetchone()
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
    if conn.execute(
        "SELECT 1 FROM disclosures WHERE request_id = ?", (request.request_id,)
    ).fetchone():
        raise AlreadyExistsError(
            f"disclosure request {rid} was already sent; to ask again, sign a new request "
            "(with a new id)"
        )
    removed = not _still_matches(conn, dataset_id, handle, tag)
    now = _now_ms()
    index = _audit(
        conn,
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
    conn.execute(
        "INSERT INTO disclosures (request_id, match_id, requester, owner, dataset_id, handle, "
        "key_type, request, request_signature, status, record_removed, created_ms, expires_ms, "
        "request_audit_index, requester_sequence, owner_sequence) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (request.request_id, request.match_id, requester, owner, dataset_id, handle, key_type,
         request.encode(), signature, Status.PENDING, removed, now, request.expires_ms, index,
         _case_sequence(conn, written, requester), _case_sequence(conn, written, owner)),
    )  # fmt: skip
    _pending_changed(conn, written)
    return Ticket(
        request_id=request.request_id,
        expires_ms=request.expires_ms,
        audit_index=index,
        record_removed=removed,
    )


def _expire_case(conn: sqlite3.Connection, written: _Written, case: Case) -> None:
    status = next_status(case.status, Event.EXPIRE, case.request_id)
    conn.execute(
        "UPDATE disclosures SET status = ?, requester_sequence = ?, owner_sequence = ? "
        "WHERE request_id = ?",
        (status, _case_sequence(conn, written, case.requester),
         _case_sequence(conn, written, case.owner), case.request_id),
    )  # fmt: skip


def _expire_due(conn: sqlite3.Connection, written: _Written) -> int:
    due = _load_cases(
        conn,
        "WHERE c.status = ? AND c.expires_ms <= ? ORDER BY c.expires_ms",
        (Status.PENDING, _now_ms()),
    )
    for case in due:
        _expire_case(conn, written, case)
    _pending_changed(conn, written)
    return len(due)


def _decide(
    conn: sqlite3.Connection,
    written: _Written,
    owner: str,
    decision: DisclosureDecision,
    signature: bytes,
    sealed: bytes,
) -> Receipt | FailedPreconditionError:
    """Record the decision; an expired case is marked so and its error
    returned (not raised), so that the change commits."""
    case = _load_case(conn, decision.request_id)
    if case is None:
        raise denied_for(owner, decision.request_id)
    check_decision(case, owner, decision, sealed)
    approved = decision.outcome is Outcome.APPROVED
    event = Event.APPROVE if approved else Event.DENY
    now = _now_ms()
    if case.status is Status.PENDING and now >= case.expires_ms:
        _expire_case(conn, written, case)
        _pending_changed(conn, written)
        try:
            next_status(Status.EXPIRED, event, case.request_id)
        except FailedPreconditionError as exc:
            return exc
    status = next_status(case.status, event, case.request_id)
    index = _audit(
        conn,
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
    conn.execute(
        "UPDATE disclosures SET status = ?, decision = ?, decision_signature = ?, sealed = ?, "
        "decision_audit_index = ?, requester_sequence = ?, owner_sequence = ? "
        "WHERE request_id = ?",
        (status, decision.encode(), signature, sealed if approved else None, index,
         _case_sequence(conn, written, case.requester), _case_sequence(conn, written, owner),
         case.request_id),
    )  # fmt: skip
    _pending_changed(conn, written)
    return Receipt(request_id=case.request_id, status=status, audit_index=index)
