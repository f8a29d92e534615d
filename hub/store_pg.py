"""`HubStore` on PostgreSQL, for hubs that outgrow one machine: several hub
processes may serve one database.

The rules are `hub.store`'s and the transactions that carry them out are
shared with SQLite (`hub._store_sql`); this module supplies connections,
bulk writes and what sharing a database between processes takes:

- Serialized writes.  Every write that may append an audit leaf, settle
  standing matches or move a sequence takes one transaction-scoped advisory
  lock (`pg_advisory_xact_lock`) first, so such writes run one at a time
  across all hub processes, as SQLite's single writer does.  Inside that
  lock the next audit leaf index is `max(idx) + 1` of `audit_leaves`, so
  indices are dense and in commit order.  Staging a dataset that is not
  linkable needs no probe and runs beside them, COPYing its chunk under a
  FOR SHARE lock on its `staging` row.
- The audit tree.  Each process keeps the Merkle tree in memory.  After its
  own commit it appends its leaves (or, when other processes appended
  meanwhile, reads everything it lacks from `audit_leaves`); before it
  answers for the log (heads, entries, proofs) it reads any leaves committed
  since.  Leaves become visible in index order, so what a process has is
  always a prefix of the log, and a head from one hub is consistent with a
  later head from any other.
- Wake-ups.  A write that creates notices, moves disclosure sequences,
  leaves garbage or changes pending cases sends `NOTIFY blindmatch_hub`
  in its transaction (delivered only on commit); each process LISTENs on a
  dedicated connection and wakes its followers.  When that connection is
  re-established the process re-reads the sequences, so a lost
  notification delays nothing past the reconnect.  Reads and decisions of
  disclosure cases look up the next expiry in the database itself.
- Abandoned enrollments.  The listening connection also holds a
  session-level advisory lock on the process's random instance id, which
  `staging.hub_instance` records.  A staging generation whose instance lock
  is free belongs to a process that is gone: it is aborted when any hub
  starts, and when its dataset is enrolled or updated again.

Schema: `meta.schema_version` and forward migrations (`migrate`, also run
by `open`; concurrent runs wait on an advisory lock).  Tags are `bytea`
keyed by (tag, dataset_id, gen, handle), integers first for alignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import psycopg
import psycopg_pool
from psycopg.rows import TupleRow

from hub._store_sql import (
    _SMALL_QUERY,
    Db,
    MatchIdsOf,
    PlacedRow,
    SqlEnrollment,
    SqlStore,
    TagRow,
    _begin,
    _drop_staging,
    _hits,
    _next_expiry,
    _RawHit,
    _searched,
    _update,
    _Written,
    insert_statements,
    load_match_ids,
    place_rows,
)
from hub.columns import KeyColumns, QueryColumns
from hub.errors import StorageError
from hub.match_ids import MatchIds
from hub.policy import HANDLE_LENGTH, TAG_LENGTH, EnrollSpec, TaggedKey, UpdateResult

__all__ = ["SCHEMA_VERSION", "PostgresTagStore", "describe_dsn"]

log = logging.getLogger("blindmatch.hub.store")

T = TypeVar("T")
Connection = psycopg.Connection[TupleRow]

# Advisory lock keys (the two-integer form; instance locks use the one-bigint
# form, a separate key space).
_LOCK_CLASS = 0x626D  # "bm"
_WRITE_LOCK = 1
_MIGRATE_LOCK = 2
_CHANNEL = "blindmatch_hub"
# Audit leaves read per query when catching up.
_CATCH_UP_PAGE = 10_000
# `Db.insert` of more rows than this goes through COPY: psycopg formats COPY
# rows in C (0.8 ms of CPU per 500 match rows) but dumps an INSERT's
# parameters one by one (11 ms); a few rows take one multi-row INSERT (one
# round trip, where COPY takes two).
_INSERT_AT_MOST = 16

_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS meta (
    key text PRIMARY KEY,
    value bigint NOT NULL
);

-- An identity never reuses an id, so rows left by a deleted (never
-- committed) dataset can never be mistaken for another dataset's.
CREATE TABLE datasets (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner text NOT NULL,
    name text NOT NULL,
    version integer NOT NULL,
    gen integer NOT NULL,
    last_gen integer NOT NULL,
    epoch bigint NOT NULL,
    flags integer NOT NULL,
    category text NOT NULL,
    tag_count bigint NOT NULL,
    updated_ms bigint NOT NULL,
    UNIQUE (owner, name)
);

-- hub_instance: the process that stages (see the module docstring).
CREATE TABLE staging (
    dataset_id integer PRIMARY KEY,
    gen integer NOT NULL,
    epoch bigint NOT NULL,
    flags integer NOT NULL,
    category text NOT NULL,
    started_ms bigint NOT NULL,
    hub_instance bigint NOT NULL DEFAULT 0
);

-- Keyed by tag: a lookup is one index probe.  Fixed-width columns first
-- (no alignment padding), then the two 16-byte strings.
CREATE TABLE tags (
    dataset_id integer NOT NULL,
    gen integer NOT NULL,
    added integer NOT NULL,
    key_type smallint NOT NULL,
    tag bytea NOT NULL,
    handle bytea NOT NULL,
    PRIMARY KEY (tag, dataset_id, gen, handle)
);

CREATE TABLE removed (
    dataset_id integer NOT NULL,
    gen integer NOT NULL,
    handle bytea NOT NULL,
    removed_at integer NOT NULL,
    PRIMARY KEY (dataset_id, gen, handle)
);

CREATE TABLE link_candidates (
    dataset_id integer NOT NULL,
    gen integer NOT NULL,
    handle bytea NOT NULL,
    tag bytea NOT NULL,
    other_dataset_id integer NOT NULL,
    other_gen integer NOT NULL,
    other_handle bytea NOT NULL,
    key_type smallint NOT NULL,
    PRIMARY KEY (dataset_id, gen, handle, tag, other_dataset_id, other_gen, other_handle)
);

CREATE TABLE links (
    a_dataset_id integer NOT NULL,
    a_handle bytea NOT NULL,
    b_dataset_id integer NOT NULL,
    b_handle bytea NOT NULL,
    match_id bytea NOT NULL,
    PRIMARY KEY (a_dataset_id, a_handle, b_dataset_id, b_handle)
);

CREATE TABLE matches (
    match_id bytea PRIMARY KEY,
    kind smallint NOT NULL,
    requester text NOT NULL,
    requester_dataset_id integer,
    requester_handle bytea,
    owner text NOT NULL,
    dataset_id integer NOT NULL,
    handle bytea NOT NULL,
    key_type smallint NOT NULL,
    created_ms bigint NOT NULL,
    tag bytea
);

CREATE TABLE bureaus (
    code text PRIMARY KEY,
    last_sequence bigint NOT NULL
);

CREATE TABLE notices (
    recipient text NOT NULL,
    sequence bigint NOT NULL,
    match_id bytea NOT NULL,
    dataset_id integer NOT NULL,
    handle bytea NOT NULL,
    key_type smallint NOT NULL,
    other_owner text,
    other_category text,
    created_ms bigint NOT NULL,
    PRIMARY KEY (recipient, sequence)
);

CREATE TABLE audit_leaves (
    idx bigint PRIMARY KEY,
    entry bytea NOT NULL
);

CREATE TABLE disclosures (
    request_id bytea PRIMARY KEY,
    match_id bytea NOT NULL,
    requester text NOT NULL,
    owner text NOT NULL,
    dataset_id integer NOT NULL,
    handle bytea NOT NULL,
    key_type smallint NOT NULL,
    request bytea NOT NULL,
    request_signature bytea NOT NULL,
    status smallint NOT NULL,
    record_removed smallint NOT NULL,
    decision bytea,
    decision_signature bytea,
    sealed bytea,
    created_ms bigint NOT NULL,
    expires_ms bigint NOT NULL,
    request_audit_index bigint NOT NULL,
    decision_audit_index bigint,
    requester_sequence bigint NOT NULL,
    owner_sequence bigint NOT NULL
);

CREATE INDEX disclosures_by_requester ON disclosures (requester, requester_sequence);
CREATE INDEX disclosures_by_owner ON disclosures (owner, owner_sequence);
CREATE INDEX disclosures_pending ON disclosures (expires_ms) WHERE status = 1;

CREATE TABLE disclosure_sequences (
    code text PRIMARY KEY,
    last_sequence bigint NOT NULL
);
"""

# 2: matches numbered (`seq`), ids encrypted from the number (`hub.match_ids`);
# ids made before keep their rows through legacy_match_ids.  The primary key
# on match_id stays (a heap appends anyway; the index is the random part).
_SCHEMA_2 = """
ALTER TABLE matches ADD COLUMN seq bigint;
UPDATE matches SET seq = n.seq FROM (
    SELECT match_id, row_number() OVER (ORDER BY created_ms, match_id) AS seq FROM matches
) n WHERE matches.match_id = n.match_id;
ALTER TABLE matches ALTER COLUMN seq SET NOT NULL;
CREATE UNIQUE INDEX matches_by_seq ON matches (seq);

CREATE TABLE legacy_match_ids (
    match_id bytea PRIMARY KEY,
    seq bigint NOT NULL
);
INSERT INTO legacy_match_ids (match_id, seq) SELECT match_id, seq FROM matches;

CREATE TABLE hub_secrets (
    name text PRIMARY KEY,
    value bytea NOT NULL
);
"""

# Forward migrations: (the version a script brings the schema to, the script).
_MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _SCHEMA_1), (2, _SCHEMA_2))
SCHEMA_VERSION = _MIGRATIONS[-1][0]


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, for logs and error messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unparsable postgres_dsn)"
    shown = [f"{k}={params[k]}" for k in ("host", "port", "dbname", "user") if k in params]
    return "postgres " + (" ".join(shown) or "(libpq defaults)")


# One row of `tags` in PostgreSQL's binary COPY format: a field count, then
# each field's length and big-endian value (tag, dataset_id, gen, handle,
# key_type, added).
_COPY_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("tag_length", ">i4"),
        ("tag", f"V{TAG_LENGTH}"),
        ("dataset_id_length", ">i4"),
        ("dataset_id", ">i4"),
        ("gen_length", ">i4"),
        ("gen", ">i4"),
        ("handle_length", ">i4"),
        ("handle", f"V{HANDLE_LENGTH}"),
        ("key_type_length", ">i4"),
        ("key_type", ">i2"),
        ("added_length", ">i4"),
        ("added", ">i4"),
    ]
)
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_COPY_TRAILER = b"\xff\xff"


def copy_data(dataset_id: int, gen: int, keys: KeyColumns) -> bytes:
    """The rows (added = 0) of `keys` in (dataset_id, gen) as a binary COPY
    stream, built column by column rather than row by row."""
    rows = np.zeros(len(keys), dtype=_COPY_ROW)
    rows["fields"] = 6
    rows["tag_length"] = TAG_LENGTH
    rows["tag"] = np.frombuffer(keys.tags, dtype=f"V{TAG_LENGTH}")
    rows["dataset_id_length"] = 4
    rows["dataset_id"] = dataset_id
    rows["gen_length"] = 4
    rows["gen"] = gen
    rows["handle_length"] = HANDLE_LENGTH
    rows["handle"] = np.frombuffer(keys.handles, dtype=f"V{HANDLE_LENGTH}")
    rows["key_type_length"] = 2
    rows["key_type"] = np.frombuffer(keys.codes, dtype=np.uint8)
    rows["added_length"] = 4
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


@functools.lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """The shared SQL's `?` placeholders as psycopg's `%s`."""
    if "%" in sql:
        raise AssertionError(f"a literal % in shared SQL: {sql!r}")
    return sql.replace("?", "%s")


# A `TagRow` as selected from `tags t` with its tombstone (`_REMOVED`).
_TAG_ROW = "t.tag, t.dataset_id, t.gen, t.handle, t.key_type, t.added, r.removed_at"
_REMOVED = (
    "LEFT JOIN removed r ON r.dataset_id = t.dataset_id AND r.gen = t.gen AND r.handle = t.handle"
)


# `t.tag = ANY(...)` over tags sent as one bytea of 16-byte tags, split by the
# server: psycopg dumps a Python list element by element (~2.5 us per tag, 25
# ms of the hub's CPU per 10,000-tag lookup) and one bytes value in one copy
# (3 ms).  The array is an InitPlan, so the tags' primary key is still probed.
_ANY_TAG_OF_PACKED = (
    f"ANY(ARRAY(SELECT substring(p.tags FROM i * {TAG_LENGTH} + 1 FOR {TAG_LENGTH}) "  # noqa: S608
    f"FROM (SELECT %s::bytea AS tags) p, "
    f"generate_series(0, length(p.tags) / {TAG_LENGTH} - 1) AS i))"
)


# A lookup's tag rows (`_PgDb.tag_rows`), with their tombstones.
_TAG_ROWS = f"SELECT {_TAG_ROW} FROM tags t {_REMOVED} WHERE t.tag = {_ANY_TAG_OF_PACKED}"  # noqa: S608


def _packed(tags: Iterable[bytes]) -> bytes:
    """Tags concatenated for `_ANY_TAG_OF_PACKED` (a tag named twice still
    gives its rows once: `= ANY` is a condition on each row)."""
    return b"".join(tags)


def _in_key_order(rows: list[TagRow]) -> list[TagRow]:
    """Tag rows sorted by (tag, dataset, gen, handle), as `Db.tag_rows` returns them."""
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    return rows


class _PgDb(MatchIdsOf):
    """`Db` on a psycopg connection inside a transaction."""

    def __init__(self, conn: Connection, match_ids: MatchIds | None) -> None:
        super().__init__(match_ids)
        self._conn = conn

    def execute(self, sql: str, args: Sequence[object] = ()) -> psycopg.Cursor[TupleRow]:
        return self._conn.execute(_pg(sql), tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> int:
        batch = [tuple(r) for r in rows]
        if not batch:
            return 0
        with self._conn.cursor() as cursor:
            cursor.executemany(_pg(sql), batch)
            return cursor.rowcount

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        if len(rows) > _INSERT_AT_MOST:
            statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
            with self._conn.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
            return
        for sql, args in insert_statements(table, columns, rows, _INSERT_AT_MOST):
            self._conn.execute(_pg(sql), args)

    def tag_rows(self, tags: Sequence[bytes]) -> list[TagRow]:
        if not tags:
            return []
        return self._rows_of_packed(_packed(tags))

    def query_rows(self, tags: QueryColumns) -> list[PlacedRow]:
        # The lookup's tags are already packed: sent as they came.
        return place_rows(tags, self._rows_of_packed(tags.tags))

    def _rows_of_packed(self, packed: bytes) -> list[TagRow]:
        rows: list[TagRow] = self._conn.execute(_TAG_ROWS, (packed,)).fetchall()
        return _in_key_order(rows)

    def _copy(self, table: str, data: bytes) -> None:
        with (
            self._conn.cursor() as cursor,
            cursor.copy(
                f"COPY {table} (tag, dataset_id, gen, handle, key_type, added) "
                "FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.write(data)

    def insert_staged(self, dataset_id: int, gen: int, keys: KeyColumns) -> int:
        if not len(keys):
            return 0
        data = copy_data(dataset_id, gen, keys)
        try:
            with self._conn.transaction():  # a savepoint
                self._copy("tags", data)
            return len(keys)
        except psycopg.errors.UniqueViolation:
            pass  # a key sent again in a later chunk: insert what is new
        self._conn.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS staged_tags "
            "(LIKE tags INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        self._copy("staged_tags", data)
        inserted = self._conn.execute(
            "INSERT INTO tags (tag, dataset_id, gen, handle, key_type, added) "
            "SELECT tag, dataset_id, gen, handle, key_type, added FROM staged_tags "
            "ON CONFLICT DO NOTHING"
        ).rowcount
        self._conn.execute("TRUNCATE staged_tags")
        return inserted

    def lock_staging(self, dataset_id: int) -> int | None:
        row = self._conn.execute(
            "SELECT gen FROM staging WHERE dataset_id = %s FOR SHARE", (dataset_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def note_tags(self, dataset_id: int, gen: int, tags: Sequence[bytes]) -> None:
        return None  # `tags` is keyed by tag: nothing to keep beside it

    def sweep_slice(self, after: int | None) -> tuple[str, tuple[object, ...], int] | None:
        # Tags are uniformly random: each first byte covers 1/256 of the table.
        index = 0 if after is None else after + 1
        if index >= 256:
            return None
        low = bytes([index])
        high = bytes([index + 1]) if index + 1 < 256 else b"\xff" * 17
        return "tags.tag >= ? AND tags.tag < ?", (low, high), index


def _schema_version(conn: Connection) -> int:
    """The schema version of the database (0: no hub schema yet), without DDL."""
    row = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return 0 if row is None else int(row[0])


def _migrate(conn: Connection, where: str) -> tuple[int, int]:
    before = _schema_version(conn)
    if before > SCHEMA_VERSION:
        raise StorageError(
            f"{where} has hub schema version {before}; this hub knows up to {SCHEMA_VERSION} "
            "(upgrade the hub before it serves this database)"
        )
    if before == SCHEMA_VERSION:
        return before, before  # no DDL: the hub's role may lack the right to it
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _MIGRATE_LOCK))
        current = _schema_version(conn)  # another process may have migrated meanwhile
        for version, script in _MIGRATIONS:
            if version > current:
                conn.execute(script)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (version,),
                )
    return before, SCHEMA_VERSION


def _instance_gone(db: Db, instance: int) -> bool:
    """Whether no session holds `instance`'s lock: its hub process is gone."""
    (free,) = db.execute("SELECT pg_try_advisory_xact_lock(?)", (instance,)).fetchone()
    return bool(free)


# The live version and a lookup's tag rows (`_PgDb.tag_rows`) in one statement.
_LIVE_VERSION_AND_TAG_ROWS = (
    f"SELECT m.value, {_TAG_ROW} FROM meta m LEFT JOIN tags t ON t.tag = {_ANY_TAG_OF_PACKED} "  # noqa: S608
    f"{_REMOVED} WHERE m.key = 'live_version'"
)


# Every lookup is a probe of `tags`' primary key with up to a bulk batch of
# tags, on an index that stays in memory.  With the default costs (a random
# page 4x a sequential one, made for spinning disks) the planner judged
# 10,000 probes dearer than scanning 10 million rows, in parallel: one
# bulk-match batch ran for minutes instead of tens of milliseconds.  These
# session settings keep it on the index: random pages cost what they cost on
# SSDs or in cache, and no parallel workers for what a few probes answer.
_SESSION_SETTINGS = (
    ("random_page_cost", "1.1"),
    ("max_parallel_workers_per_gather", "0"),
)


def _plan_for_key_probes(conn: Connection) -> None:
    """Pool hook: each new connection plans with `_SESSION_SETTINGS`."""
    for name, value in _SESSION_SETTINGS:
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


class PostgresTagStore(SqlStore):
    """`HubStore` on a PostgreSQL database shared by any number of hub
    processes (see the module docstring): a connection pool used from
    threads (one for serialized writes, two for staging, `readers` for
    reads) and one listening connection."""

    # A lookup and its recording mostly wait on the server (round trips,
    # fsync): four in flight overlap those waits (1M in 10M: 5.7 s with four,
    # 10.3-10.8 s with one).
    bulk_lookups_in_flight = 4

    def __init__(self, dsn: str, *, readers: int, auto_sweep: bool) -> None:
        super().__init__(auto_sweep=auto_sweep)
        self._dsn = dsn
        self._where = describe_dsn(dsn)
        readers = max(1, readers)
        self._pool: psycopg_pool.ConnectionPool[Connection] = psycopg_pool.ConnectionPool(
            dsn,
            kwargs={"autocommit": True, "application_name": "blindmatch-hub"},
            configure=_plan_for_key_probes,
            min_size=1,
            max_size=readers + 3,
            open=False,
            name="blindmatch-hub",
        )
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="hub-pg-writer")
        self._stager_pool = ThreadPoolExecutor(2, thread_name_prefix="hub-pg-stager")
        self._reader_pool = ThreadPoolExecutor(readers, thread_name_prefix="hub-pg-reader")
        self._instance = secrets.randbits(63) or 1
        self._tree_lock = threading.Lock()
        self._listener: psycopg.AsyncConnection[TupleRow] | None = None
        self._listening: asyncio.Task[None] | None = None
        self._pool_open = False
        self._match_ids: MatchIds | None = None

    def _db(self, conn: Connection) -> _PgDb:
        return _PgDb(conn, self._match_ids)

    @classmethod
    async def open(cls, dsn: str, *, readers: int = 4, auto_sweep: bool = True) -> PostgresTagStore:
        """Connect, create or upgrade the schema, listen for other processes'
        changes, rebuild the audit tree, abort enrollments of hub processes
        that are gone, and start the sweeper and the disclosure expiry task."""
        store = cls(dsn, readers=readers, auto_sweep=auto_sweep)
        try:
            await asyncio.to_thread(cls.migrate, dsn)
            try:
                await asyncio.to_thread(store._pool.open, True, 30.0)
            except psycopg.OperationalError as exc:
                raise StorageError(f"cannot connect to {store._where}: {exc}") from exc
            store._pool_open = True
            store._match_ids = await store._run(store._writer_pool, store._load_match_ids)
            store._listener = await store._listen()
            await store._resync()
            await store._sync_audit()
            aborted = await store._write(store._recover)
        except BaseException:
            await store.close()
            raise
        if aborted:
            log.warning("aborted %d enrollment(s) left by hub processes that are gone", aborted)
        store._listening = asyncio.create_task(store._listen_forever(), name="hub-pg-listener")
        store._start_background()
        return store

    @staticmethod
    def migrate(dsn: str) -> tuple[int, int]:
        """Create or upgrade the schema (idempotent, safe to run from several
        processes at once); (schema version before, after), 0 for a new database."""
        where = describe_dsn(dsn)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                return _migrate(conn, where)
        except psycopg.Error as exc:
            raise StorageError(f"cannot migrate the hub schema in {where}: {exc}") from exc

    def _load_match_ids(self) -> MatchIds:
        with self._pool.connection() as conn, conn.transaction():
            return load_match_ids(self._db(conn))

    # -- transactions ---------------------------------------------------------

    async def _run(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        if self._closed or not self._pool_open:
            raise StorageError("the hub's store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, fn)
        except psycopg.OperationalError as exc:
            raise StorageError(
                f"the hub's database ({self._where}) failed ({exc}); retry later"
            ) from exc

    async def _write(self, fn: Callable[[Db, _Written], T], *, serialized: bool = True) -> T:
        """Run `fn` in one transaction; a serialized one holds the write lock
        and may append audit leaves, which join the tree after COMMIT."""
        loop = asyncio.get_running_loop()

        def transaction() -> T:
            with self._pool.connection() as conn:
                db: Db = self._db(conn)
                with conn.transaction():
                    if serialized:
                        conn.execute(
                            "SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _WRITE_LOCK)
                        )
                        (base,) = db.execute(
                            "SELECT coalesce(max(idx) + 1, 0) FROM audit_leaves"
                        ).fetchone()
                        written = _Written(audit_base=int(base))
                    else:
                        written = _Written(audit_base=-1)
                    result = fn(db, written)
                    if written.publishes:
                        db.execute("SELECT pg_notify(?, ?)", (_CHANNEL, self._payload(written)))
                if written.audit:
                    self._add_own_leaves(db, written)
            if written.publishes:
                loop.call_soon_threadsafe(self._publish, written)
            return result

        executor = self._writer_pool if serialized else self._stager_pool
        return await self._run(executor, transaction)

    async def _read(self, fn: Callable[[Db], T]) -> T:
        """Run `fn` in one read-only REPEATABLE READ transaction (one snapshot)."""

        def snapshot() -> T:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return fn(self._db(conn))

        return await self._run(self._reader_pool, snapshot)

    async def _quick_lookup(
        self, requester: str, epoch: int, tags: QueryColumns, include_own: bool
    ) -> tuple[list[_RawHit], int] | None:
        """A small lookup in one statement (one snapshot, one round trip,
        no transaction), if the live version it reads is the one whose
        datasets this process last loaded; else None (the caller's read
        transaction then loads the new ones)."""
        if len(tags) > _SMALL_QUERY:
            return None
        live = self._live.current
        asked = tags.tags

        def read() -> list[tuple[Any, ...]]:
            with self._pool.connection() as conn:
                return conn.execute(_LIVE_VERSION_AND_TAG_ROWS, (asked,)).fetchall()

        found = await self._run(self._reader_pool, read)
        if not found or found[0][0] != live.version:
            return None
        rows = _in_key_order([row[1:] for row in found if row[1] is not None])
        searched = _searched(live, requester, epoch, include_own)
        return (_hits(searched, tags, place_rows(tags, rows)) if searched else []), len(searched)

    def _recover(self, db: Db, written: _Written) -> int:
        """Abort the staging generations of hub processes that are gone."""
        aborted = 0
        for dataset_id, gen, instance in db.execute(
            "SELECT dataset_id, gen, hub_instance FROM staging ORDER BY dataset_id"
        ).fetchall():
            if instance != self._instance and _instance_gone(db, instance):
                aborted += _drop_staging(db, written, dataset_id, gen)
        return aborted

    def _recover_dataset(self, db: Db, written: _Written, owner: str, name: str) -> None:
        """Abort the staging generation of `owner`/`name` if its process is gone."""
        row = db.execute(
            "SELECT s.dataset_id, s.gen, s.hub_instance FROM staging s "
            "JOIN datasets d ON d.id = s.dataset_id WHERE d.owner = ? AND d.name = ?",
            (owner, name),
        ).fetchone()
        if row is not None and row[2] != self._instance and _instance_gone(db, row[2]):
            log.warning("aborted an enrollment of %s/%s left by a hub that is gone", owner, name)
            _drop_staging(db, written, row[0], row[1])

    async def begin_enrollment(self, owner: str, spec: EnrollSpec) -> SqlEnrollment:
        """Allocate a staging generation owned by this process."""

        def begin(db: Db, written: _Written) -> tuple[int, int]:
            self._recover_dataset(db, written, owner, spec.name)
            dataset_id, gen = _begin(db, owner, spec)
            db.execute(
                "UPDATE staging SET hub_instance = ? WHERE dataset_id = ?",
                (self._instance, dataset_id),
            )
            return dataset_id, gen

        dataset_id, gen = await self._write(begin)
        return SqlEnrollment(self, owner, spec, dataset_id, gen)

    async def update_dataset(
        self,
        owner: str,
        name: str,
        epoch: int,
        add: Sequence[TaggedKey],
        remove_handles: Sequence[bytes],
    ) -> UpdateResult:
        """Remove handles, then add keys, in one transaction (see `hub.store`)."""

        def update(db: Db, written: _Written) -> UpdateResult:
            self._recover_dataset(db, written, owner, name)
            return _update(db, written, owner, name, epoch, add, remove_handles)

        return await self._write(update)

    # -- the audit tree ---------------------------------------------------------

    def _catch_up(self, db: Db) -> None:
        """Append every committed leaf the tree lacks (hold `_tree_lock`)."""
        while True:
            start = self._audit.size
            rows = db.execute(
                "SELECT idx, entry FROM audit_leaves WHERE idx >= ? ORDER BY idx LIMIT ?",
                (start, _CATCH_UP_PAGE),
            ).fetchall()
            for offset, (index, _) in enumerate(rows):
                if index != start + offset:
                    raise StorageError(
                        f"{self._where}: audit leaf {start + offset} is missing (the next one "
                        f"stored is {index}); the audit log is damaged, restore the database "
                        "from a backup"
                    )
            self._audit.extend([bytes(entry) for _, entry in rows], first_index=start)
            if len(rows) < _CATCH_UP_PAGE:
                return

    def _add_own_leaves(self, db: Db, written: _Written) -> None:
        """After COMMIT: add this transaction's leaves, after any the tree lacks."""
        with self._tree_lock:
            size = self._audit.size
            if size == written.audit_base:
                self._audit.extend(written.audit, first_index=size)
            elif size < written.audit_base:
                self._catch_up(db)  # ours are committed: this reads them too
            # size > audit_base: a catch-up already read them.

    async def _sync_audit(self) -> None:
        """Read the leaves other processes committed since the last look."""

        def sync() -> None:
            with self._pool.connection() as conn, self._tree_lock:
                self._catch_up(self._db(conn))

        await self._run(self._reader_pool, sync)

    # -- other processes' changes -------------------------------------------------

    def _payload(self, written: _Written) -> str:
        return json.dumps(
            {
                "instance": self._instance,
                "notices": written.notices,
                "cases": written.cases,
                "garbage": written.garbage,
                "pending_changed": written.pending_changed,
                "next_expiry_ms": written.next_expiry_ms,
            },
            separators=(",", ":"),
        )

    def _on_notify(self, payload: str) -> None:
        try:
            change: dict[str, Any] = json.loads(payload)
            if change.get("instance") == self._instance:
                return  # published on commit already
            self._publish(
                _Written(
                    audit_base=-1,
                    notices={str(k): int(v) for k, v in change["notices"].items()},
                    cases={str(k): int(v) for k, v in change["cases"].items()},
                    garbage=bool(change["garbage"]),
                    pending_changed=bool(change["pending_changed"]),
                    next_expiry_ms=change["next_expiry_ms"],
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignored a malformed %s notification: %r", _CHANNEL, payload[:200])

    async def _listen(self) -> psycopg.AsyncConnection[TupleRow]:
        """A connection that holds this process's instance lock and LISTENs."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, application_name="blindmatch-hub-listener"
            )
        except psycopg.OperationalError as exc:
            raise StorageError(f"cannot connect to {self._where}: {exc}") from exc
        try:
            await conn.execute("SELECT pg_advisory_lock(%s)", (self._instance,))
            await conn.execute(f"LISTEN {_CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _resync(self) -> None:
        """Publish the sequences and expiry as stored (at start, and after a
        reconnect, which may have lost notifications)."""

        def read(db: Db) -> _Written:
            return _Written(
                audit_base=-1,
                notices=dict(db.execute("SELECT code, last_sequence FROM bureaus").fetchall()),
                cases=dict(
                    db.execute("SELECT code, last_sequence FROM disclosure_sequences").fetchall()
                ),
                garbage=True,
                pending_changed=True,
                next_expiry_ms=_next_expiry(db),
            )

        self._publish(await self._read(read))

    async def _listen_forever(self) -> None:
        while True:
            try:
                if self._listener is None:
                    self._listener = await self._listen()
                    await self._resync()
                async for notify in self._listener.notifies():
                    self._on_notify(notify.payload)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, StorageError) as exc:
                log.warning("lost the %s listener (%s); reconnecting in 1 s", self._where, exc)
            if self._listener is not None:
                with contextlib.suppress(psycopg.Error):
                    await self._listener.close()
                self._listener = None
            await asyncio.sleep(1)

    async def _due_expiry(self) -> int | None:
        """The first expiry of a pending case, as stored (other processes add cases)."""
        return await self._read(_next_expiry)

    async def _close_database(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
        if self._listener is not None:
            with contextlib.suppress(psycopg.Error):
                await self._listener.close()
            self._listener = None
        for executor in (self._writer_pool, self._stager_pool, self._reader_pool):
            await asyncio.to_thread(executor.shutdown, True)
        self._pool_open = False
        await asyncio.to_thread(self._pool.close)
